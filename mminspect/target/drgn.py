"""
drgn targets
------------

A :class:`DrgnTarget` wraps a :class:`drgn.Program`: a vmcore (kdump-compressed,
ELF, or a QEMU ``dump-guest-memory`` file in any format:
:mod:`mminspect.target.kdump` reads the kdump files drgn cannot), the running
kernel through /proc/kcore, a live QEMU guest through QMP, or a Program a drgn
user already holds. Opening checks what can be checked up front (the file exists, drgn
recognises it, it is an arm64 Linux kernel with VMCOREINFO) so that users get
one clear line instead of a traceback.
"""

import logging
from typing import Dict, Optional, Sequence, Tuple

import drgn

from mminspect.errors import MMInspectError
from mminspect.files import check_input
from mminspect.qmp import probe
from mminspect.target.base import TargetFault, parse_vmcoreinfo
from mminspect.target.corefile import CoreFile
from mminspect.target.elf import check_core_file
from mminspect.target.kcore import check_kcore
from mminspect.target.kdump import KdumpFile, own_reader_needed

__all__ = ("DrgnTarget",)


class DrgnTarget:
    """A :class:`~mminspect.target.base.Target` over a drgn Program."""

    def __init__(self, prog: drgn.Program, name: str = "drgn program") -> None:
        if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
            raise MMInspectError(f"{name}: not a Linux kernel (drgn does not see one)")
        if prog.platform is None or prog.platform.arch != drgn.Architecture.AARCH64:
            arch = prog.platform.arch.name if prog.platform else "unknown"
            raise MMInspectError(f"{name}: this is a {arch} kernel; mminspect reads arm64 kernels")
        self.prog = prog
        self.name = name
        self._vmcoreinfo: Optional[Dict[str, str]] = None
        self._debug_info: Optional[bool] = None
        #: The dump file's physical memory, for bulk scans that read it in
        #: several threads (None unless an uncompressed ELF vmcore was opened).
        self.core_file: Optional[CoreFile] = None
        #: The files this target was opened from (the dump, vmlinuxes named
        #: with -s), which no output may overwrite: see :attr:`files`.
        self.opened_files: Tuple[str, ...] = ()

    # -- opening ------------------------------------------------------------
    @classmethod
    def open(
        cls,
        core: Optional[str] = None,
        symbols: Sequence[str] = (),
        kernel: bool = False,
        qemu: Optional[str] = None,
        default_symbols: bool = True,
    ) -> "DrgnTarget":
        """
        Open a target the way drgn's CLI does: ``core`` (``-c``), the running
        kernel (``-k``) or a QEMU guest's QMP socket (``--qemu``), then debug
        info from ``symbols`` (``-s``) or, when none are given and
        ``default_symbols`` is true, drgn's default search (silently optional:
        init_mm needs only VMCOREINFO).

        :raises MMInspectError: with a one-line reason
        """
        if core is not None:
            check_core_file(core)
            prog = _core_program(core)
            name = f"vmcore {core}"
        elif qemu is not None:
            probe(qemu)  # a socket that speaks QMP and answers in time, or one line
            prog = drgn.Program()
            try:
                prog.set_qemu_qmp(qemu)
            except Exception as e:
                raise MMInspectError(f"{qemu}: cannot attach to QEMU ({_one_line(e)})") from None
            name = f"QEMU guest {qemu}"
        elif kernel:
            check_kcore()  # not arm64, no /proc/kcore, lockdown, not root: one line each
            prog = drgn.Program()
            try:
                prog.set_kernel()
            except Exception as e:
                raise MMInspectError(f"/proc/kcore: cannot open the running kernel ({_one_line(e)})") from None
            name = "running kernel"
        else:
            raise MMInspectError("no target: give -c VMCORE, -k, or --qemu SOCKET")
        target = cls(prog, name)
        target.opened_files = tuple(p for p in (core, *symbols) if p)
        if core is not None:
            target.core_file = CoreFile.open(core)
        if symbols:
            for path in symbols:
                check_input(path, "vmlinux")
            try:
                prog.load_debug_info(list(symbols))
            except drgn.MissingDebugInfoError as e:
                raise MMInspectError(f"{symbols[0]}: no usable debug info ({_one_line(e)})") from None
            except Exception as e:
                raise MMInspectError(f"{symbols[0]}: cannot load debug info ({_one_line(e)})") from None
        elif default_symbols:
            # drgn logs "missing debugging symbols" as a warning; init_mm works
            # from VMCOREINFO alone and the roots that need more say so.
            log = logging.getLogger("drgn")
            level = log.level
            log.setLevel(logging.ERROR)
            try:
                prog.load_default_debug_info()
            except Exception:
                pass
            finally:
                log.setLevel(level)
        target.vmcoreinfo()  # fail now, not halfway through a walk
        return target

    @property
    def files(self) -> Tuple[str, ...]:
        """Every file this target reads: the ones it was opened from and the
        debug files drgn found by itself (its standard search)."""
        found = list(self.opened_files)
        try:
            for m in self.prog.modules():
                found += [p for p in (m.loaded_file_path, m.debug_file_path) if p]
        except Exception:  # drgn without module objects, or none created
            pass
        return tuple(dict.fromkeys(found))

    # -- memory -------------------------------------------------------------
    def read_phys(self, address: int, size: int) -> bytes:
        try:
            return self.prog.read(address, size, True)
        except drgn.FaultError as e:
            raise TargetFault(address, size, True, _one_line(e)) from None

    def read_virt(self, address: int, size: int) -> bytes:
        try:
            return self.prog.read(address, size)
        except drgn.FaultError as e:
            raise TargetFault(address, size, False, _one_line(e)) from None

    # -- kernel facts -------------------------------------------------------
    def vmcoreinfo(self) -> Dict[str, str]:
        if self._vmcoreinfo is None:
            try:
                raw = self.prog["VMCOREINFO"].string_().decode("ascii", "replace")
            except (KeyError, LookupError, drgn.FaultError) as e:
                raise MMInspectError(f"{self.name}: no VMCOREINFO ({_one_line(e)})") from None
            self._vmcoreinfo = parse_vmcoreinfo(raw)
            if "PAGESIZE" not in self._vmcoreinfo:
                raise MMInspectError(f"{self.name}: VMCOREINFO has no PAGESIZE; truncated or foreign dump?")
        return self._vmcoreinfo

    @property
    def has_debug_info(self) -> bool:
        if self._debug_info is None:
            try:
                self.prog.type("struct page")
                self._debug_info = True
            except LookupError:
                self._debug_info = False
        return self._debug_info

    def symbol(self, name: str) -> Optional[int]:
        try:
            return self.prog.symbol(name).address
        except LookupError:
            pass
        value = self.vmcoreinfo().get(f"SYMBOL({name})")
        return int(value, 16) if value is not None else None

    def symbol_size(self, name: str) -> Optional[int]:
        """Size of a symbol (a function's code), or None."""
        try:
            return self.prog.symbol(name).size or None
        except LookupError:
            return None

    def sizeof(self, type_name: str) -> Optional[int]:
        try:
            return drgn.sizeof(self.prog.type(type_name))
        except (LookupError, SyntaxError, TypeError):
            return None

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        try:
            return drgn.offsetof(self.prog.type(type_name), member)
        except (LookupError, SyntaxError, TypeError):
            return None

    def constant(self, name: str) -> Optional[int]:
        try:
            return self.prog.constant(name).value_()
        except (LookupError, TypeError):
            return None

    def variable(self, name: str) -> Optional[drgn.Object]:
        """A kernel variable as a drgn Object (drgn-only convenience)."""
        try:
            return self.prog[name]
        except (KeyError, LookupError):
            return None


def _core_program(core: str) -> drgn.Program:
    """A Program on a vmcore file: drgn's own reading, except for the
    kdump-compressed files libkdumpfile would misread (QEMU's), which
    :class:`~mminspect.target.kdump.KdumpFile` reads."""
    if KdumpFile.kind(core):
        kd = KdumpFile(core)  # one line on a truncated file, whichever reader follows
        if own_reader_needed(kd):
            return kd.program()
    prog = drgn.Program()
    try:
        prog.set_core_dump(core)
    except Exception as e:  # drgn raises several types for files it cannot use
        raise MMInspectError(f"{core}: not a vmcore drgn can open ({_one_line(e)})") from None
    return prog


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else "no reason given"
