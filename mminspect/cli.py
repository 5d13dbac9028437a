"""
The ``mminspect`` command line.

Target options follow drgn's CLI: ``-c/--core VMCORE``, ``-s/--symbols
VMLINUX``, ``-k/--kernel`` for the running kernel, plus ``--qemu SOCKET`` for a
live QEMU guest's QMP socket. With no target, mminspect uses the running
kernel when this is an arm64 machine that allows it, and otherwise the
bundled sample dump (announced on stderr).
"""

import functools
import io
import json
import os
import signal
import sys
from typing import Callable, Optional, Sequence, Tuple

import click

from mminspect.commands import bound_kernel, bound_target
from mminspect.errors import MMInspectError
from mminspect.files import (WRITTEN, Interrupted, check_input, check_output, remove_partials, signals_raise,
                             target_files)

_U64 = (1 << 64) - 1


def _fail(message: str) -> None:
    click.echo(f"mminspect: error: {message}", err=True)
    sys.exit(2)


def _interrupted(e: BaseException) -> None:
    """Exit 128 + the signal, in one line, when ``e`` is a SIGINT/SIGTERM/
    SIGHUP or was raised while handling one (a library that catches the
    interrupt in a callback and raises its own error instead)."""
    seen = 0
    while e is not None and seen < 16:
        if isinstance(e, KeyboardInterrupt):
            remove_partials()
            sys.unraisablehook = lambda *_: None  # cleanup noise of half-closed files, on the way out
            signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
            click.echo(f"mminspect: interrupted by {signal.Signals(signum).name}"
                       + (f" after {', '.join(WRITTEN)} was written in full" if WRITTEN else ""), err=True)
            sys.exit(128 + signum)
        e, seen = e.__cause__ or e.__context__, seen + 1


