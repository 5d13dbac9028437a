"""
The kernel VA layout and its one region table
---------------------------------------------

:class:`Layout` holds the arm64 kernel VA layout
(``arch/arm64/include/asm/memory.h``) as :func:`detect_layout` derives it
from VMCOREINFO. :meth:`Layout.regions` is the one table of the TTBR1
regions: naming the region of a VA (:meth:`Layout.region_of`), the region
bitmasks the classifier keeps per table (:func:`region_bit`,
:func:`region_name`) and the address markers of the kernel's ptdump
(:meth:`Layout.ptdump_markers`) all derive from it.

Two layouts exist: the one since v5.4, commit 14c127c957c1 ("arm64: mm: Flip
kernel VA space"), with the linear map at the bottom of the TTBR1 range, and
the one before it, with the linear map in the upper half (the 2017 hot-remove
RFC ran on that one). Since v6.9, Ard Biesheuvel's series "arm64:
Reorganize kernel VA space" (<20231213084024.2367360-9-ardb@google.com>:
"arm64: mm: Move PCI I/O emulation region above the vmemmap region", "arm64:
mm: Move fixmap region above vmemmap region"), the vmemmap ends 1 GiB below
the top with PCI I/O and the fixmap above it (:attr:`Layout.top_vmemmap`).
"""

import functools
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from mminspect.arch.arm64 import Regime
from mminspect.bits import U64

__all__ = ("Layout", "Region", "REGION_NAMES", "detect_layout", "region_bit", "region_name", "va_bits_min")

SZ_8M = 8 << 20
SZ_16M = 16 << 20
SZ_32M = 32 << 20
SZ_1G = 1 << 30

#: Every region a kernel table can cover, in the order of their bits in a
#: region bitmask (:func:`region_bit`); "other" is a VA in none of them.
REGION_NAMES = ("linear map", "modules", "vmalloc", "vmemmap", "PCI I/O", "fixmap", "kimage", "other",
                "KASAN shadow")
_OTHER = 1 << REGION_NAMES.index("other")


def region_bit(name: str) -> int:
    """The bit of region ``name`` in a region bitmask."""
    return 1 << REGION_NAMES.index(name)


def region_name(bits: int) -> str:
    """``linear map``, ``vmalloc+vmemmap`` ...: the regions of a bitmask."""
    if bits == _OTHER:
        return "other"
    return "+".join(n for i, n in enumerate(REGION_NAMES) if bits & (1 << i))


@dataclass(frozen=True)
class Region:
    """One TTBR1 region ``[start, end)`` (empty when the kernel does not say
    where it starts), with the names arch/arm64/mm/ptdump.c's
    ``address_markers[]`` give its ends."""

    name: str
    start: int
    end: int
    markers: Optional[Tuple[str, str]] = None

    @property
    def bit(self) -> int:
        return region_bit(self.name)

    def __contains__(self, va: int) -> bool:
        return self.start <= va < self.end


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

    def regions(self) -> List[Region]:
        """The TTBR1 regions in the order of ptdump's address markers
        (ascending addresses on every layout since v5.4)."""
        return list(_regions(self))

    def _build_regions(self) -> Tuple[Region, ...]:
        fix = Region("fixmap", self.fixaddr_start if self.fixaddr_start is not None else self.fixaddr_top,
                     self.fixaddr_top, ("Fixmap start", "Fixmap end"))
        pci = Region("PCI I/O", self.pci_io_start, self.pci_io_end, ("PCI I/O start", "PCI I/O end"))
        vmemmap = Region("vmemmap", self.vmemmap_start, self.vmemmap_end, ("vmemmap start", "vmemmap end"))
        out = [Region("linear map", self.page_offset, self.page_end, ("Linear Mapping start", "Linear Mapping end"))]
        if self.kasan_shadow is not None:
            out.append(Region("KASAN shadow", *self.kasan_shadow, ("Kasan shadow start", "Kasan shadow end")))
        out += [
            Region("modules", self.modules_vaddr, self.modules_end, ("Modules start", "Modules end")),
            Region("vmalloc", self.vmalloc_start, self.vmalloc_end, ("vmalloc() area", "vmalloc() end")),
        ]
        out += [vmemmap, pci, fix] if self.top_vmemmap else [fix, pci, vmemmap]
        return tuple(out)

    def region_of(self, va: int) -> str:
        """Name the region a kernel VA lies in, as the kernel's ptdump markers do."""
        return next((reg.name for reg in _regions(self) if va in reg), "other")

    def ptdump_markers(self, vmemmap_first: Optional[int] = None) -> List[Tuple[int, str]]:
        """The TTBR1 address markers arch/arm64/mm/ptdump.c prints, ending
        with ``(2**64 - 1, "")``. ``vmemmap_first``: where the "vmemmap
        start" marker stands when it is not VMEMMAP_START (on the v6.9+
        layout, the struct page of the running VA size's first linear-map
        page)."""
        out: List[Tuple[int, str]] = []
        for reg in self.regions():
            if reg.markers is not None:
                start = vmemmap_first if reg.name == "vmemmap" and vmemmap_first is not None else reg.start
                out += [(start, reg.markers[0]), (reg.end, reg.markers[1])]
        return out + [(U64, "")]


