"""
Address translation without page tables
---------------------------------------

The kernel's own arithmetic translations, scalar and vectorised, in one
place: ``__pa()``/``__va()`` of the linear map (arch/arm64/include/asm/memory.h
``__lm_to_phys()``, ``__phys_to_virt()``), ``__pa_symbol()`` of the kernel
image (``kimage_voffset``), and ``pfn_to_page()``/``page_to_pfn()`` of the
vmemmap (include/asm-generic/memory_model.h, SPARSEMEM_VMEMMAP: ``vmemmap``
is ``VMEMMAP_START - (memstart_addr >> PAGE_SHIFT)`` struct pages).

``memstart_addr`` (PHYS_OFFSET) is an ``s64`` and can be negative when the
linear map is randomised, so physical ranges derived from a linear-map span
are computed in signed arithmetic (:meth:`AddressMap.linear_span_to_phys`).
Everything that walks page tables instead lives in :mod:`mminspect.walk`.
"""

from dataclasses import dataclass

import numpy as np

from mminspect.bits import U64

__all__ = ("AddressMap",)


@dataclass(frozen=True)
class AddressMap:
    """The numbers the kernel translates with.

    :ivar page_offset: PAGE_OFFSET, the linear map's first VA
    :ivar page_end: PAGE_END, the end of the linear map
    :ivar phys_offset: PHYS_OFFSET (``memstart_addr``, signed)
    :ivar kimage_voffset: VA - PA of the kernel image
    :ivar vmemmap_start: VMEMMAP_START, the struct page of PHYS_OFFSET
    :ivar page_shift: PAGE_SHIFT
    :ivar struct_page_size: sizeof(struct page)
    """

    page_offset: int
    page_end: int
    phys_offset: int
    kimage_voffset: int
    vmemmap_start: int
    page_shift: int
    struct_page_size: int

    @property
    def vmemmap(self) -> int:
        """The kernel's ``vmemmap``: the struct page of PFN ``p`` is at
        ``vmemmap + p * sizeof(struct page)`` (u64 arithmetic)."""
        base_pfn = self.phys_offset >> self.page_shift
        return (self.vmemmap_start - base_pfn * self.struct_page_size) & U64

    # -- one address ---------------------------------------------------------
    def is_linear(self, va: int) -> bool:
        return self.page_offset <= va < self.page_end

    def virt_to_phys(self, va: int) -> int:
        """``__pa()``: linear-map and kernel-image VAs only."""
        if self.is_linear(va):
            return ((va - self.page_offset) & U64) + self.phys_offset
        return (va - self.kimage_voffset) & U64

    def phys_to_virt(self, pa: int) -> int:
        """``__va()``: the linear-map alias of a physical address."""
        return ((pa - self.phys_offset) | self.page_offset) & U64

    def pfn_to_page(self, pfn: int) -> int:
        """VA of the ``struct page`` of a PFN in the vmemmap."""
        return (self.vmemmap + pfn * self.struct_page_size) & U64

    # -- many addresses (uint64 arrays) --------------------------------------
    def linear_to_phys(self, va: np.ndarray) -> np.ndarray:
        """``__pa()`` of linear-map VAs (others give garbage: mask them)."""
        return np.asarray(va, dtype=np.uint64) - np.uint64(self.page_offset) + np.uint64(self.phys_offset & U64)

    def pfns_to_pages(self, pfns: np.ndarray) -> np.ndarray:
        """VAs of the struct pages of ``pfns`` (wrapping as the kernel's)."""
        return np.uint64(self.vmemmap) + np.asarray(pfns).astype(np.uint64) * np.uint64(self.struct_page_size)

    def pages_to_pfns(self, page_vas: np.ndarray) -> np.ndarray:
        """PFNs of struct page VAs (``page_to_pfn()``)."""
        return ((np.asarray(page_vas).astype(np.uint64) - np.uint64(self.vmemmap))
                // np.uint64(self.struct_page_size))

    def linear_span_to_phys(self, va: np.ndarray, span: np.ndarray):
        """The physical ``[lo, hi)`` (int64: PHYS_OFFSET may be negative, so
        part of a span can lie below PA 0) that ``[va, va + span)`` maps
        through the linear map, clipped to ``[PAGE_OFFSET, PAGE_END)``."""
        lo = np.maximum(va, np.uint64(self.page_offset)) - np.uint64(self.page_offset)
        hi = (np.minimum(va + (span - np.uint64(1)), np.uint64(self.page_end - 1))
              - np.uint64(self.page_offset) + np.uint64(1))
        return lo.astype(np.int64) + self.phys_offset, hi.astype(np.int64) + self.phys_offset

    def vmemmap_span_to_phys(self, va: np.ndarray, span: np.ndarray, vmemmap_end: int,
                             struct_page_size: int):
        """The physical ``[lo, hi)`` (int64) whose struct pages
        ``[va, va + span)`` of the vmemmap holds, clipped to the region
        (``struct_page_size``: the struct page as the memmap is laid out)."""
        start = np.uint64(self.vmemmap_start)
        a = (np.maximum(va, start) - start).astype(np.int64)
        b = (np.minimum(va + (span - np.uint64(1)), np.uint64(vmemmap_end - 1)) - start).astype(np.int64) + 1
        base_pfn = self.phys_offset >> self.page_shift  # the first struct page at VMEMMAP_START
        return ((a // struct_page_size + base_pfn) << self.page_shift,
                ((b + struct_page_size - 1) // struct_page_size + base_pfn) << self.page_shift)