def _errors(fn: Callable) -> Callable:
    """Turn every expected failure into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if bound_target() is not None:  # drgn/gdb session: its front end reports
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except MMInspectError as e:
            _interrupted(e)
            _fail(str(e))
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(1)
        except KeyboardInterrupt as e:  # SIGINT, and SIGTERM/SIGHUP as Interrupted
            _interrupted(e)
        except MemoryError:
            _fail("out of memory: the input asks for more memory than this process may use "
                  "(a damaged dump or snapshot?)")
        except Exception as e:  # a bug of ours, or a library failing in a way we did not foresee
            _interrupted(e)
            if os.environ.get("MMINSPECT_DEBUG"):
                raise
            detail = str(e).splitlines()[0] if str(e) else "no detail"
            _fail(f"internal error, please report it: {detail} ({type(e).__name__}; "
                  "MMINSPECT_DEBUG=1 shows where)")

    return wrapper


def _set_timeout(ctx, param, value) -> None:
    from mminspect.qmp import set_timeout

    if value is not None:
        try:
            set_timeout(value)
        except MMInspectError as e:
            raise click.BadParameter(str(e)) from None


def target_options(fn: Callable) -> Callable:
    """drgn-style target options shared by every subcommand."""
    opts = [
        click.option("-c", "--core", metavar="VMCORE", help="vmcore (kdump, ELF or QEMU dump) or an mminspect bundle"),
        click.option("-s", "--symbols", metavar="VMLINUX", multiple=True,
                     help="vmlinux with debug info (repeatable); default: drgn's search"),
        click.option("-k", "--kernel", "live", is_flag=True, help="the running kernel via /proc/kcore (root, arm64)"),
        click.option("--qemu", metavar="SOCKET", help="a live QEMU guest's QMP socket (-qmp unix:SOCKET,server=on)"),
        click.option("--timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
                     expose_value=False, is_eager=True, callback=_set_timeout, envvar="MMINSPECT_TIMEOUT",
                     help="wait at most this long for the QMP socket to connect and for each reply"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def bundled_sample() -> Optional[str]:
    """Path of the sample bundle shipped with mminspect, if present."""
    path = os.path.join(os.path.dirname(__file__), "data", "sample.core")
    return path if os.path.exists(path) else None


def open_kernel(core: Optional[str], symbols: Sequence[str], live: bool, qemu: Optional[str]):
    """Open the target the options name and return a Kernel."""
    from mminspect.kernel import Kernel
    from mminspect.target import open_target
    from mminspect.target.kcore import kcore_problem

    if bound_kernel() is not None:  # the drgn program or gdb connection of a session
        return bound_kernel()
    if not (core or live or qemu):
        if kcore_problem() is None:  # an arm64 machine whose kernel lets us read it
            live = True
            click.echo("mminspect: no target given; using the running kernel", err=True)
        else:
            core = bundled_sample()
            if core is None:
                raise MMInspectError("no target given (use -c VMCORE, -k or --qemu SOCKET)")
            click.echo(f"mminspect: no target given; using the bundled sample {core}", err=True)
    return Kernel(open_target(core=core, symbols=symbols, kernel=live, qemu=qemu))


def parse_range(text: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """``START-END`` or ``START+SIZE``, hexadecimal (0x optional) or decimal
    with a K/M/G/T suffix for sizes; END is exclusive."""
    if not text:
        return None, None

    def num(s: str) -> int:
        s = s.strip().lower().replace("_", "")
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        if s and s[-1] in mult:
            return int(s[:-1], 0) * mult[s[-1]]
        return int(s, 16)

    try:
        if "+" in text:
            a, b = text.split("+", 1)
            start = num(a)
            end = start + num(b)
        else:
            a, b = text.split("-", 1)
            start, end = num(a), num(b)
    except ValueError:
        raise MMInspectError(f"bad range {text!r}: expected START-END or START+SIZE (hex)") from None
    if not 0 <= start < end <= (1 << 64):
        raise MMInspectError(f"bad range {text!r}: START must be below END")
    return start, end & _U64


def _incomplete(out, walks) -> None:
    """Exit 1 with one line on stderr, after the output, when a walk could
    not see part of its tree (see :func:`mminspect.report.walk.problems_line`)."""
    from mminspect.report.walk import problems_line

    warning = problems_line(walks)
    if warning:
        out.flush()
        click.echo(warning, err=True)
        sys.exit(1)


def _progress(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None

    def report(level: str, done: int, total: int) -> None:
        sys.stderr.write(f"\rmminspect: walking {level} tables {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


class _Main(click.Group):
    """The ``mminspect`` group as a shell command: usage errors in one line
    (``mminspect: error: ...``, exit 2) like every other error, and SIGTERM
    and SIGHUP, like SIGINT, reported in one line instead of killing the
    process silently (whatever is being written is removed first:
    :func:`mminspect.files.atomic_output`). Exit status 128 + the signal."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        WRITTEN.clear()  # outputs of this command only
        try:
            with signals_raise():
                # What click.Command.main() does, less its own handling of
                # KeyboardInterrupt (a blank line and "Aborted!", exit 1).
                args = sys.argv[1:] if args is None else list(args)
                with self.make_context(prog_name or "mminspect", args, **extra) as ctx:
                    rv = self.invoke(ctx)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # plain "mminspect": the help
                click.echo(e.ctx.get_help())
                sys.exit(0)
            cmd = e.ctx.command_path if e.ctx is not None else "mminspect"
            _fail(f"{e.format_message()} (see: {cmd} -h)")
        except click.ClickException as e:
            _fail(e.format_message())
        except (click.Abort, KeyboardInterrupt) as e:
            _interrupted(e if isinstance(e, KeyboardInterrupt) else KeyboardInterrupt())
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mminspect")
@click.option("-k", "--kernel", "live", is_flag=True,
              help="the running kernel via /proc/kcore for the subcommand, as drgn -k (mminspect -k walk)")
@click.pass_context
def main(ctx: click.Context, live: bool) -> None:
    """Inspect arm64 kernel page tables on vmcores and live kernels.

    \b
    Examples:
      mminspect walk --mm efi_mm                      # the bundled sample
      mminspect walk -c vmcore -s vmlinux --mm init_mm --range ffff000040000000+1G
      mminspect walk -c vmcore --format ptdump        # diff against kernel_page_tables
      mminspect walk -k --mm 1 --format json          # a task's mm, as JSON
      mminspect classify --mm efi_mm                  # who allocated each table page
      mminspect audit -c vmcore -s vmlinux            # NR_PAGETABLE against typed pages
      mminspect simulate-remove --block 16 --block 17 # is every dtor balanced by a ctor?
      mminspect capture -c vmcore -s vmlinux -o evidence.core
      mminspect map --block 16..23 -o map.html       # a picture, with a removal overlaid
      mminspect -k audit                              # the running kernel (root, arm64)
    """
    if live:  # -k before the subcommand means its own -k
        ctx.default_map = {name: {"live": True} for name in ctx.command.commands}


