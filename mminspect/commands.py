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

import copy
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mminspect.errors import MMInspectError
from mminspect.session import (
    Binding,
    CodeSnippet,
    UsageError,
    _DRGN_CODE,
    _frontend,
    bound,
    bound_kernel,
    bound_target,
    register_drgn_code,
)


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


def drgn_code(inv: Invocation) -> CodeSnippet:
    """The ``--drgn`` code of a parsed invocation.

    :raises UsageError: if the subcommand has no code generator"""
    fn = _DRGN_CODE.get(inv.name)
    if fn is None:
        raise UsageError(f"mminspect {inv.name}: --drgn is not available for this subcommand")
    return fn(inv.params)


def debug_enabled() -> bool:
    """True when MMINSPECT_DEBUG asks for tracebacks instead of one line."""
    return bool(os.environ.get("MMINSPECT_DEBUG"))