@functools.lru_cache(maxsize=16)
def _regions(layout: Layout) -> Tuple[Region, ...]:
    """:meth:`Layout.regions`, built once per layout (a frozen, hashable
    record): the simulation asks :meth:`Layout.region_of` of every table it
    frees, 33k times for a 64 GiB removal."""
    return layout._build_regions()


def va_bits_min(r: Regime, top_vmemmap: bool) -> int:
    """``VA_BITS_MIN``: 48 for 52-bit builds, 47 for 16K/52 on the v6.9+ layout."""
    if r.va_bits > 48:
        return 47 if (r.page_shift == 14 and top_vmemmap) else 48
    return r.va_bits


def detect_layout(r: Regime, number: Callable[[str], Optional[int]], stext: int,
                  constant: Callable[[str], Optional[int]], kasan_shadow: Optional[Tuple[int, int]]) -> Layout:
    """The layout from VMCOREINFO (``number(NAME)`` reads ``NUMBER(NAME)``),
    ``SYMBOL(_stext)`` and, for the fixmap's size, the enumerator
    ``__end_of_fixed_addresses`` (``constant``)."""
    if stext and stext < (-(1 << (r.va_bits - 1))) & U64:
        return _layout_before_v5_4(r, number, constant)
    page_offset = (-(1 << r.va_bits)) & U64
    vmemmap_end = number("VMEMMAP_END")
    top_vmemmap = vmemmap_end == (-SZ_1G) & U64
    page_end = (-(1 << (va_bits_min(r, top_vmemmap) - 1))) & U64
    if kasan_shadow is not None:
        # PAGE_END is KASAN_SHADOW_START: the shadow takes the top of the linear range.
        page_end = kasan_shadow[0]
    modules_vaddr = number("MODULES_VADDR") or page_end
    modules_end = number("MODULES_END") or modules_vaddr + ((2 << 30) if top_vmemmap else (128 << 20))
    vmemmap_start = number("VMEMMAP_START")
    if vmemmap_start is None or vmemmap_end is None:
        # 6.1 formula: -(1 << (VA_BITS - (PAGE_SHIFT - STRUCT_PAGE_MAX_SHIFT)))
        vmemmap_start = (-(1 << (r.va_bits - (r.page_shift - 6)))) & U64
        vmemmap_end = vmemmap_start + (((page_end - page_offset) & U64) >> (r.page_shift - 6))
    vmalloc_start = number("VMALLOC_START") or modules_end
    vmalloc_end = number("VMALLOC_END") or (vmemmap_start - (SZ_8M if top_vmemmap else 256 << 20))
    if top_vmemmap:
        pci_io_start = (vmemmap_end + SZ_8M) & U64
        pci_io_end = pci_io_start + SZ_16M
        fixaddr_top = (-SZ_8M) & U64
        fix_end = constant("__end_of_fixed_addresses")
    else:
        pci_io_end = vmemmap_start - SZ_8M
        pci_io_start = pci_io_end - SZ_16M
        fixaddr_top = vmemmap_start - SZ_32M
        fix_end = constant("__end_of_permanent_fixed_addresses")
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


def _layout_before_v5_4(r: Regime, number: Callable[[str], Optional[int]],
                        constant: Callable[[str], Optional[int]]) -> Layout:
    """The layout before v5.4 (14c127c957c1, "arm64: mm: Flip kernel VA
    space"), seen because the kernel image lies in the lower half of the
    TTBR1 range: the linear map is the upper half, with vmemmap, PCI I/O and
    the fixmap below it (arch/arm64/include/asm/memory.h and pgtable.h of
    v4.14)."""
    va_start = (-(1 << r.va_bits)) & U64
    page_offset = (-(1 << (r.va_bits - 1))) & U64
    vmemmap_size = 1 << (r.va_bits - r.page_shift - 1 + 6)  # STRUCT_PAGE_MAX_SHIFT = 6
    vmemmap_start = page_offset - vmemmap_size
    pci_io_end = vmemmap_start - (2 << 20)
    pci_io_start = pci_io_end - SZ_16M
    fixaddr_top = pci_io_start - (2 << 20)
    fix_end = constant("__end_of_permanent_fixed_addresses")
    modules_vaddr = number("MODULES_VADDR") or va_start
    modules_end = number("MODULES_END") or modules_vaddr + (128 << 20)
    return Layout(
        page_offset=page_offset,
        page_end=U64,  # the linear map runs to the top of the address space
        modules_vaddr=modules_vaddr,
        modules_end=modules_end,
        vmalloc_start=number("VMALLOC_START") or modules_end,
        vmalloc_end=number("VMALLOC_END") or (vmemmap_start - SZ_8M * 8),
        vmemmap_start=vmemmap_start,
        vmemmap_end=page_offset,
        pci_io_start=pci_io_start,
        pci_io_end=pci_io_end,
        fixaddr_start=fixaddr_top - (fix_end << r.page_shift) if fix_end is not None else None,
        fixaddr_top=fixaddr_top,
        top_vmemmap=False,
    )