@main.command()
@target_options
@click.option("--mm", "mm", default="init_mm", show_default=True, metavar="ROOT",
              help="init_mm, efi_mm, vmemmap, a pid, or pgd:PHYS (any user-half pgd)")
@click.option("--range", "range_", metavar="START-END", help="only VAs in START-END or START+SIZE (hex)")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "ptdump"]), default="table",
              show_default=True, help="ptdump: the kernel's kernel_page_tables/efi_page_tables format")
@click.option("--tables", is_flag=True, help="also list every table page with its parents")
@click.option("--progress/--no-progress", default=True, help="progress on stderr when it is a terminal")
@_errors
def walk(core, symbols, live, qemu, mm, range_, fmt, tables, progress) -> None:
    """Walk one page-table tree and print its mappings.

    Reads each table page once, decodes descriptors as the MMU does (4K/16K/64K
    granules, 2 to 5 levels, LPA/LPA2, runtime-folded top levels) and coalesces
    contiguous leaf ranges. init_mm needs only VMCOREINFO; efi_mm and pids need
    debug info. The table format ends with the kernel's DEBUG_WX verdict for
    init_mm; --format json has the schema mminspect.walk/1.

    \b
    Exit status: 0 the whole tree was seen; 1 part of it could not be
                 (a loop, a table outside RAM or missing from the dump:
                 one line on stderr, the output leaves it out); 2 bad input.
    """
    from mminspect.report.ptdump import ptdump_lines
    from mminspect.report.walk import walk_json, walk_text
    from mminspect.walk import walk as do_walk

    start, end = parse_range(range_)
    k = open_kernel(core, symbols, live, qemu)
    root = k.root(mm, start, end)
    w = do_walk(k, root, _progress(progress))
    out = click.get_text_stream("stdout")
    if fmt == "json":
        walk_json(w, out, tables=tables)
    elif fmt == "ptdump":
        for line in ptdump_lines(w):
            out.write(line + "\n")
    else:
        walk_text(w, out, tables=tables)
    _incomplete(out, [w])


@main.command()
@target_options
@click.option("-o", "--output", required=True, metavar="FILE", help="the bundle to write")
@click.option("--mm", "roots", multiple=True, default=("init_mm", "efi_mm"), show_default=True,
              metavar="ROOT", help="roots to capture (repeatable)")
@click.option("--force", is_flag=True, help="overwrite FILE if it exists")
@_errors
def capture(core, symbols, live, qemu, output, roots, force) -> None:
    """Write a small evidence bundle that opens without a vmlinux.

    The bundle is an ELF core holding only the pages mminspect reads for the
    given roots (table pages, the struct pages and globals the analyses use),
    VMCOREINFO, and the type layout they need. Opening it with -c gives the
    same output as the full dump, so it can go on a mailing list instead of a
    multi-GB vmcore and a 300 MB debug package.
    """
    from mminspect.capture import capture as do_capture
    from mminspect.target import open_target

    target = bound_target()
    if target is None and not (core or live or qemu):
        raise MMInspectError("capture needs a target: -c VMCORE, -k or --qemu SOCKET")
    inputs = _inputs(core, symbols)
    check_output(output, inputs, force)  # before the work, and again before the rename
    result = do_capture(target or open_target(core=core, symbols=symbols, kernel=live, qemu=qemu),
                        output, roots, force, inputs=inputs)
    click.echo(f"{output}: {result['bytes']} bytes, {result['pages']} pages, roots {', '.join(result['roots'])}")
    for root, why in result["skipped"].items():
        click.echo(f"  skipped {root}: {why}", err=True)


def _inputs(core, symbols, *more) -> list:
    """The files a command reads, which no output may be: the dump (the
    bundled sample when none is given), the vmlinuxes and ``more``."""
    return [p for p in (core or (bundled_sample() if bound_target() is None else None), *symbols, *more) if p]


def _load_or_capture(snapshot, core, symbols, live, qemu):
    from mminspect.hotremove import Snapshot, capture_snapshot

    if snapshot:
        return Snapshot.load(snapshot)
    return capture_snapshot(open_kernel(core, symbols, live, qemu))


