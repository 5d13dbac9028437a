"""
One command layer for every front end
-------------------------------------

The shell CLI, the drgn commands (``%mminspect walk --mm efi_mm`` in a drgn
session) and the gdb commands (``mminspect walk --mm efi_mm`` after ``source
plugins/gdb/mminspect-gdb.py``) run the *same* subcommands with the same
options, and print through the same renderers, because there is only one
definition of each subcommand: the click command in :mod:`mminspect.cli`.

This module runs those definitions inside another tool's session. There the
target is the session's own (the drgn ``prog``, the gdb connection): it is
*bound* for the duration of the command, the target options (``-c``, ``-s``,
``-k``, ``--qemu``) are left out of parsing and help, errors propagate as
exceptions instead of exiting the process, and output goes to whatever
``sys.stdout`` is at the time (drgn's redirections and pipes, gdb's pager).

Subcommands added to :mod:`mminspect.cli` appear in drgn and gdb with no
further work. ``--drgn`` (print the Python that does the same through the
API) needs a code generator per subcommand: :func:`register_drgn_code`.

Importing this module imports neither click nor tabulate; running a command
does.

>>> from mminspect import commands
>>> with commands.bound(target, frontend="drgn"):
...     commands.run(["walk", "--mm", "efi_mm"])
"""

import contextlib
import contextvars
import copy
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from mminspect.errors import MMInspectError

__all__ = (
    "Binding",
    "CodeSnippet",
    "Invocation",
    "UsageError",
    "bound",
    "bound_kernel",
    "bound_target",
    "drgn_code",
    "help_text",
    "invoke",
    "parse",
    "register_drgn_code",
    "run",
    "subcommand_names",
    "summary",
)

#: Parameters of :func:`mminspect.cli.target_options`: the session supplies the target.
TARGET_PARAMS = ("core", "symbols", "live", "qemu", "timeout")

#: Subcommands that cannot work in a front end, with the reason.
UNSUPPORTED: Dict[str, Dict[str, str]] = {
    "gdb": {
        "capture": "bundles record virtual reads through drgn's translation; capture from a dump "
        "of the guest (QMP dump-guest-memory) with the shell CLI instead",
    },
}

_U64 = (1 << 64) - 1


class UsageError(MMInspectError):
    """Bad arguments to a subcommand; the message says which and how to get help."""


@dataclass
class Binding:
    """The target a front end's session supplies, for the command being run."""

    target: Any
    frontend: str
    kernel: Any = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def get_kernel(self):
        if self.kernel is None:
            from mminspect.kernel import Kernel

            self.kernel = Kernel(self.target)
        return self.kernel


_BOUND: contextvars.ContextVar[Optional[Binding]] = contextvars.ContextVar("mminspect_bound", default=None)


@contextlib.contextmanager
def bound(target, frontend: str, kernel=None) -> Iterator[Binding]:
    """
    Make ``target`` (and optionally an already built
    :class:`~mminspect.kernel.Kernel` over it) the target of every mminspect
    subcommand run inside the block.
    """
    binding = Binding(target, frontend, kernel)
    token = _BOUND.set(binding)
    try:
        yield binding
    finally:
        _BOUND.reset(token)


def bound_target():
    """The target bound by :func:`bound`, or None in the shell CLI."""
    b = _BOUND.get()
    return b.target if b is not None else None


def bound_kernel():
    """A :class:`~mminspect.kernel.Kernel` over the bound target, or None."""
    b = _BOUND.get()
    return b.get_kernel() if b is not None else None


def _frontend() -> str:
    b = _BOUND.get()
    return b.frontend if b is not None else "cli"


# -- the click definitions, seen from a session ---------------------------------


def _group():
    from mminspect.cli import main

    return main


def subcommand_names(frontend: str = "cli") -> List[str]:
    """The subcommands available in ``frontend`` (``cli``, ``drgn``, ``gdb``)."""
    skip = UNSUPPORTED.get(frontend, {})
    return [name for name in sorted(_group().commands) if name not in skip]


