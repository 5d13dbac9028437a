"""
mminspect for gdb
=================

Source this file in gdb (gdb-multiarch on an x86 host works) attached to an
arm64 kernel — QEMU's gdbstub (``qemu-system-aarch64 -s``) or kgdb — with the
vmlinux loaded::

    $ gdb-multiarch vmlinux
    (gdb) target remote :1234
    (gdb) source /path/to/mminspect/plugins/gdb/mminspect-gdb.py
    (gdb) mminspect walk --mm efi_mm
    (gdb) mminspect walk --mm init_mm --format ptdump
    (gdb) help mminspect walk

The ``mminspect`` prefix command has the subcommands of the shell's
``mminspect`` (those that can run on a live gdb target) with the same options
and output, minus ``-c/-s/-k/--qemu``: the target is gdb's.

Settings: ``set mminspect phys-mode auto|on|off`` (QEMU's physical memory
mode, or reads through the kernel's linear map), ``set mminspect vmcoreinfo
auto|kernel|computed`` (the kernel's vmcoreinfo_data, or keys computed from
symbols and registers). ``$mminspect_status`` holds the exit status the shell
would have returned (simulate-remove: 1 for findings, 3 for a refusal).

gdb's Python must be able to import mminspect and its dependencies (numpy,
click, tabulate). If it cannot, this script adds the checkout it lives in and
the site-packages of the Python that has mminspect installed (``$MMINSPECT_PYTHON``,
else ``python3`` on PATH) when that Python has the same major.minor version
as gdb's. Set MMINSPECT_DEBUG=1 for tracebacks.
"""

import os
import subprocess
import sys

import gdb  # type: ignore[import-not-found]


def _setup_path() -> None:
    here = os.path.dirname(os.path.abspath(globals().get("__file__", "plugins/gdb/x")))
    checkout = os.path.dirname(os.path.dirname(here))
    if os.path.isfile(os.path.join(checkout, "mminspect", "__init__.py")) and checkout not in sys.path:
        sys.path.insert(0, checkout)
    import importlib.util

    if all(importlib.util.find_spec(m) for m in ("numpy", "click", "tabulate", "mminspect")):
        return
    python = os.environ.get("MMINSPECT_PYTHON", "python3")
    probe = "import sys, numpy, click, tabulate; print('%d.%d' % sys.version_info[:2]); print('\\n'.join(sys.path))"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": ""})
    except OSError as e:
        raise gdb.GdbError(f"mminspect: gdb's Python cannot import numpy/click/tabulate, and {python}: {e}")
    lines = out.stdout.splitlines()
    mine = "%d.%d" % sys.version_info[:2]
    if out.returncode != 0 or not lines:
        raise gdb.GdbError(
            f"mminspect: gdb's Python ({mine}) cannot import numpy/click/tabulate, nor can {python}; "
            "install them for gdb's Python or set MMINSPECT_PYTHON"
        )
    if lines[0] != mine:
        raise gdb.GdbError(
            f"mminspect: gdb's Python is {mine} but {python} is {lines[0]}: install numpy, click and "
            f"tabulate for gdb's Python, or point MMINSPECT_PYTHON at a Python {mine}"
        )
    # Ahead of gdb's own dist-packages, so that gdb runs the versions the
    # shell CLI runs (and prints the same).
    at = 1 if sys.path and sys.path[0] == checkout else 0
    for path in reversed([p for p in lines[1:] if p and "site-packages" in p and p not in sys.path]):
        sys.path.insert(at, path)


_setup_path()

from mminspect import commands  # noqa: E402
from mminspect.errors import MMInspectError  # noqa: E402


class _State:
    target = None
    kernel = None
    phys_mode = "auto"
    vmcoreinfo = "auto"

    @classmethod
    def drop(cls, *_args) -> None:
        cls.target = None
        cls.kernel = None

    @classmethod
    def on_stop(cls, *_args) -> None:
        # The target ran: memory and registers may differ now.
        if cls.target is not None:
            cls.target.invalidate()

    @classmethod
    def get_target(cls):
        from mminspect.target.gdb import GdbTarget

        if cls.target is None:
            phys = {"auto": None, "on": True, "off": False}[cls.phys_mode]
            cls.target = GdbTarget(phys_mode=phys, vmcoreinfo=cls.vmcoreinfo)
            cls.kernel = None
        return cls.target

    @classmethod
    def get_kernel(cls):
        from mminspect.kernel import Kernel

        class GdbKernel(Kernel):
            # Pids: the core resolves them with drgn's find_task(); here the
            # gdb target follows init_task.tasks itself.
            def _mm_pgd_of_pid(self, pid: int) -> int:
                return self.target.task_mm_pgd(pid)

        if cls.kernel is None:
            cls.kernel = GdbKernel(cls.get_target())
        return cls.kernel