@main.command()
@target_options
@click.option("-o", "--output", required=True, metavar="FILE", help="where to write the snapshot (.npz)")
@click.option("--force", is_flag=True, help="overwrite FILE if it exists")
@_errors
def snapshot(core, symbols, live, qemu, output, force) -> None:
    """Capture what a hot-remove simulation needs, for offline runs.

    The snapshot holds every init_mm table page with its entries, parents and
    classification, the efi_mm tables, memory sections and blocks, and the
    era facts of the kernel. simulate-remove --snapshot FILE runs on it
    repeatably; two snapshots can be compared with simulate-remove --diff.
    """
    from mminspect.hotremove import capture_snapshot

    inputs = _inputs(core, symbols)
    check_output(output, inputs, force)  # before the work, and again before the rename
    k = open_kernel(core, symbols, live, qemu)
    snap = capture_snapshot(k)
    snap.save(output, force=force, inputs=[*inputs, *target_files(k.target)])
    click.echo(f"{output}: {len(snap.tables)} table pages, {len(snap.blocks)} memory blocks, "
               f"{os.path.getsize(output)} bytes")


def _parse_options(pairs):
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise MMInspectError(f"bad --policy-option {p!r}: expected KEY=VALUE")
        if key in out:
            raise MMInspectError(f"--policy-option {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _block_ids(specs) -> list:
    """``--block`` values: ``N`` or ``N..M`` (inclusive), decimal."""
    ids = []
    for spec in specs:
        lo, sep, hi = str(spec).partition("..")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise MMInspectError(f"bad --block {spec!r}: expected N or N..M") from None
        if a < 0 or b < 0:
            raise MMInspectError(f"bad --block {spec!r}: memory block ids are not negative")
        if b < a:
            raise MMInspectError(f"bad --block {spec!r}: {b} < {a}")
        if b - a >= 1 << 20:
            raise MMInspectError(f"bad --block {spec!r}: {b - a + 1} blocks; give a --range instead")
        ids.extend(range(a, b + 1))
    return ids


@main.command("simulate-remove")
@target_options
@click.option("--range", "range_", metavar="START-END", help="physical range to remove (hex; START+SIZE works)")
@click.option("--block", "blocks", multiple=True, metavar="N[..M]",
              help="memory block id, or ids N..M inclusive (repeatable)")
@click.option("--dimm", metavar="ID", help="a QEMU pc-dimm's range, asked of the --qemu SOCKET")
@click.option("--policy", metavar="ERA", help="freeing rules to replay (default: chosen from the dump); see --list-policies")
@click.option("--policy-option", "policy_options", multiple=True, metavar="KEY=VALUE",
              help="policy option, e.g. dtor_fix=yes for v6.16")
@click.option("--snapshot", "snapshot_path", metavar="FILE", help="simulate on a saved snapshot instead of a target")
@click.option("--force", is_flag=True, help="simulate even where the kernel would refuse the removal")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--tables", is_flag=True, help="list every freed and kept table page")
@click.option("--fail-on", type=click.Choice(["info", "warning", "error", "critical"]), default="error",
              show_default=True, help="exit 1 if a finding of this severity or worse fires")
@click.option("--list-policies", is_flag=True, help="list the registered policies and exit")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE",
              help="load a policy plugin from a Python file (see plugins/example_policy)")
