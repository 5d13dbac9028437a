"""The click CLI's group and what every subcommand shares: target options,
one-line errors, ranges, opening a kernel."""

import functools
import os
import signal
import sys
from typing import Callable, Optional, Sequence, Tuple

import click

from mminspect.bits import U64
from mminspect.errors import MMInspectError
from mminspect.files import Interrupted, WRITTEN, remove_partials, signals_raise
from mminspect.kernel import Kernel
from mminspect.qmp import dimm_range, set_timeout
from mminspect.report.walk import problems_line
from mminspect.session import bound_kernel, bound_target
from mminspect.target import open_target
from mminspect.target.kcore import kcore_problem




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
        except BrokenPipeError:  # `mminspect walk | head`: the reader left
            # Exit as a process killed by SIGPIPE is seen by its shell (141),
            # not 1, which says part of the tree could not be seen.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            sys.exit(128 + signal.SIGPIPE)
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
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "sample.core")
    return path if os.path.exists(path) else None


def open_kernel(core: Optional[str], symbols: Sequence[str], live: bool, qemu: Optional[str]):
    """Open the target the options name and return a Kernel."""
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
    return start, end & U64


def _incomplete(out, walks) -> None:
    """Exit 1 with one line on stderr, after the output, when a walk could
    not see part of its tree (see :func:`mminspect.report.walk.problems_line`)."""
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


def _inputs(core, symbols, *more) -> list:
    """The files a command reads, which no output may be: the dump (the
    bundled sample when none is given), the vmlinuxes and ``more``."""
    return [p for p in (core or (bundled_sample() if bound_target() is None else None), *symbols, *more) if p]


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


_ONE_OF = "give the memory to remove with one of {} START-END, --block N, --dimm ID"


def _proposal_range(range_, blocks, dimm, qemu, range_option: str) -> Optional[Tuple[Optional[str], list]]:
    """The memory a command is asked to remove, as (range text, block ids),
    or None when none was given; ``--dimm`` is asked of the QMP socket."""
    if (bool(range_) + bool(blocks) + bool(dimm)) > 1:
        raise MMInspectError(_ONE_OF.format(range_option))
    if dimm:
        if not qemu:
            raise MMInspectError("--dimm needs the guest's QMP socket: --qemu SOCKET")

        start, end = dimm_range(qemu, dimm)
        range_ = f"{start:x}-{end:x}"
    if not range_ and not blocks:
        return None
    return range_, _block_ids(blocks) if blocks else []