gdb.events.stop.connect(_State.on_stop)
for _name in ("new_objfile", "clear_objfiles", "exited", "connection_removed"):
    _event = getattr(gdb.events, _name, None)
    if _event is not None:
        _event.connect(_State.drop)


def _fail(e: BaseException):
    if commands.debug_enabled():
        raise e
    if isinstance(e, (MMInspectError, gdb.GdbError)):
        return gdb.GdbError(str(e))
    if isinstance(e, KeyboardInterrupt):
        return gdb.GdbError("mminspect: interrupted")
    text = str(e).strip().splitlines()
    return gdb.GdbError(f"mminspect: {type(e).__name__}: {text[0] if text else ''} "
                        "(set MMINSPECT_DEBUG=1 for a traceback)")


def _run(argv) -> None:
    try:
        inv = commands.parse(argv, "gdb")
        if inv is None:
            return
        target = _State.get_target()
        with target.session():  # QEMU's physical memory mode on for the whole command
            kernel = _State.get_kernel()
            with commands.bound(target, "gdb", kernel):
                status = commands.invoke(inv, "gdb")
        gdb.set_convenience_variable("mminspect_status", status)
    except BaseException as e:  # noqa: B036 - KeyboardInterrupt included, by design
        raise _fail(e) from None


class MMInspectPrefix(gdb.Command):
    """Inspect arm64 kernel page tables (mminspect).

Usage: mminspect SUBCOMMAND [OPTIONS]

Runs mminspect's subcommands on the kernel gdb is attached to (QEMU's gdbstub
or kgdb), with the options and output of the shell's mminspect.
"mminspect SUBCOMMAND -h" or "help mminspect SUBCOMMAND" shows the options.
Settings: "show mminspect"."""

    def __init__(self) -> None:
        super().__init__("mminspect", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)

    def invoke(self, arg: str, from_tty: bool) -> None:
        self.dont_repeat()
        argv = gdb.string_to_argv(arg)
        if not argv:
            gdb.write(commands.help_text(None, "gdb"))
            return
        _run(argv)  # an unknown subcommand: one line from the command layer


class _Subcommand(gdb.Command):
    subcommand = ""

    def __init__(self) -> None:
        super().__init__(f"mminspect {self.subcommand}", gdb.COMMAND_DATA, gdb.COMPLETE_NONE)

    def invoke(self, arg: str, from_tty: bool) -> None:
        self.dont_repeat()
        _run([self.subcommand, *gdb.string_to_argv(arg)])


def _register_subcommands() -> None:
    for name in commands.subcommand_names("gdb"):
        doc = commands.summary(name).rstrip(".") + ".\n\n" + commands.help_text(name, "gdb")
        cls = type(f"MMInspect_{name.replace('-', '_')}", (_Subcommand,), {"__doc__": doc, "subcommand": name})
        cls()


class _SetPrefix(gdb.Command):
    """Settings of the mminspect commands."""

    def __init__(self, verb: str) -> None:
        super().__init__(f"{verb} mminspect", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)


class _EnumParameter(gdb.Parameter):
    def __init__(self, name: str, attr: str, values, doc: str, set_doc: str, show_doc: str) -> None:
        self.__doc__ = doc
        self.set_doc = set_doc
        self.show_doc = show_doc
        self._attr = attr
        super().__init__(f"mminspect {name}", gdb.COMMAND_DATA, gdb.PARAM_ENUM, list(values))
        self.value = getattr(_State, attr)

    def get_set_string(self) -> str:
        setattr(_State, self._attr, self.value)
        _State.drop()
        return ""

    def get_show_string(self, svalue: str) -> str:
        return svalue


class PhysModeParameter(_EnumParameter):
    """How mminspect reads physical memory: auto (QEMU's physical memory mode
when the stub has it, else the kernel's linear map), on (physical mode only),
off (always through the linear map, as with kgdb)."""

    def __init__(self) -> None:
        super().__init__("phys-mode", "phys_mode", ("auto", "on", "off"), PhysModeParameter.__doc__,
                         "Set how mminspect reads physical memory.", "How mminspect reads physical memory:")


class VmcoreinfoParameter(_EnumParameter):
    """Where mminspect takes VMCOREINFO from: auto (the kernel's vmcoreinfo_data,
else computed), kernel (vmcoreinfo_data only), computed (from symbols and
registers: swapper_pg_dir, kimage_voffset, memstart_addr, TCR_EL1)."""

    def __init__(self) -> None:
        super().__init__("vmcoreinfo", "vmcoreinfo", ("auto", "kernel", "computed"),
                         VmcoreinfoParameter.__doc__, "Set where mminspect takes VMCOREINFO from.",
                         "mminspect takes VMCOREINFO from:")


MMInspectPrefix()
_register_subcommands()
_SetPrefix("set")
_SetPrefix("show")
PhysModeParameter()
VmcoreinfoParameter()