@_errors
def simulate_remove(core, symbols, live, qemu, range_, blocks, dimm, policy, policy_options, snapshot_path,
                    force, fmt, tables, fail_on, list_policies, plugins) -> None:
    """Simulate a memory hot-remove and flag every unbalanced pgtable dtor.

    Replays the page-table freeing code of a kernel era on the captured state
    (vmemmap_free() per section, then __remove_pgd_mapping() for the linear
    map, with free_empty_tables()' floor/ceiling rule; or the 2017 RFC's
    recursive removal) and judges every freed table page against its struct
    page: dtor without ctor, ctor without dtor, memblock page freed to buddy,
    kernel-image table freed, shared table freed, ptlock held, efi_mm touched.

    Before any table is freed it replays the kernel's offline path, block by
    block as an ACPI eject does: the range offline_pages() gets (after a
    memmap_on_memory block's own memmap) and every memory-notifier check of
    the dump's era, with the kernel's own message; one refused block stops
    the eject and nothing is removed. A check the dump cannot decide is
    listed as unchecked, never passed.

    \b
    Exit status: 0 clean, 1 a finding at or above --fail-on,
                 3 the kernel would refuse the removal (also with --force),
                 2 bad input.
    """
    from mminspect.hotremove import Proposal, available_policies, get_policy, select_policy, simulate
    from mminspect.hotremove.policy import load_plugin_file
    from mminspect.report.simulate import simulate_json, simulate_text

    for path in plugins:
        load_plugin_file(path)
    if list_policies:
        for name, cls in sorted(available_policies().items()):
            click.echo(f"{name:<12} {cls.summary}")
        return
    want = _proposal_range(range_, blocks, dimm, qemu, "--range")
    if want is None:
        raise MMInspectError(_ONE_OF.format("--range"))
    range_ = want[0]
    options = _parse_options(policy_options)
    snap = _load_or_capture(snapshot_path, core, symbols, live, qemu)
    if range_:
        start, end = parse_range(range_)
        proposal = Proposal(start, end)
    else:
        proposal = Proposal.from_blocks(_block_ids(blocks), snap.kernel["block_size"])
    pol = get_policy(policy, snap.era, options) if policy else select_policy(snap.era, options)
    result = simulate(snap, proposal, pol, force=force)
    out = click.get_text_stream("stdout")
    if fmt == "json":
        simulate_json(result, snap, out)
    else:
        simulate_text(result, snap, out, tables=tables, fail_on=fail_on)
    if any(r.fatal for r in result.refusals):
        sys.exit(3)  # the kernel refuses, --force or not
    from mminspect.hotremove.simulate import SEVERITIES

    if any(SEVERITIES.index(f.severity) >= SEVERITIES.index(fail_on) for f in result.findings):
        sys.exit(1)


@main.command()
@target_options
@click.option("--mm", "mm", default="init_mm", show_default=True, metavar="ROOT",
              help="init_mm, efi_mm, vmemmap, tramp, a pid, pgd:PHYS, tasks (every task's mm) or all")
@click.option("--summary", is_flag=True, help="counts by root x level x origin x ptlock instead of one row per table")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=True, help="progress on stderr when it is a terminal")
@_errors
def classify(core, symbols, live, qemu, mm, summary, fmt, progress) -> None:
    """Classify every page-table page by allocator origin and ptlock state.

    For each table page of the walked roots: who allocated it (kernel-image
    static table by symbol, memblock, buddy with ctor, buddy without ctor,
    slab, altmap, unknown), its split-ptlock state (n/a, initialised,
    inline-zero, held, missing, stale, dangling), the region its span covers
    and the evidence from its struct page. Origins this kernel's allocation
    sites would not produce are listed as findings. --format json has the
    schema mminspect.classify/1.

    \b
    Exit status: 0 done; 1 a walk could not see part of its tree (one
                 line on stderr, as for walk); 2 bad input.
    """
    from mminspect.classify import classifier_for, classify_walk, resolve_roots
    from mminspect.report.classify import classify_json, classify_text
    from mminspect.walk import walk as do_walk

    k = open_kernel(core, symbols, live, qemu)
    # classify_roots(), keeping the walks to say when one was incomplete
    walks = [do_walk(k, root, _progress(progress)) for root in resolve_roots(k, mm)]
    c = classifier_for(k)
    classes = [classify_walk(k, w, c) for w in walks]
    out = click.get_text_stream("stdout")
    if fmt == "json":
        classify_json(classes, out, summary=summary)
    else:
        classify_text(classes, out, summary=summary)
    _incomplete(out, walks)


@main.command()
@target_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def audit(core, symbols, live, qemu, fmt) -> None:
    """Audit NR_PAGETABLE against the pages typed as page tables.

    Reads the kernel's exact counter (per node: vm_stat plus every CPU's
    vm_node_stat_diff), scans the whole memmap for pages with the page-table
    type, and walks init_mm, efi_mm, the KPTI trampoline and every task's
    mm. Prints the difference and the pages that explain it: typed pages no
    root reaches, tables without a ctor, tables reachable from two roots,
    tables spanning hot-added memory. --format json has the schema
    mminspect.audit/1.
    """
    from mminspect.classify import audit as do_audit
    from mminspect.report.classify import audit_json, audit_text

    from mminspect.live import settle_audit

    k = open_kernel(core, symbols, live, qemu)
    result = settle_audit(k, do_audit(k))
    out = click.get_text_stream("stdout")
    if fmt == "json":
        audit_json(result, out)
    else:
        audit_text(result, out)


