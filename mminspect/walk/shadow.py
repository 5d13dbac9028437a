"""
KASAN's early shadow tables in a walk
-------------------------------------

KASAN (generic and software tags) maps every part of its shadow that no real
shadow memory backs through the shared ``kasan_early_shadow_{p4d,pud,pmd,pte}``
tables of the kernel image, all to ``kasan_early_shadow_page``: terabytes of
PTEs through three table pages. As the kernel's ptdump does
(``note_kasan_page_table()``, mm/ptdump.c), the walker does not descend into
them: :class:`EarlyShadow` turns an entry that references one into one
PTE-level ``rep`` run of the early shadow page, and records the early tables
once (checked to be what mm/kasan/init.c makes of them) with every entry
that references them.
"""

from typing import Dict, Optional, Tuple

import numpy as np

from mminspect.bits import U64
from mminspect.kernel import Kernel, Root
from mminspect.target.base import TargetFault
from mminspect.walk.model import CLS_LEAF, RUN_DTYPE

__all__ = ("EarlyShadow",)


class EarlyShadow:
    """The early shadow tables a walk of ``root`` meets (none outside a
    KASAN kernel's TTBR1 tables), and the first VA each was reached at."""

    def __init__(self, kernel: Kernel, root: Root) -> None:
        self.entries = kernel.regime.entries_per_table
        #: PA -> (level, rows, page PA, leaf attr, inherited bits)
        self.tables: Dict[int, Tuple[int, np.ndarray, int, int, int]] = self._tables(kernel, root)
        self.keys = np.array(sorted(self.tables), dtype=np.uint64)
        self.reached: Dict[int, int] = {}  # PA -> first VA it maps

    def _tables(self, kernel: Kernel, root: Root) -> Dict[int, Tuple[int, np.ndarray, int, int, int]]:
        """The early shadow tables that are what mm/kasan/init.c and
        kasan_init() make of them, bottom up: a PTE table whose entries all map
        one page with one set of attributes, and tables above it whose entries
        all reference the table below. A table that is not (a dump taken
        during early boot) is walked like any other."""
        ka = kernel.kasan
        if ka is None or not root.ttbr1:
            return {}
        r = kernel.regime
        oa_mask = np.uint64(r.oa_mask)
        E = r.entries_per_table
        out: Dict[int, Tuple[int, np.ndarray, int, int, int]] = {}
        below = None
        for name, level in (("kasan_early_shadow_pte", 3), ("kasan_early_shadow_pmd", 2),
                            ("kasan_early_shadow_pud", 1), ("kasan_early_shadow_p4d", 0)):
            phys = ka.tables.get(name)
            if phys is None or level <= r.top_level:
                break
            try:
                rows = np.frombuffer(kernel.target.read_phys(phys, E * 8), dtype="<u8")
            except TargetFault:
                break
            d = rows[0]
            if not (rows == d).all():
                break
            typ = int(d) & 3
            if level == 3:
                if typ != 3:
                    break
                out[phys] = (level, rows, int(r.descs_to_phys(rows[:1])[0]), int(d & ~oa_mask), 0)
            else:
                if typ != 3 or below is None or int(r.descs_to_phys(rows[:1])[0]) != below:
                    break
                _, _, pa, attr, inh = out[below]
                out[phys] = (level, rows, pa, attr, inh | (int(d) >> 59) & 0xF)
            below = phys
        return out

    def runs(self, child_pa, child_va, child_inh, span) -> np.ndarray:
        """One PTE-level ``rep`` run per entry that references an early
        shadow table (note_kasan_page_table(): note_page_pte() with
        kasan_early_shadow_pte[0])."""
        runs = np.empty(len(child_pa), RUN_DTYPE)
        runs["va"] = child_va
        runs["size"] = span
        runs["level"] = 3
        runs["cls"] = CLS_LEAF
        runs["rep"] = 1
        for pa in np.unique(child_pa).tolist():
            sel = child_pa == np.uint64(pa)
            _, _, page, attr, inh = self.tables[pa]
            runs["pa"][sel] = page
            runs["attr"][sel] = attr
            runs["inherit"][sel] = child_inh[sel] | np.uint8(inh)
            va0 = int(child_va[sel].min())
            if va0 < self.reached.get(pa, U64):
                self.reached[pa] = va0
        return runs

    def record(self, tables: list, edges: list, kept_dense: Optional[list]) -> None:
        """Each early shadow table reached, once, with the entries of the
        early tables above it among its parents."""
        E = self.entries
        by_level = sorted(self.tables.items(), key=lambda kv: kv[1][0])
        for phys, (level, rows, _, _, _) in by_level:  # top level first
            if phys not in self.reached:
                continue
            va = self.reached[phys]
            tables.append((np.array([phys], np.uint64), np.array([level], np.int8),
                                np.array([va], np.uint64), np.array([E], np.int64),
                                np.array([np.count_nonzero(rows & np.uint64(1))], np.int64)))
            if kept_dense is not None:
                kept_dense.append((np.array([phys], np.uint64), rows[None, :]))
            child = next((c for c, v in self.tables.items() if v[0] == level + 1), None)
            if child is not None and level < 3:
                edges.append((np.full(E, child, np.uint64), np.full(E, phys, np.uint64),
                                   np.arange(E, dtype=np.int64)))
                if va < self.reached.get(child, U64):
                    self.reached[child] = va
