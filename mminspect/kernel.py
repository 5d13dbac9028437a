"""
The kernel as mminspect sees it
-------------------------------

:class:`Kernel` binds a :class:`~mminspect.target.base.Target` to the facts
every later stage needs: the translation :class:`~mminspect.arch.arm64.Regime`,
the kernel VA layout (linear map, vmalloc, vmemmap, fixmap, PCI I/O, kimage),
the linear-map and kimage address translations, and the roots that can be
walked (init_mm, efi_mm, the vmemmap region, any task's mm).

Everything here is derived from VMCOREINFO first, as drgn's own translation
does, so that ``init_mm`` can be walked with no debug info at all; DWARF only
refines what VMCOREINFO does not say (the fixmap size for ptdump markers, the
roots that are not exported: efi_mm, tasks).
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from mminspect.arch.arm64 import Regime
from mminspect.errors import MMInspectError
from mminspect.target.base import Target, TargetFault
from mminspect.vmcoreinfo import check_vmcoreinfo

__all__ = ("Kasan", "Kernel", "Layout", "Root")

_U64 = (1 << 64) - 1
SZ_8M = 8 << 20
SZ_16M = 16 << 20
SZ_32M = 32 << 20
SZ_1G = 1 << 30


def _s64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


@dataclass(frozen=True)
class Root:
    """
    Where a walk starts.

    :ivar name: ``init_mm``, ``efi_mm``, ``vmemmap`` or ``pid N``
    :ivar phys: physical address of the root table (may be a sub-page slab object)
    :ivar entries: number of entries in the root table
    :ivar va_base: VA mapped by entry 0 (sign-extended for the TTBR1 half)
    :ivar start: first VA of interest (inclusive)
    :ivar end: last VA of interest (exclusive; 0 means 2**64)
    """

    name: str
    phys: int
    entries: int
    va_base: int
    start: int
    end: int
    ttbr1: bool

    @property
    def end_inclusive(self) -> int:
        return (self.end - 1) & _U64

    def __repr__(self) -> str:
        return (f"Root({self.name} phys={self.phys:#x} entries={self.entries} "
                f"range={self.start:#x}-{self.end_inclusive:#x})")


@dataclass(frozen=True)
class Kasan:
    """A generic or software tag-based KASAN kernel: its shadow region and
    the shared early shadow tables (mm/kasan/init.c) that map every part of
    the shadow no real shadow memory backs, all to ``kasan_early_shadow_page``.

    :ivar mode: ``generic`` or ``sw_tags``
    :ivar scale_shift: KASAN_SHADOW_SCALE_SHIFT (3 generic, 4 software tags)
    :ivar shadow: ``[KASAN_SHADOW_START, KASAN_SHADOW_END)``
    :ivar tables: PA of each ``kasan_early_shadow_{p4d,pud,pmd,pte}`` the
        image has, by name
    :ivar page: PA of ``kasan_early_shadow_page``
    """

    mode: str
    scale_shift: int
    shadow: Tuple[int, int]
    tables: Dict[str, int]
    page: Optional[int]


@dataclass(frozen=True)
class Layout:
    """The kernel VA layout (arch/arm64/include/asm/memory.h), all as u64."""

    page_offset: int
    page_end: int
    modules_vaddr: int
    modules_end: int
    vmalloc_start: int
    vmalloc_end: int
    vmemmap_start: int
    vmemmap_end: int
    pci_io_start: int
    pci_io_end: int
    fixaddr_start: Optional[int]
    fixaddr_top: int
    #: True for the v6.9+ layout (vmemmap ends at -1G, PCI I/O and fixmap above it).
    top_vmemmap: bool
    #: ``[KASAN_SHADOW_START, KASAN_SHADOW_END)`` on a generic or software
    #: tag-based KASAN kernel (the linear map then ends at the shadow's start).
    kasan_shadow: Optional[Tuple[int, int]] = None

    def region_of(self, va: int) -> str:
        """Name the region a kernel VA lies in, as the kernel's ptdump markers do."""
        regions = [
            ("linear map", self.page_offset, self.page_end),
            ("KASAN shadow", *(self.kasan_shadow or (0, 0))),
            ("modules", self.modules_vaddr, self.modules_end),
            ("vmalloc", self.vmalloc_start, self.vmalloc_end),
            ("vmemmap", self.vmemmap_start, self.vmemmap_end),
            ("PCI I/O", self.pci_io_start, self.pci_io_end),
        ]
        if self.fixaddr_start is not None:
            regions.append(("fixmap", self.fixaddr_start, self.fixaddr_top))
        for name, lo, hi in regions:
            if lo <= va < hi:
                return name
        return "other"