_ONE_OF = "give the memory to remove with one of {} START-END, --block N, --dimm ID"


def _proposal_range(range_, blocks, dimm, qemu, range_option: str) -> Optional[Tuple[Optional[str], list]]:
    """The memory a command is asked to remove, as (range text, block ids),
    or None when none was given; ``--dimm`` is asked of the QMP socket."""
    if (bool(range_) + bool(blocks) + bool(dimm)) > 1:
        raise MMInspectError(_ONE_OF.format(range_option))
    if dimm:
        if not qemu:
            raise MMInspectError("--dimm needs the guest's QMP socket: --qemu SOCKET")
        from mminspect.qmp import dimm_range

        start, end = dimm_range(qemu, dimm)
        range_ = f"{start:x}-{end:x}"
    if not range_ and not blocks:
        return None
    return range_, _block_ids(blocks) if blocks else []


@main.command("map")
@target_options
@click.option("-o", "--output", metavar="FILE", help="where to write (default map.html, or map.json with --format json; - for stdout)")
@click.option("--mm", "roots", multiple=True, metavar="ROOT",
              help="roots to draw (repeatable; as classify --mm: init_mm, efi_mm, tramp, a pid, tasks, all); "
                   "default init_mm and efi_mm when it exists")
@click.option("--simulate", "range_", metavar="START-END", help="overlay the removal of this physical range (hex; START+SIZE works)")
@click.option("--block", "blocks", multiple=True, metavar="N[..M]", help="overlay the removal of memory blocks N..M")
@click.option("--dimm", metavar="ID", help="overlay the removal of a QEMU pc-dimm (asked of --qemu SOCKET)")
@click.option("--policy", metavar="ERA", help="freeing rules to replay (default: chosen from the dump)")
@click.option("--format", "fmt", type=click.Choice(["html", "json"]), default="html", show_default=True)
@click.option("--force", is_flag=True, help="replace FILE if it exists (never an input)")
@click.option("--progress/--no-progress", default=True, help="progress on stderr when it is a terminal")
@_errors
def map_(core, symbols, live, qemu, output, roots, range_, blocks, dimm, policy, fmt, force, progress) -> None:
    """Write a self-contained HTML map of physical memory and page tables.

    Physical memory by memory block (boot, hot-added, holes, zones, nodes)
    with every page-table page as a mark coloured and shaped by its origin
    (density cells that zoom into marks on big machines), the classification
    evidence on hover, a VA overview per root, and with --simulate, --block or
    --dimm the proposed removal as an overlay: freed and kept tables,
    refusals with the kernel's message, the NR_PAGETABLE change, the
    findings. One file, no network. --format json writes the same data
    (schema mminspect.map/1).
    """
    from mminspect.classify import classifier_for, resolve_roots
    from mminspect.hotremove import Proposal, get_policy
    from mminspect.report.map import build_map, map_html
    from mminspect.files import atomic_output

    want = _proposal_range(range_, blocks, dimm, qemu, "--simulate")
    output = output or ("map.json" if fmt == "json" else "map.html")
    inputs = _inputs(core, symbols)
    if output != "-":
        check_output(output, inputs, force)  # before the work, and again before the rename
    k = open_kernel(core, symbols, live, qemu)
    specs = roots or ("init_mm", "efi_mm")
    resolved = []
    for spec in specs:
        try:
            resolved += resolve_roots(k, spec)
        except MMInspectError as e:
            if roots:
                raise
            click.echo(f"mminspect: {spec} not drawn: {e}", err=True)
    proposal = None
    if want is not None:
        text, ids = want
        if text:
            start, end = parse_range(text)
            proposal = Proposal(start, end)
        else:
            memory = classifier_for(k).memory
            if memory is None:
                raise MMInspectError(f"{k.target.name}: no memory blocks: give the removal as --simulate START-END")
            proposal = Proposal.from_blocks(ids, memory.block_size)
    pol = (lambda era: get_policy(policy, era, {})) if policy else None
    data = build_map(k, resolved, proposal, pol, _progress(progress))

    def write(out) -> None:
        if fmt == "json":
            json.dump(data, out, indent=1)
            out.write("\n")
        else:
            map_html(data, out)

    if output == "-":
        write(click.get_text_stream("stdout"))
        return
    with atomic_output(output, [*inputs, *target_files(k.target)], force) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8")
        write(text)
        text.flush()
        text.detach()  # atomic_output fsyncs and closes the file itself
    size = os.path.getsize(output)
    t = data["tables"]
    p = data["proposal"]
    line = f"{output}: {size} bytes, {t['count']} table pages from {', '.join(r['name'] for r in data['roots'])}"
    if p is not None:
        line += (f"; removal {p['text']}: " + ("refused" if not p["simulated"] else
                 f"{p['freed']['count']} freed, {len(p['kept'])} kept, NR_PAGETABLE {p['delta_nr_pagetable']:+d}, "
                 f"{len(p['findings'])} finding(s)"))
    click.echo(line)