def summary(name: str) -> str:
    """The one-line description of a subcommand."""
    return _group().commands[name].get_short_help_str(limit=80)


def _session_command(name: str, frontend: str):
    """A copy of the click command without the target options, plus ``--drgn``
    in drgn, and the defaults to pass for the removed parameters."""
    import click

    group = _group()
    if name not in group.commands:
        raise UsageError(
            f"mminspect: no subcommand {name!r} (choose from {', '.join(subcommand_names(frontend))})"
        )
    why = UNSUPPORTED.get(frontend, {}).get(name)
    if why:
        raise UsageError(f"mminspect {name} is not available in {frontend}: {why}")
    cmd = group.commands[name]
    session = copy.copy(cmd)
    session.params = [p for p in cmd.params if p.name not in TARGET_PARAMS]
    # The session supplies the target: no dump or vmlinux paths (an option's
    # default without a value is click's UNSET sentinel from click 8.2, not None).
    empty = {"core": None, "symbols": (), "live": False, "qemu": None}
    removed = {p.name: empty.get(p.name) for p in cmd.params if p.name in TARGET_PARAMS and p.expose_value}
    if frontend == "drgn" and name in _DRGN_CODE:
        session.params.append(
            click.Option(["--drgn"], is_flag=True,
                         help="print how to do the equivalent operation using the mminspect API in drgn")
        )
    return session, removed


def _contexts(name: str, frontend: str):
    import click

    group = _group()
    root = click.Context(group, info_name="mminspect", **group.context_settings)
    session, removed = _session_command(name, frontend)
    return root, session, removed


def help_text(name: Optional[str] = None, frontend: str = "cli") -> str:
    """
    Help for ``mminspect`` (the list of subcommands) or one subcommand, as
    the shell CLI prints it but without the target options a session
    supplies.
    """
    import click

    group = _group()
    if name is None:
        root = click.Context(group, info_name="mminspect", **group.context_settings)
        lines = [f"usage: mminspect SUBCOMMAND [OPTIONS]  (mminspect SUBCOMMAND -h for help)", ""]
        doc = (group.help or "").split("\n\n")[0].strip()
        lines += [doc, "", "Subcommands:"]
        for sub in subcommand_names(frontend):
            lines.append(f"  {sub:<16}{group.commands[sub].get_short_help_str(limit=70)}")
        root.close()
        return "\n".join(lines) + "\n"
    root, session, _ = _contexts(name, frontend)
    ctx = click.Context(session, info_name=name, parent=root)
    return session.get_help(ctx) + "\n"


def _usage_error(e, name: str) -> UsageError:
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    return UsageError(f"mminspect {name}: {msg} (see: mminspect {name} -h)")


def _refuse_target_options(name: str, args: Sequence[str], frontend: str) -> None:
    cmd = _group().commands[name]
    opts = [o for p in cmd.params if p.name in TARGET_PARAMS for o in p.opts + p.secondary_opts]
    for a in args:
        if a == "--":
            break
        for o in opts:
            if a == o or (o.startswith("--") and a.startswith(o + "=")) or (
                not o.startswith("--") and a.startswith(o) and len(a) > 2
            ):
                which = "program" if frontend == "drgn" else "connection"
                raise UsageError(
                    f"mminspect {name}: {o} is not used in {frontend}: the target is this "
                    f"{frontend} {which}"
                )


@dataclass(frozen=True)
class Invocation:
    """A parsed subcommand: its name and its parameters by click name."""

    name: str
    params: Dict[str, Any]


