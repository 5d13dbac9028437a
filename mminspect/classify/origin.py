"""
Origin rules and mapped memory
------------------------------

:func:`table_origins` decides who allocated each table page from its struct
page, in this order, the later rules overriding the earlier: ``buddy-no-ctor``
(an allocated page without the page-table type), ``buddy-ctor`` (the type: a
pgtable ctor ran), ``slab`` (a pgd smaller than a page, from ``pgd_cache``),
``memblock`` (``PG_reserved``), ``unknown`` (a free page), ``altmap``
(inside a memory block's altmap reserve), ``kernel-image`` (a live static
table in ``[_text, _end)``), ``unknown`` again for an unreadable struct page.

:func:`mapped_memory` says what memory a linear-map or vmemmap table's span
maps (boot memory by ``SECTION_IS_EARLY``, hot-added, or both) and in which
memory block.
"""

from typing import Tuple

import numpy as np

from mminspect.classify.facts import KernelFacts
from mminspect.classify.model import O_ALTMAP, O_CTOR, O_IMAGE, O_MEMBLOCK, O_NOCTOR, O_SLAB, O_UNKNOWN, R_LINEAR, R_VMEMMAP
from mminspect.kernel import Kernel

__all__ = ("mapped_memory", "table_origins")


def table_origins(c: KernelFacts, facts: np.ndarray, reserved: np.ndarray, free: np.ndarray,
                  altmap: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The :data:`~mminspect.classify.model.ORIGINS` index of each table
    (``facts``: its struct page rows)."""
    n = len(facts)
    ok = facts["ok"]
    origin = np.full(n, O_NOCTOR, dtype=np.int8)
    origin[facts["table"]] = O_CTOR
    origin[facts["slab"]] = O_SLAB
    origin[reserved] = O_MEMBLOCK
    origin[free & ~reserved] = O_UNKNOWN
    origin[altmap] = O_ALTMAP
    origin[image] = O_IMAGE
    origin[~ok & ~image] = O_UNKNOWN
    if c.features.page_type == "unknown":
        origin[(origin == O_CTOR) | (origin == O_NOCTOR)] = O_UNKNOWN
    return origin


def mapped_memory(kernel: Kernel, c: KernelFacts, va: np.ndarray, span: np.ndarray, region: np.ndarray,
                  is_root: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each TTBR1 table: the MAPS_* kind of the memory its span maps
    (-1 outside the linear map and the vmemmap) and the index of the first
    memory block it maps (-1: none). Physical ranges are signed: PHYS_OFFSET
    may be negative (linear-map randomisation), so part of a span can map
    below PA 0."""
    assert c.memory is not None
    n = len(va)
    maps = np.full(n, -1, dtype=np.int8)
    block = np.full(n, -1, dtype=np.int64)
    lin = ((region & R_LINEAR) != 0) & ~is_root
    vmm = ((region & R_VMEMMAP) != 0) & ~is_root & ~lin
    lo = np.zeros(n, dtype=np.int64)
    hi = np.zeros(n, dtype=np.int64)
    if lin.any():
        lo[lin], hi[lin] = kernel.linear_map.span_to_phys(va[lin], span[lin])
    if vmm.any():
        lo[vmm], hi[vmm] = c.pages.map.span_to_phys(va[vmm], span[vmm], kernel.layout.vmemmap_end)
    sel = lin | vmm
    if sel.any():
        slo = np.maximum(lo[sel], 0).astype(np.uint64)
        shi = np.maximum(hi[sel], 0).astype(np.uint64)
        maps[sel] = c.memory.kinds(slo, shi)
        block[sel] = c.memory.block_of(slo)
        # a span that starts below the first block: the first block it maps
        miss = block[sel] < 0
        if miss.any() and c.memory.blocks:
            first = c.memory._blk_start
            k2 = np.searchsorted(first, slo[miss], side="left")
            ok2 = (k2 < len(first)) & (first[np.minimum(k2, len(first) - 1)] < shi[miss])
            sub = block[sel]
            sub[miss] = np.where(ok2, k2, -1)
            block[sel] = sub
    return maps, block