def _register_classify_drgn_code() -> None:
    from mminspect.commands import CodeSnippet, register_drgn_code

    @register_drgn_code("classify")
    def _classify_code(params):
        code = CodeSnippet()
        code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
        code.add_import("mminspect.classify", "classify_roots", "resolve_roots")
        mm = params.get("mm", "init_mm")
        code.append(f'k = mminspect_kernel(prog)\nclasses = classify_roots(k, resolve_roots(k, "{mm}"))\n')
        code.append(
            "for cls in classes:\n"
            "    print(cls.root.name, cls.summary())\n"
            "    for t in cls:\n"
            "        # t.phys, .level_name, .region, .origin, .allocator, .ptlock, .expected, .evidence\n"
            "        print(t.phys, t.level_name, t.region, t.origin, t.ptlock, t.evidence)\n"
            "    for finding in cls.findings:\n"
            "        print(finding)\n"
        )
        return code

    @register_drgn_code("audit")
    def _audit_code(params):
        code = CodeSnippet()
        code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
        code.add_import("mminspect.classify", "audit")
        code.append("result = audit(mminspect_kernel(prog))\n"
                    "print(result.counter, result.typed_count, result.difference)\n"
                    "for line in result.explanation():\n    print(line)\n")
        return code


_register_classify_drgn_code()


def _parse_va(text: str) -> int:
    """A virtual address: hex (0x optional), as crash's vtop takes it."""
    try:
        value = int(text, 16)
    except ValueError:
        raise MMInspectError(f"bad address {text!r}: expected a hexadecimal virtual address") from None
    if not 0 <= value < 1 << 64:
        raise MMInspectError(f"bad address {text!r}: not a 64-bit address")
    return value