def _split(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        if len(argv) > 1 and argv[0] == "help":
            return argv[1], ["--help"]
        return None, []
    return argv[0], argv[1:]


def parse(argv: Sequence[str], frontend: Optional[str] = None) -> Optional[Invocation]:
    """
    Parse ``SUBCOMMAND [OPTIONS]`` as the shell CLI would (minus target
    options). Returns None when help was asked for (and printed).

    :raises UsageError: for an unknown subcommand or bad options
    """
    import click

    frontend = frontend or _frontend()
    name, args = _split(argv)
    if name is None:
        print(help_text(None, frontend), end="")
        return None
    if any(a in ("-h", "--help") for a in args):
        print(help_text(name, frontend), end="")
        return None
    root, session, removed = _contexts(name, frontend)
    if frontend != "cli":
        _refuse_target_options(name, args, frontend)
    try:
        ctx = session.make_context(name, list(args), parent=root)
    except click.exceptions.Exit:
        return None
    except click.ClickException as e:
        raise _usage_error(e, name) from None
    params = dict(removed)
    params.update(ctx.params)
    return Invocation(name, params)


def run(argv: Sequence[str], frontend: Optional[str] = None) -> Optional[Invocation]:
    """
    Run ``SUBCOMMAND [OPTIONS]`` on the bound target (see :func:`bound`),
    printing to ``sys.stdout`` as it is now. Returns the invocation, or None
    when only help was printed.

    :raises UsageError: for bad arguments
    :raises MMInspectError: for everything the shell CLI reports in one line
    """
    frontend = frontend or _frontend()
    inv = parse(argv, frontend)
    if inv is not None:
        invoke(inv, frontend)
    return inv


def invoke(inv: Invocation, frontend: Optional[str] = None) -> int:
    """Run a parsed subcommand on the bound target (see :func:`run`) and
    return the exit status the shell CLI would have (``simulate-remove``
    uses 1 and 3 for findings and refusals), without exiting."""
    import click

    frontend = frontend or _frontend()
    params = dict(inv.params)
    params.pop("drgn", None)
    cmd = _group().commands[inv.name]
    root, session, _ = _contexts(inv.name, frontend)
    ctx = click.Context(session, info_name=inv.name, parent=root)
    try:
        with ctx:
            ctx.invoke(cmd.callback, **params)
    except click.exceptions.Exit as e:
        return e.exit_code
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        raise MMInspectError(str(e.code)) from None
    except click.ClickException as e:
        raise _usage_error(e, inv.name) from None
    return 0


# -- --drgn: the same through the API --------------------------------------------


@dataclass
class CodeSnippet:
    """
    Python for ``--drgn``: imports and a body, for drgn's
    :class:`~drgn.commands.DrgnCodeBuilder` (``imports`` are ``(module,
    names)`` with ``names`` empty for ``import module``).
    """

    imports: List[Tuple[str, Tuple[str, ...]]] = field(default_factory=list)
    body: str = ""

    def add_import(self, module: str, *names: str) -> None:
        self.imports.append((module, names))

    def append(self, code: str) -> None:
        self.body += code

    def text(self) -> str:
        """Standalone text (what DrgnCodeBuilder prints, minus its sorting)."""
        lines = []
        for module, names in self.imports:
            lines.append(f"from {module} import {', '.join(names)}" if names else f"import {module}")
        return "\n".join(lines) + ("\n\n\n" if lines else "") + self.body


_DRGN_CODE: Dict[str, Callable[[Dict[str, Any]], CodeSnippet]] = {}


def register_drgn_code(name: str) -> Callable:
    """
    Decorator: register the ``--drgn`` code generator of subcommand ``name``.
    It gets the parsed parameters (click names) and returns a
    :class:`CodeSnippet` that, run in a drgn session (``prog`` defined), does
    what the subcommand does through the API.
    """

    def deco(fn: Callable[[Dict[str, Any]], CodeSnippet]) -> Callable[[Dict[str, Any]], CodeSnippet]:
        _DRGN_CODE[name] = fn
        return fn

    return deco


def drgn_code(inv: Invocation) -> CodeSnippet:
    """The ``--drgn`` code of a parsed invocation.

    :raises UsageError: if the subcommand has no code generator"""
    fn = _DRGN_CODE.get(inv.name)
    if fn is None:
        raise UsageError(f"mminspect {inv.name}: --drgn is not available for this subcommand")
    return fn(inv.params)


def _root_args(params: Dict[str, Any]) -> str:
    from mminspect.cli import parse_range

    start, end = parse_range(params.get("range_"))
    args = f"{params.get('mm', 'init_mm')!r}".replace("'", '"')
    if start is not None:
        args += f", start={start:#x}, end={end:#x}"
    return args


@register_drgn_code("walk")
def _walk_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "walk_page_tables")
    code.append(f"walk = walk_page_tables(prog, {_root_args(params)})\n")
    fmt = params.get("fmt", "table")
    if fmt == "ptdump":
        code.add_import("mminspect.report.ptdump", "ptdump_lines")
        code.append("for line in ptdump_lines(walk):\n    print(line)\n")
        return code
    if fmt == "json":
        code.add_import("sys")
        code.add_import("mminspect.report.walk", "walk_json")
        code.append(f"walk_json(walk, sys.stdout, tables={bool(params.get('tables'))})\n")
        return code
    code.append(
        "for mapping in walk.mappings():\n"
        "    # mapping.va, .end, .size, .pa, .level_name, .kind, .attrs, .effective\n"
        "    print(mapping)\n"
    )
    if params.get("tables"):
        code.append(
            "for table in walk.tables():\n"
            "    # table.phys, .level_name, .va, .span, .valid, .entries, .parents\n"
            "    print(table)\n"
        )
    code.append("for problem in walk.problems:\n    print(problem)\n")
    return code