class Kernel:
    """
    An arm64 kernel behind a target.

    >>> k = Kernel(DrgnTarget.open(core="vmcore", symbols=["vmlinux"]))
    >>> k.regime.describe()
    '4K pages, 48-bit VA, 4 levels'
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        info = target.vmcoreinfo()
        check_vmcoreinfo(info, target.name)  # every number against the others, before any is used
        self.vmcoreinfo = info
        try:
            page_size = int(info["PAGESIZE"])
            va_bits = int(info["NUMBER(VA_BITS)"])
        except (KeyError, ValueError):
            raise MMInspectError(
                f"{target.name}: VMCOREINFO lacks PAGESIZE or NUMBER(VA_BITS); not an arm64 vmcore?"
            ) from None
        t1sz = self._number("TCR_EL1_T1SZ")
        vabits_actual = 64 - t1sz if t1sz else va_bits
        pa_bits = self._number("MAX_PHYSMEM_BITS", decimal=True) or 48
        try:
            self.regime = Regime(page_size.bit_length() - 1, va_bits, vabits_actual, pa_bits)
        except ValueError as e:
            raise MMInspectError(f"{target.name}: {e}") from None
        kv = self._number("kimage_voffset")
        po = self._number("PHYS_OFFSET")
        if kv is None or po is None:
            raise MMInspectError(f"{target.name}: VMCOREINFO lacks kimage_voffset or PHYS_OFFSET")
        self.kimage_voffset = kv
        #: ``memstart_addr``, an s64 that can be negative (arch/arm64/mm/init.c).
        self.phys_offset = _s64(po)
        self.kaslr_offset = int(info.get("KERNELOFFSET", "0"), 16)
        self.kasan = self._kasan()
        self.layout = self._layout()
        self.struct_page_size = int(info.get("SIZE(page)", 0)) or target.sizeof("struct page") or 64

    def __repr__(self) -> str:
        return f"Kernel({self.vmcoreinfo.get('OSRELEASE', '?')}, {self.regime.describe()}, {self.target.name})"

    @property
    def version(self) -> Tuple[int, int]:
        """(major, minor) from OSRELEASE, (0, 0) when it does not parse. Only
        for facts no dump shows (inline code); everything else is by feature."""
        m = re.match(r"(\d+)\.(\d+)", self.vmcoreinfo.get("OSRELEASE", ""))
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    # -- VMCOREINFO --------------------------------------------------------
    def _number(self, name: str, decimal: bool = False) -> Optional[int]:
        value = self.vmcoreinfo.get(f"NUMBER({name})")
        if value is None:
            return None
        value = value.strip()
        # VMCOREINFO_NUMBER() prints %ld; the arch keys print 0x%lx.
        return int(value, 10) if decimal and not value.lower().startswith("0x") else int(value, 16)

    def _kasan(self) -> Optional[Kasan]:
        """KASAN's shadow, found by its early shadow tables' symbols (present
        with KASAN_GENERIC or KASAN_SW_TAGS only: mm/kasan/init.c)."""
        t = self.target
        names = ("kasan_early_shadow_p4d", "kasan_early_shadow_pud", "kasan_early_shadow_pmd",
                 "kasan_early_shadow_pte")
        tables = {}
        for name in names:
            va = t.symbol(name)
            if va is not None:
                tables[name] = (va - self.kimage_voffset) & _U64
        if "kasan_early_shadow_pte" not in tables:
            return None
        page = t.symbol("kasan_early_shadow_page")
        sw_tags = t.symbol("kasan_init_sw_tags") is not None
        scale = 4 if sw_tags else 3
        r = self.regime
        # arch/arm64/include/asm/memory.h: KASAN_SHADOW_END is
        # (1 << (64 - scale)) + KASAN_SHADOW_OFFSET, and the Kconfig default
        # offsets (the only ones: the option has no prompt) put it at
        # _PAGE_END(VA_BITS_MIN); KASAN_SHADOW_START is
        # _KASAN_SHADOW_START(vabits_actual), which is also PAGE_END.
        end = (-(1 << (_va_bits_min(r, self._number("VMEMMAP_END") == (-SZ_1G) & _U64) - 1))) & _U64
        start = (end - (1 << (r.vabits_actual - scale))) & _U64
        return Kasan("sw_tags" if sw_tags else "generic", scale, (start, end), tables,
                     (page - self.kimage_voffset) & _U64 if page is not None else None)

    def _layout(self) -> Layout:
        r = self.regime
        stext = int(self.vmcoreinfo.get("SYMBOL(_stext)", "0"), 16)
        if stext and stext < (-(1 << (r.va_bits - 1))) & _U64:
            return self._layout_before_v5_4()
        page_offset = (-(1 << r.va_bits)) & _U64
        vmemmap_end = self._number("VMEMMAP_END")
        top_vmemmap = vmemmap_end == (-SZ_1G) & _U64
        page_end = (-(1 << (_va_bits_min(r, top_vmemmap) - 1))) & _U64
        kasan_shadow = None
        if self.kasan is not None:
            # PAGE_END is KASAN_SHADOW_START: the shadow takes the top of the linear range.
            kasan_shadow = self.kasan.shadow
            page_end = kasan_shadow[0]
        modules_vaddr = self._number("MODULES_VADDR") or page_end
        modules_end = self._number("MODULES_END") or modules_vaddr + (
            (2 << 30) if top_vmemmap else (128 << 20)
        )
        vmemmap_start = self._number("VMEMMAP_START")
        if vmemmap_start is None or vmemmap_end is None:
            # 6.1 formula: -(1 << (VA_BITS - (PAGE_SHIFT - STRUCT_PAGE_MAX_SHIFT)))
            vmemmap_start = (-(1 << (r.va_bits - (r.page_shift - 6)))) & _U64
            vmemmap_end = vmemmap_start + (((page_end - page_offset) & _U64) >> (r.page_shift - 6))
        vmalloc_start = self._number("VMALLOC_START") or modules_end
        vmalloc_end = self._number("VMALLOC_END") or (
            vmemmap_start - (SZ_8M if top_vmemmap else 256 << 20)
        )
        if top_vmemmap:
            pci_io_start = (vmemmap_end + SZ_8M) & _U64
            pci_io_end = pci_io_start + SZ_16M
            fixaddr_top = (-SZ_8M) & _U64
            fix_end = self.target.constant("__end_of_fixed_addresses")
        else:
            pci_io_end = vmemmap_start - SZ_8M
            pci_io_start = pci_io_end - SZ_16M
            fixaddr_top = vmemmap_start - SZ_32M
            fix_end = self.target.constant("__end_of_permanent_fixed_addresses")
        fixaddr_start = fixaddr_top - (fix_end << r.page_shift) if fix_end is not None else None
        return Layout(
            page_offset=page_offset,
            page_end=page_end,
            modules_vaddr=modules_vaddr,
            modules_end=modules_end,
            vmalloc_start=vmalloc_start,
            vmalloc_end=vmalloc_end,
            vmemmap_start=vmemmap_start,
            vmemmap_end=vmemmap_end,
            pci_io_start=pci_io_start,
            pci_io_end=pci_io_end,
            fixaddr_start=fixaddr_start,
            fixaddr_top=fixaddr_top,
            top_vmemmap=top_vmemmap,
            kasan_shadow=kasan_shadow,
        )

    def _layout_before_v5_4(self) -> Layout:
        """The layout before v5.4 ("arm64: mm: Flip kernel VA space"), seen
        because the kernel image lies in the lower half of the TTBR1 range:
        the linear map is the upper half, with vmemmap, PCI I/O and the fixmap
        below it (arch/arm64/include/asm/memory.h and pgtable.h of v4.14).
        The 2017 hot-remove RFC ran on this layout."""
        r = self.regime
        va_start = (-(1 << r.va_bits)) & _U64
        page_offset = (-(1 << (r.va_bits - 1))) & _U64
        vmemmap_size = 1 << (r.va_bits - r.page_shift - 1 + 6)  # STRUCT_PAGE_MAX_SHIFT = 6
        vmemmap_start = page_offset - vmemmap_size
        pci_io_end = vmemmap_start - (2 << 20)
        pci_io_start = pci_io_end - SZ_16M
        fixaddr_top = pci_io_start - (2 << 20)
        fix_end = self.target.constant("__end_of_permanent_fixed_addresses")
        modules_vaddr = self._number("MODULES_VADDR") or va_start
        modules_end = self._number("MODULES_END") or modules_vaddr + (128 << 20)
        return Layout(
            page_offset=page_offset,
            page_end=_U64,  # the linear map runs to the top of the address space
            modules_vaddr=modules_vaddr,
            modules_end=modules_end,
            vmalloc_start=self._number("VMALLOC_START") or modules_end,
            vmalloc_end=self._number("VMALLOC_END") or (vmemmap_start - SZ_8M * 8),
            vmemmap_start=vmemmap_start,
            vmemmap_end=page_offset,
            pci_io_start=pci_io_start,
            pci_io_end=pci_io_end,
            fixaddr_start=fixaddr_top - (fix_end << r.page_shift) if fix_end is not None else None,
            fixaddr_top=fixaddr_top,
            top_vmemmap=False,
        )

    # -- address translation ----------------------------------------------
    def is_linear(self, va: int) -> bool:
        return self.layout.page_offset <= va < self.layout.page_end

    def virt_to_phys(self, va: int) -> int:
        """``__pa()``: linear-map and kernel-image VAs only."""
        if self.is_linear(va):
            return ((va - self.layout.page_offset) & _U64) + self.phys_offset
        return (va - self.kimage_voffset) & _U64

    def phys_to_virt(self, pa: int) -> int:
        """``__va()``: the linear-map alias of a physical address."""
        return ((pa - self.phys_offset) | self.layout.page_offset) & _U64

    def pfn_to_page(self, pfn: int) -> int:
        """VA of the ``struct page`` of a PFN in the vmemmap."""
        base = self.phys_offset >> self.regime.page_shift
        return (self.layout.vmemmap_start + (pfn - base) * self.struct_page_size) & _U64

    # -- roots ---------------------------------------------------------------
    def root(self, spec: str, start: Optional[int] = None, end: Optional[int] = None) -> Root:
        """
        Resolve ``init_mm``, ``efi_mm``, ``vmemmap`` or a pid into a :class:`Root`.

        :raises MMInspectError: for an unknown root, or one that needs debug
            info that is missing
        """
        r = self.regime
        if spec in ("init_mm", "swapper", "vmemmap"):
            swapper = self.target.symbol("swapper_pg_dir")
            if swapper is None:
                raise MMInspectError(f"{self.target.name}: no swapper_pg_dir in VMCOREINFO or symbols")
            phys = self.virt_to_phys(swapper)
            entries = r.root_entries(index_bits=r.va_bits)
            base = r.ttbr1_va(0, r.va_bits)
            lo, hi = base, 0
            if spec == "vmemmap":
                lo, hi = self.layout.vmemmap_start, self.layout.vmemmap_end
            return self._clip(Root(spec, phys, entries, base, lo, hi, True), start, end)
        if spec.startswith("pgd:"):
            try:
                phys = int(spec[4:], 16)
            except ValueError:
                raise MMInspectError(f"bad root {spec!r}: expected pgd:PHYS in hex") from None
            self._check_pgd(spec, phys)
            return self._clip(self.user_root(spec, phys), start, end)
        if spec == "efi_mm":
            pgd = self._mm_pgd_of_symbol("efi_mm")
        elif spec.isdigit() or spec.startswith("pid"):
            pgd = self._mm_pgd_of_pid(int(spec.removeprefix("pid").strip()))
            spec = f"pid {int(spec.removeprefix('pid').strip())}"
        else:
            raise MMInspectError(f"unknown root {spec!r}: use init_mm, efi_mm, vmemmap, a pid or pgd:PHYS")
        return self._clip(self.user_root(spec, self.virt_to_phys(pgd)), start, end)

    def _check_pgd(self, spec: str, phys: int) -> None:
        """A user-given pgd is a physical address the regime allows, aligned
        as the kernel allocates a pgd (PGD_SIZE from pgd_cache when that is
        below a page: arch/arm64/mm/pgd.c; a page otherwise), and in the
        dump's memory."""
        r = self.regime
        size = min(r.root_entries() * 8, r.page_size)
        if not 0 <= phys < 1 << r.pa_bits:
            raise MMInspectError(f"bad root {spec!r}: not a physical address below 2^{r.pa_bits}")
        if phys % size:
            raise MMInspectError(f"bad root {spec!r}: a pgd is aligned to its {size} bytes; "
                                 f"{phys:#x} is {phys % size} bytes into one")
        try:
            self.target.read_phys(phys, 8)
        except TargetFault:
            raise MMInspectError(f"bad root {spec!r}: {phys:#x} is not in the dump's memory "
                                 "(not RAM, or left out of the dump)") from None

    def user_root(self, name: str, phys: int) -> Root:
        """A TTBR0 (user-half) root at physical address ``phys``, as for
        efi_mm and tasks: ``[0, TASK_SIZE_64)``."""
        r = self.regime
        if r.folded:
            # pgdir_is_page_size(): a runtime-folded top level means the pgd
            # page *is* the next level's table (p4d_offset aligns down).
            phys &= ~(r.page_size - 1)
        return Root(name, phys, r.root_entries(), 0, 0, 1 << r.vabits_actual, False)

    def _clip(self, root: Root, start: Optional[int], end: Optional[int]) -> Root:
        lo, hi = root.start, root.end
        if start is not None:
            lo = max(lo, start)
        if end is not None:
            hi = end if hi == 0 else min(hi, end)
        if hi != 0 and lo >= hi:
            raise MMInspectError(
                f"range {start:#x}-{end:#x} lies outside {root.name} "
                f"({root.start:#x}-{(root.end - 1) & _U64:#x})"
            )
        return Root(root.name, root.phys, root.entries, root.va_base, lo, hi, root.ttbr1)

    def _mm_pgd_of_symbol(self, name: str) -> int:
        addr = self.target.symbol(name)
        off = self.target.offsetof("struct mm_struct", "pgd")
        if addr is None or off is None:
            raise MMInspectError(
                f"{self.target.name}: walking {name} needs the kernel's debug info (-s VMLINUX)"
            )
        # efi_virtmap_init() sets efi_mm.pgd only when the runtime services
        # are mapped: not without UEFI, with efi=noruntime, nor by default on
        # PREEMPT_RT ("EFI runtime services will be disabled.").
        why = ("EFI runtime services were not mapped: no UEFI, efi=noruntime, or PREEMPT_RT's default"
               if name == "efi_mm" else "not set up on this kernel")
        return self._read_pointer(addr + off, f"{name}.pgd", why)

    def _mm_pgd_of_pid(self, pid: int) -> int:
        prog = getattr(self.target, "prog", None)
        if prog is None or not self.target.has_debug_info:
            raise MMInspectError(f"{self.target.name}: walking a pid needs debug info (-s VMLINUX)")
        from drgn.helpers.linux.pid import find_task

        try:
            task = find_task(prog, pid)
        except Exception as e:  # drgn FaultError, LookupError
            raise MMInspectError(f"cannot look up pid {pid}: {e}") from None
        if not task:
            raise MMInspectError(f"no task with pid {pid}")
        if not task.mm:
            raise MMInspectError(f"pid {pid} ({task.comm.string_().decode()}) is a kernel thread: no mm")
        return task.mm.pgd.value_()

    def _read_pointer(self, addr: int, what: str, why: str) -> int:
        try:
            value = int.from_bytes(self.target.read_virt(addr, 8), "little")
        except TargetFault as e:
            raise MMInspectError(f"cannot read {what}: {e}") from None
        if value == 0:
            raise MMInspectError(f"{what} is NULL ({why})")
        return value

    # -- ptdump ------------------------------------------------------------
    def ptdump_markers(self, root: Root) -> List[Tuple[int, str]]:
        """The address markers arch/arm64/mm/ptdump.c prints for this root
        (kernel_page_tables or efi_page_tables), ending with ``(-1, None)``."""
        L = self.layout
        r = self.regime
        if not root.ttbr1:
            # drivers/firmware/efi/arm-runtime.c: DEFAULT_MAP_WINDOW_64
            window = 1 << _va_bits_min(r, L.top_vmemmap)
            return [(0, "UEFI runtime start"), (window, "UEFI runtime end"), (_U64, "")]
        fix = L.fixaddr_start if L.fixaddr_start is not None else L.fixaddr_top
        markers = [
            (L.page_offset, "Linear Mapping start"),
            (L.page_end, "Linear Mapping end"),
        ]
        if L.kasan_shadow is not None:
            markers += [(L.kasan_shadow[0], "Kasan shadow start"), (L.kasan_shadow[1], "Kasan shadow end")]
        markers += [
            (L.modules_vaddr, "Modules start"),
            (L.modules_end, "Modules end"),
            (L.vmalloc_start, "vmalloc() area"),
            (L.vmalloc_end, "vmalloc() end"),
        ]
        if L.top_vmemmap:
            po_actual = (-(1 << r.vabits_actual)) & _U64
            vmemmap_first = L.vmemmap_start + (
                ((po_actual - L.page_offset) >> r.page_shift) * self.struct_page_size
            )
            markers += [
                (vmemmap_first, "vmemmap start"),
                (L.vmemmap_end, "vmemmap end"),
                (L.pci_io_start, "PCI I/O start"),
                (L.pci_io_end, "PCI I/O end"),
                (fix, "Fixmap start"),
                (L.fixaddr_top, "Fixmap end"),
            ]
        else:
            markers += [
                (fix, "Fixmap start"),
                (L.fixaddr_top, "Fixmap end"),
                (L.pci_io_start, "PCI I/O start"),
                (L.pci_io_end, "PCI I/O end"),
                (L.vmemmap_start, "vmemmap start"),
                (L.vmemmap_end, "vmemmap end"),
            ]
        return markers + [(_U64, "")]

    def ptdump_base(self, root: Root) -> int:
        """``kernel_ptdump_info.base_addr``: PAGE_OFFSET (6.1) or
        ``_PAGE_OFFSET(vabits_actual)`` (v6.9+), and 0 for efi_mm."""
        if not root.ttbr1:
            return 0
        if self.layout.top_vmemmap:
            return (-(1 << self.regime.vabits_actual)) & _U64
        return self.layout.page_offset

    def describe(self) -> Dict[str, object]:
        """Facts for reports and JSON."""
        return {
            "osrelease": self.vmcoreinfo.get("OSRELEASE"),
            "regime": self.regime.as_dict(),
            "phys_offset": self.phys_offset,
            "kimage_voffset": self.kimage_voffset,
            "kaslr_offset": self.kaslr_offset,
            "debug_info": self.target.has_debug_info,
        }


def _va_bits_min(r: Regime, top_vmemmap: bool) -> int:
    # VA_BITS_MIN: 48 for 52-bit builds, 47 for 16K/52 on the v6.9+ layout.
    if r.va_bits > 48:
        return 47 if (r.page_shift == 14 and top_vmemmap) else 48
    return r.va_bits