@main.command()
@target_options
@click.argument("addresses", nargs=-1, required=True, metavar="VA...")
@click.option("--mm", "mm", metavar="ROOT",
              help="init_mm (default for kernel addresses), efi_mm, a pid or pgd:PHYS (user addresses)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def vtop(core, symbols, live, qemu, addresses, mm, fmt) -> None:
    """Translate virtual addresses level by level, and say why one faults.

    As crash's vtop: for each VA, one line per level (table PA, index, entry
    PA, raw descriptor, decoded type), then where and why the walk stopped
    (page, block, contiguous run, empty or invalid entry, reserved type,
    table outside RAM or missing from the dump, loop), the permissions after
    table-level inheritance, the physical page's facts, and drgn's
    follow_phys, __pa() and the dump's PT_LOAD headers as checks. Non-present
    entries of user mms are decoded as the kernel encodes them (swap,
    migration, device-private, PROT_NONE, uffd-wp, markers). --format json
    has the schema mminspect.vtop/1.
    """
    from mminspect.report.vtop import vtop_json, vtop_text
    from mminspect.vtop import vtop as do_vtop

    vas = [_parse_va(a) for a in addresses]
    k = open_kernel(core, symbols, live, qemu)
    results = [do_vtop(k, va, mm) for va in vas]
    out = click.get_text_stream("stdout")
    if fmt == "json":
        vtop_json(results, k, out)
    else:
        vtop_text(results, out)


@main.command()
@target_options
@click.argument("addresses", nargs=-1, metavar="PHYS|pfn:N...")
@click.option("--from", "from_file", metavar="FILE", help="read addresses from FILE, one per line ('-': stdin)")
@click.option("--mm", "mm", default="all", show_default=True, metavar="ROOT",
              help="roots to search: all, init_mm, efi_mm, tramp, tasks, a pid or pgd:PHYS")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def identify(core, symbols, live, qemu, addresses, from_file, mm, fmt) -> None:
    """Say what physical pages are and which virtual addresses map them.

    For each address (hex PA, or pfn:N): if it is a page-table page, which
    roots reach it, at which level and VA span, its origin, ptlock and
    evidence; every VA of every root that maps it (one walk per root and one
    reverse map for all addresses); and what its struct page says (flags,
    type, refcount, mapping, memcg, slab cache). --format json has the
    schema mminspect.identify/1.
    """
    from mminspect.identify import all_roots, check_addresses, parse_address
    from mminspect.identify import identify as do_identify
    from mminspect.report.identify import identify_json, identify_text

    texts = list(addresses)
    if from_file:
        if from_file == "-":
            texts += [line for line in sys.stdin.read().split() if line]
        else:
            check_input(from_file, "list of addresses")
            with open(from_file) as f:
                texts += [w for line in f for w in line.split("#", 1)[0].split()]
    if not texts:
        raise MMInspectError("give addresses (PHYS or pfn:N) or --from FILE")
    k = open_kernel(core, symbols, live, qemu)
    pas = [parse_address(t, k.regime.page_shift) for t in texts]
    check_addresses(k, pas)
    roots = all_roots(k, mm)
    results = do_identify(k, pas, roots)
    out = click.get_text_stream("stdout")
    if fmt == "json":
        identify_json(results, k, [r.name for r in roots], out)
    else:
        identify_text(results, out)


def _diff_source(path: str, symbols):
    """A snapshot (.npz written by ``mminspect snapshot``) or a dump's Kernel."""
    from mminspect.kernel import Kernel
    from mminspect.target import open_target

    check_input(path, "dump or snapshot")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":  # numpy's .npz is a zip file
        from mminspect.hotremove import Snapshot

        return Snapshot.load(path)
    return Kernel(open_target(core=path, symbols=symbols))


def _diff_state(source, name: str):
    from mminspect.diff import state_of_kernel, state_of_snapshot
    from mminspect.kernel import Kernel

    return state_of_kernel(source, name) if isinstance(source, Kernel) else state_of_snapshot(source, name)


@main.command()
@target_options
@click.argument("state_a", metavar="A")
@click.argument("state_b", metavar="[B]", required=False)
@click.option("--expect", "expect", metavar="SIMULATION.json",
              help="simulate-remove --format json output: does the simulated removal match what happened?")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def diff(core, symbols, live, qemu, state_a, state_b, expect, fmt) -> None:
    """Compare the page tables of two states of one kernel.

    A and B are dumps of the same kernel and boot (before and after a
    hot-remove) or a snapshot (mminspect snapshot -o FILE) and a dump; with
    B left out, B is the target (-c/-k/--qemu, or the drgn/gdb session).
    Prints the table pages freed, allocated and reused as another table,
    the mapping ranges added, removed or changed, and the NR_PAGETABLE
    change explained page by page; --expect checks a simulate-remove JSON
    against the tables really freed (exit 1 when it does not match).
    --format json has the schema mminspect.diff/1.
    """
    from mminspect.diff import diff as do_diff
    from mminspect.diff import expect_simulation, load_simulation
    from mminspect.report.diff import diff_json, diff_text

    if expect and not os.path.isfile(expect):
        raise MMInspectError(f"{expect}: no such file")
    sim = load_simulation(expect) if expect else None
    from mminspect.diff import check_same

    src_a = _diff_source(state_a, symbols)
    if state_b:
        src_b, name_b = _diff_source(state_b, symbols), state_b
    else:
        session = bound_kernel()
        if session is None and not (core or live or qemu):
            raise MMInspectError("give B, or the target to compare A with (-c VMCORE, -k, --qemu)")
        src_b = session or open_kernel(core, symbols, live, qemu)
        name_b = "this kernel" if session is not None else (core or ("running kernel" if live else qemu))
    # Refuse different kernels, regimes or boots before walking anything.
    check_same(src_a, state_a, src_b, name_b)
    d = do_diff(_diff_state(src_a, state_a), _diff_state(src_b, name_b))
    if sim is not None:
        expect_simulation(d, sim)
    out = click.get_text_stream("stdout")
    if fmt == "json":
        diff_json(d, out)
    else:
        diff_text(d, out)
    if d.expect is not None and not d.expect["matches"]:
        sys.exit(1)
