"""
The per-kernel fact cache of the classifier
-------------------------------------------

:class:`KernelFacts` reads, once per kernel, what every classification of
that kernel reuses: the struct page layout and reader
(:mod:`mminspect.mm`), the era's features (:mod:`mminspect.era`), the kernel
image ``[_text, _end)`` with its static tables (``swapper_pg_dir``,
``bm_pte[]``, ``init_pg_dir`` ...), memblock.reserved, the memory map and
the regions. :func:`kernel_facts` returns the cached one.
"""

import weakref
from typing import Dict, List, Optional, Tuple

import numpy as np

from mminspect.era import Features
from mminspect.errors import MMInspectError
from mminspect.kernel import Kernel
from mminspect.mm.blocks import MemoryMap
from mminspect.mm.memblock import read_memblock
from mminspect.mm.memmap import StructPages
from mminspect.mm.ptl import PtlObjects
from mminspect.classify.model import R_OTHER
from mminspect.target.base import symbol_size

__all__ = ("KernelFacts", "kernel_facts")


class KernelFacts:
    """The facts about one kernel that every classification reuses, read
    once per kernel (:func:`kernel_facts`): struct page layout, era
    features, the kernel image and its static tables, memblock, the memory
    map, the regions."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        t = kernel.target
        self.pages = StructPages(kernel)
        self.layout = self.pages.layout
        self.features = Features.detect(kernel, self.layout)
        self.ptl = PtlObjects(kernel, self.pages)
        self.evidence: Dict[str, str] = {}
        r = kernel.regime
        self.page_size = r.page_size
        self.shift = r.page_shift
        # The kernel image, [_text, _end).
        self.text_va = t.symbol("_text")
        end = kernel.image_symbol("_end")
        self.end_va = end
        if self.text_va is not None and end is not None:
            self.image_pa = (kernel.virt_to_phys(self.text_va), kernel.virt_to_phys(end))
            self.evidence["image"] = (f"[_text, _end) = [{self.image_pa[0]:#x}, {self.image_pa[1]:#x}) "
                                      "physical")
        else:
            self.image_pa = None
            self.evidence["image"] = "no _text/_end: kernel-image tables found by symbol only"
        self.image_syms = self._image_tables()
        # memblock.reserved (ARCH_KEEP_MEMBLOCK).
        self.memblock = read_memblock(kernel, "reserved")
        self.evidence["memblock"] = (f"memblock.reserved: {len(self.memblock)} regions"
                                     if self.memblock is not None else "memblock not readable (no DWARF)")
        try:
            self.memory: Optional[MemoryMap] = MemoryMap.read(kernel)
            self.evidence.update(self.memory.evidence)
        except MMInspectError as e:
            self.memory = None
            self.evidence["sections"] = f"no memory map: {e}"
        self.regions = kernel.regions()

    # -- kernel image -------------------------------------------------------------
    def _image_tables(self) -> List[Tuple[int, int, str, int]]:
        """(pa, size, name, per-table size) of every static table in the image."""
        k = self.kernel

        ps = self.page_size
        out = []

        names = ("swapper_pg_dir", "tramp_pg_dir", "idmap_pg_dir", "reserved_pg_dir", "init_idmap_pg_dir",
                 "bm_pud", "bm_pmd", "bm_pte", "idmap_ptes", "kpti_ptes", "kpti_bbml2_ptes",
                 "kasan_early_shadow_p4d", "kasan_early_shadow_pud", "kasan_early_shadow_pmd",
                 "kasan_early_shadow_pte")
        for name in names:
            va = k.image_symbol(name)
            if va is None:
                continue
            size = symbol_size(k.target, name) or ps
            # kasan_early_shadow_* are smaller than a page on some configs;
            # bm_pte is NR_BM_PTE_TABLES tables on 6.12.
            out.append((k.virt_to_phys(va), max(size, 8), name, ps))
        for start, end in (("init_pg_dir", "init_pg_end"), ("__pi_init_pg_dir", "__pi_init_pg_end"),
                           ("init_idmap_pg_dir", "init_idmap_pg_end")):
            a, b = k.image_symbol(start), k.image_symbol(end)
            if a is not None and b is not None and b > a:
                if any(n == start.removeprefix("__pi_") for _, _, n, _ in out):
                    continue
                out = [x for x in out if x[2] != start.removeprefix("__pi_")]
                out.append((k.virt_to_phys(a), b - a, start.removeprefix("__pi_"), ps))
        out.sort()
        return out

    def image_name(self, pa: int) -> Optional[str]:
        for sym_pa, size, name, per in self.image_syms:
            if sym_pa <= pa < sym_pa + size:
                i = (pa - sym_pa) // per
                if name.endswith("_pg_dir") and size > per:
                    return f"{name}+{i}" if i else name
                return f"{name}[{i}]" if size > per else name
        return None

    def image_contains(self, pa: np.ndarray) -> np.ndarray:
        """PAs inside ``[__pa(_text), __pa(_end))`` or a static table symbol.
        Part of that range is freed after boot (``free_initmem()`` of the
        __init sections; 6.1 also frees ``init_pg_dir``): callers require
        PG_reserved as well, which freeing clears."""
        pa = np.asarray(pa, dtype=np.uint64)
        inside = np.zeros(len(pa), dtype=bool)
        if self.image_pa is not None:
            inside |= (pa >= np.uint64(self.image_pa[0])) & (pa < np.uint64(self.image_pa[1]))
        for sym_pa, size, _, _ in self.image_syms:
            inside |= (pa >= np.uint64(sym_pa)) & (pa < np.uint64(sym_pa + size))
        return inside

    # -- regions ------------------------------------------------------------------
    def region_bits(self, va: np.ndarray, span: np.ndarray) -> np.ndarray:
        """Bitmask of the TTBR1 regions each ``[va, va + span)`` overlaps."""
        va = np.asarray(va, dtype=np.uint64)
        last = va + (np.asarray(span, dtype=np.uint64) - np.uint64(1))
        bits = np.zeros(len(va), dtype=np.int64)
        for reg in self.regions:
            if reg.start < reg.end:
                hit = (va < np.uint64(reg.end)) & (last >= np.uint64(reg.start))
                bits |= np.where(hit, reg.bit, 0)
        return np.where(bits == 0, R_OTHER, bits)


_CACHE: "weakref.WeakKeyDictionary[Kernel, KernelFacts]" = weakref.WeakKeyDictionary()


def kernel_facts(kernel: Kernel) -> KernelFacts:
    """The :class:`KernelFacts` of ``kernel``, read once."""
    c = _CACHE.get(kernel)
    if c is None:
        c = KernelFacts(kernel)
        _CACHE[kernel] = c
    return c