@register_drgn_code("capture")
def _capture_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.capture", "capture")
    code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
    roots = ", ".join(f'"{r}"' for r in params.get("roots") or ("init_mm", "efi_mm"))
    code.append(
        f"result = capture(mminspect_kernel(prog).target, {str(params['output'])!r}, "
        f"roots=({roots},), force={bool(params.get('force'))})\n".replace("'", '"')
    )
    code.append("print(result)\n")
    return code


def _hex(n: int) -> str:
    return f"{n:#x}"


@register_drgn_code("snapshot")
def _snapshot_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "snapshot_page_tables")
    code.append("snap = snapshot_page_tables(prog)\n")
    code.append(f"snap.save({_quote(params['output'])})\n")
    code.append("print(len(snap.tables), 'table pages,', len(snap.blocks), 'memory blocks')\n")
    return code


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


@register_drgn_code("simulate-remove")
def _simulate_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    if params.get("list_policies"):
        code.add_import("mminspect.hotremove", "available_policies")
        code.append("for name, policy in sorted(available_policies().items()):\n"
                    "    print(name, policy.summary)\n")
        return code
    code.add_import("mminspect.drgn_plugin", "simulate_remove_memory")
    args = []
    snap = params.get("snapshot_path")
    if snap:
        code.add_import("mminspect.hotremove", "Snapshot")
        code.append(f"snap = Snapshot.load({_quote(snap)})\n")
    elif params.get("blocks") or params.get("fmt") == "json":
        code.add_import("mminspect.drgn_plugin", "snapshot_page_tables")
        code.append("snap = snapshot_page_tables(prog)\n")
        snap = True
    if params.get("range_"):
        from mminspect.cli import parse_range

        start, end = parse_range(params["range_"])
        args += [_hex(start), _hex(end - start)]
    elif params.get("blocks"):
        ids = sorted(set(params["blocks"]))
        code.append('block_size = snap.kernel["block_size"]\n')
        args += [f"{ids[0]} * block_size", f"{len(ids)} * block_size"]
    else:
        raise UsageError("give the memory to remove with --range START-END or --block N (one of them)")
    if params.get("policy"):
        args.append(f"policy={_quote(params['policy'])}")
    opts = dict(p.partition("=")[::2] for p in params.get("policy_options") or ())
    if opts:
        args.append("options={" + ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in opts.items()) + "}")
    if params.get("force"):
        args.append("force=True")
    if snap:
        args.append("snapshot=snap")
    code.append(f"result = simulate_remove_memory(prog, {', '.join(args)})\n")
    if params.get("fmt") == "json":
        code.add_import("sys")
        code.add_import("mminspect.report.simulate", "simulate_json")
        code.append("simulate_json(result, snap, sys.stdout)\n")
        return code
    code.append(
        "print(result.policy)\n"
        "for refusal in result.refusals:\n"
        "    print(refusal)\n"
        "for finding in result.findings:\n"
        "    # finding.severity, .rule, .phys, .level, .origin, .ptlock, .routine, .sentence\n"
        "    print(finding.severity, finding.rule, hex(finding.phys), finding.level, finding.sentence)\n"
    )
    return code


