"""
Address translation without page tables
---------------------------------------

The kernel's own arithmetic translations, scalar and vectorised, in one
place:

- :class:`LinearMap`: ``__pa()``/``__va()`` of the linear map
  (arch/arm64/include/asm/memory.h ``__lm_to_phys()``, ``__phys_to_virt()``)
  and ``__pa_symbol()`` of the kernel image (``kimage_voffset``);
- :class:`Vmemmap`: ``pfn_to_page()``/``page_to_pfn()`` of the vmemmap
  (include/asm-generic/memory_model.h, SPARSEMEM_VMEMMAP: ``vmemmap`` is
  ``VMEMMAP_START - (memstart_addr >> PAGE_SHIFT)`` struct pages).

``memstart_addr`` (PHYS_OFFSET) is an ``s64`` and can be negative when the
linear map is randomised, so physical ranges derived from a span of VAs are
computed in signed arithmetic. Translation through page tables lives in
:mod:`mminspect.walk`.
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from mminspect.bits import U64

__all__ = ("LinearMap", "Vmemmap")


@dataclass(frozen=True)
class LinearMap:
    """``[PAGE_OFFSET, PAGE_END)`` maps physical memory from PHYS_OFFSET on;
    the kernel image is mapped ``kimage_voffset`` above its PA."""

    page_offset: int
    page_end: int
    phys_offset: int  #: ``memstart_addr``, signed
    kimage_voffset: int

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

    def contains(self, va: np.ndarray) -> np.ndarray:
        """Which of the VAs lie in the linear map."""
        va = np.asarray(va, dtype=np.uint64)
        return (va >= np.uint64(self.page_offset)) & (va < np.uint64(self.page_end))

    def to_phys(self, va: np.ndarray) -> np.ndarray:
        """``__pa()`` of linear-map VAs, vectorised (others give garbage:
        mask them with :meth:`contains`)."""
        return np.asarray(va, dtype=np.uint64) - np.uint64(self.page_offset) + np.uint64(self.phys_offset & U64)

    def span_to_phys(self, va: np.ndarray, span: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The physical ``[lo, hi)`` (int64) that ``[va, va + span)`` maps,
        clipped to ``[PAGE_OFFSET, PAGE_END)``."""
        lo = np.maximum(va, np.uint64(self.page_offset)) - np.uint64(self.page_offset)
        hi = (np.minimum(va + (span - np.uint64(1)), np.uint64(self.page_end - 1))
              - np.uint64(self.page_offset) + np.uint64(1))
        return lo.astype(np.int64) + self.phys_offset, hi.astype(np.int64) + self.phys_offset


@dataclass(frozen=True)
class Vmemmap:
    """The struct page of PFN ``p`` is at ``base + p * struct_page_size``,
    where VMEMMAP_START holds the struct page of PHYS_OFFSET."""

    vmemmap_start: int
    phys_offset: int  #: ``memstart_addr``, signed
    page_shift: int
    struct_page_size: int

    @property
    def base(self) -> int:
        """The kernel's ``vmemmap`` (u64 arithmetic)."""
        return (self.vmemmap_start - (self.phys_offset >> self.page_shift) * self.struct_page_size) & U64

    def pfn_to_page(self, pfn: int) -> int:
        """VA of the ``struct page`` of a PFN."""
        return (self.base + pfn * self.struct_page_size) & U64

    def pfns_to_pages(self, pfns: np.ndarray) -> np.ndarray:
        """VAs of the struct pages of ``pfns`` (wrapping as the kernel's)."""
        return np.uint64(self.base) + np.asarray(pfns).astype(np.uint64) * np.uint64(self.struct_page_size)

    def pages_to_pfns(self, page_vas: np.ndarray) -> np.ndarray:
        """PFNs of struct page VAs (``page_to_pfn()``)."""
        return ((np.asarray(page_vas).astype(np.uint64) - np.uint64(self.base))
                // np.uint64(self.struct_page_size))

    def span_to_phys(self, va: np.ndarray, span: np.ndarray, vmemmap_end: int) -> Tuple[np.ndarray, np.ndarray]:
        """The physical ``[lo, hi)`` (int64) whose struct pages the vmemmap
        range ``[va, va + span)`` holds, clipped to ``[VMEMMAP_START,
        vmemmap_end)``."""
        start = np.uint64(self.vmemmap_start)
        size = self.struct_page_size
        a = (np.maximum(va, start) - start).astype(np.int64)
        b = (np.minimum(va + (span - np.uint64(1)), np.uint64(vmemmap_end - 1)) - start).astype(np.int64) + 1
        base_pfn = self.phys_offset >> self.page_shift  # the first struct page at VMEMMAP_START
        return ((a // size + base_pfn) << self.page_shift, ((b + size - 1) // size + base_pfn) << self.page_shift)