@register_drgn_code("map")
def _map_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
    code.add_import("mminspect.classify", "resolve_roots")
    code.add_import("mminspect.report.map", "build_map", *(("map_html",) if params.get("fmt") != "json" else ()))
    roots = params.get("roots") or ("init_mm", "efi_mm")
    code.append("k = mminspect_kernel(prog)\n")
    code.append("roots = " + " + ".join(f"resolve_roots(k, {_quote(r)})" for r in roots) + "\n")
    proposal = "None"
    if params.get("range_") or params.get("blocks"):
        code.add_import("mminspect.hotremove", "Proposal")
        if params.get("range_"):
            from mminspect.cli import parse_range

            start, end = parse_range(params["range_"])
            proposal = f"Proposal({_hex(start)}, {_hex(end)})"
        else:
            from mminspect.cli import _block_ids

            code.add_import("mminspect.classify", "classifier_for")
            code.append("block_size = classifier_for(k).memory.block_size\n")
            proposal = f"Proposal.from_blocks({_block_ids(params['blocks'])!r}, block_size)"
    code.append(f"data = build_map(k, roots, {proposal})\n")
    output = params.get("output") or ("map.json" if params.get("fmt") == "json" else "map.html")
    if params.get("fmt") == "json":
        code.add_import("json")
        code.append(f"with open({_quote(output)}, \"x\") as f:  # \"x\": never over an existing file\n"
                    "    json.dump(data, f)\n")
    else:
        code.append(f"with open({_quote(output)}, \"x\") as f:  # \"x\": never over an existing file\n"
                    "    map_html(data, f)\n")
    return code


@register_drgn_code("vtop")
def _vtop_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "vtop")
    mm = params.get("mm")
    arg = f", {_quote(mm)}" if mm else ""
    from mminspect.cli import _parse_va

    for text in params.get("addresses") or ():
        code.append(f"t = vtop(prog, {_parse_va(text):#x}{arg})\n")
        code.append("# t.steps (level_name, table, index, entry, desc, kind), t.stop, t.reason, t.pa,\n"
                    "# t.effective, t.cont, t.nonpresent, t.page, t.checks\n"
                    "print(t)\nfor step in t.steps:\n    print(step)\n")
    return code


@register_drgn_code("identify")
def _identify_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "identify_pages")
    addrs = ", ".join(_quote(a) for a in params.get("addresses") or ())
    code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
    code.add_import("mminspect.identify", "parse_address")
    code.append("shift = mminspect_kernel(prog).regime.page_shift\n"
                f"addrs = [parse_address(a, shift) for a in [{addrs}]]\n")
    if params.get("from_file"):
        code.append(f"with open({_quote(params['from_file'])}) as f:\n"
                    "    addrs += [parse_address(w, shift) for line in f for w in line.split('#', 1)[0].split()]\n")
    code.append(f"for ident in identify_pages(prog, addrs, mm={_quote(params.get('mm') or 'all')}):\n"
                "    # ident.tables (page-table records), ident.mapped_at (root, va, level, attrs), ident.page\n"
                "    print(hex(ident.phys), ident.is_page_table, ident.tables, ident.mapped_at, ident.page)\n")
    return code


@register_drgn_code("diff")
def _diff_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "diff_page_tables")
    code.append(f"d = diff_page_tables(prog, {_quote(params['state_a'])})\n"
                "for line in d.explanation():\n    print(line)\n"
                "print(len(d.freed), 'freed', len(d.allocated), 'allocated', len(d.moved), 'reused')\n"
                "for root, ranges in d.mappings.items():\n    for r in ranges:\n        print(root, r)\n")
    return code


def debug_enabled() -> bool:
    """True when MMINSPECT_DEBUG asks for tracebacks instead of one line."""
    return bool(os.environ.get("MMINSPECT_DEBUG"))
