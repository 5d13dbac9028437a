"""A finished synthetic kernel: memory contents plus ground truth
(:class:`BuiltKernel`, what :meth:`~.builder.Builder.finish` returns)."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .records import Anomaly, Leaf, LeafRun, Status, TableRecord, Translation
from .regime import U64

if TYPE_CHECKING:
    from .builder import Builder

# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


class BuiltKernel:
    """A finished synthetic kernel: memory contents plus ground truth.

    Attributes: ``regime``, ``ram``, ``phys_offset``, ``kimage_voffset``,
    ``swapper_pg_dir`` (kimage VA), ``roots`` (name -> :class:`RootRecord`),
    ``leaf_runs`` (including aliases through shared tables), ``anomalies``,
    ``symbols``.  Tables: :meth:`tables` (iterator of :class:`TableRecord`),
    :meth:`n_tables`.  Queries: :meth:`lookup`.
    """

    def __init__(self, b: Builder):
        self._b = b
        self.regime = b.regime
        self.encoder = b.enc
        self.page_size = b.page
        self.ram = list(b.ram)
        self.phys_offset = b.phys_offset
        self.kimage_voffset = b.kimage_voffset
        self.kimage_va = b.kimage_va
        self.image_pa, self.image_size = b.image_pa, b.image_size
        self.kaslr_offset = b.regime.kaslr_offset
        self.osrelease = b.osrelease
        self.swapper_pg_dir = b.swapper_pg_dir
        self.roots = dict(b._roots)
        self.symbols = dict(b._symbols)
        self.anomalies = list(b._anomalies)
        self.omitted = dict(b._omitted)
        self.regions: list = []          # filled by make_sample (sample.Region)
        self.pattern_pages: list[int] = []
        runs = list(b._runs)
        runs.extend(self._aliases(runs))
        self.leaf_runs = runs
        self._index: dict[str, tuple[list[int], list[LeafRun]]] = {}
        for root in self.roots:
            rs = sorted((x for x in runs if x.root == root), key=lambda x: x.va)
            self._index[root] = ([x.va for x in rs], rs)
        self._anom_index: dict[str, list[Anomaly]] = {}
        for a in self.anomalies:
            if a.kind != "shared":
                self._anom_index.setdefault(a.root, []).append(a)

    # -- helpers
    def leaf_size(self, level: int) -> int:
        return self.regime.entry_span(level)

    def phys_to_virt(self, pa: int) -> int:
        return self._b.phys_to_virt(pa)

    def in_ram(self, pa: int, size: int = 1) -> bool:
        return self._b.in_ram(pa, size)

    def _aliases(self, runs: list[LeafRun]) -> list[LeafRun]:
        b = self._b
        r = self.regime
        out: list[LeafRun] = []
        for root, base, level, target_pa in b._links:
            t = b._tables[target_pa]
            src0 = t.va_start
            src1 = src0 + r.table_span(t.level)
            delta = base - src0
            for x in runs:
                if x.root != t.root or x.alias_of is not None:
                    continue
                ls = r.entry_span(x.level)
                x0, x1 = x.va, x.va + x.count * ls
                lo, hi = max(x0, src0), min(x1, src1)
                if lo >= hi:
                    continue
                out.append(LeafRun(root, (lo + delta) & U64, x.pa + (lo - x0), (hi - lo) // ls, x.level,
                                   x.kind, x.prot, x.attr_bits, ls, x.label, alias_of=lo))
        return out

    def n_tables(self) -> int:
        b = self._b
        n = len(b._tables)
        for e in b._extents:
            n += e.n_tables
            n -= sum(1 for k in range(e.n_tables) if (e.table_pa0 + k * b.page) in b._tables) \
                if e.n_tables <= 4096 else 0
        return n

    def tables(self) -> Iterator[TableRecord]:
        """Every table page (explicit and lazily generated), sorted by nothing in
        particular; slab pgds included."""
        b = self._b
        r = self.regime
        for t in b._tables.values():
            yield self._record(t.pa, t.level, t.n, t.root, t.va_start, tuple(t.parents), t.pool, t.symbol)
        for e in b._extents:
            span = r.table_span(3)
            for k in range(e.n_tables):
                pa = b._ext_pa(e, k)
                if pa in b._tables:
                    continue
                par = e.parents_of[k] if isinstance(e.parents_of, list) else e.parents_of(k)
                yield self._record(pa, 3, r.entries_per_table, e.root, e.va0 + k * span, (par,),
                                   "uniform", None)

    def _record(self, pa, level, n, root, va_start, parents, pool, symbol) -> TableRecord:
        r = self.regime
        page_pa = pa - pa % self.page_size
        mode = self.omitted.get(page_pa)
        if level == r.start_level:
            span = r.table_span(level) if root == "swapper" or self.roots[root].ttbr == 1 else r.user_va_limit
            end = va_start + span
        else:
            end = va_start + r.table_span(level)
        return TableRecord(pa, level, r.level_name(level), n, root, va_start, end, parents, pool,
                           symbol, mode is None, mode)

    def table_map(self) -> dict[int, TableRecord]:
        return {t.pa: t for t in self.tables()}

    # -- memory
    def read_phys(self, pa: int, size: int) -> bytes:
        """Bytes of synthetic physical memory (zeros where nothing was written)."""
        b = self._b
        out = bytearray()
        while size > 0:
            page_pa = pa - pa % b.page
            off = pa - page_pa
            n = min(size, b.page - off)
            arr = b._pages.get(page_pa)
            if arr is not None:
                out += arr.view(np.uint8)[off:off + n].tobytes()
            else:
                f = b._extent_of(page_pa)
                if f is not None:
                    out += b._extent_table_content(f[0], f[1], 1)[0].view(np.uint8)[off:off + n].tobytes()
                else:
                    out += bytes(n)
            pa += n
            size -= n
        return bytes(out)

    # -- ground truth queries
    def find_run(self, root: str, va: int) -> LeafRun | None:
        starts, rs = self._index[root]
        i = bisect.bisect_right(starts, va) - 1
        if i >= 0 and va < rs[i].va_end:
            return rs[i]
        return None

    def lookup(self, root: str, va: int) -> Translation:
        """Ground-truth translation of ``va`` under ``root``."""
        r = self.regime
        va &= U64
        rr = self.roots[root]
        if rr.ttbr == 1 and va < r.kernel_va_min or rr.ttbr == 0 and va >= r.user_va_limit:
            return Translation(Status.UNMAPPED, dump_view="unmapped")
        for a in self._anom_index.get(root, ()):
            if a.va_start <= va < a.va_end:
                if a.kind == "raw" and a.hw == "unmapped":
                    return Translation(Status.UNMAPPED, dump_view=self._dump_view(root, va, "unmapped"),
                                       anomaly=a)
                if a.kind == "table_outside_ram":
                    return Translation(Status.UNREADABLE, dump_view=self._dump_view(root, va, "fault"),
                                       anomaly=a)
                return Translation(Status.ANOMALY, dump_view="undefined", anomaly=a)
        x = self.find_run(root, va)
        if x is None:
            return Translation(Status.UNMAPPED, dump_view=self._dump_view(root, va, "unmapped"))
        ls = r.entry_span(x.level)
        i = (va - x.va) // ls
        lva = x.va + i * ls
        lpa = x.pa + i * ls
        desc = self.encoder.oa(lpa) | x.attr_bits
        leaf = Leaf(root, lva, lpa, ls, x.level, x.kind, x.prot, desc, x.label, x.alias_of)
        return Translation(Status.MAPPED, lpa + (va - lva), leaf, self._dump_view(root, va, "mapped"))

    def _dump_view(self, root: str, va: int, default: str) -> str:
        """What a reader of the dump sees on the path: "fault" if a table on it is
        absent from the dump, "unmapped" if it reads as zeros."""
        if not self.omitted:
            return default
        b = self._b
        r = self.regime
        t = b._root_table[root]
        for lv in r.walk_levels:
            mode = self.omitted.get(t.pa - t.pa % b.page)
            if mode == "absent":
                return "fault"
            if mode == "zero":
                return "unmapped"
            if lv == 3:
                break
            c = b._child_of(t, r.index(va, lv))
            if c is None:
                break
            t = b._table(c)
        return default

    def iter_leaves(self, root: str | None = None) -> Iterator[Leaf]:
        """Expand runs into single leaves (beware: huge for big linear maps)."""
        r = self.regime
        for x in self.leaf_runs:
            if root is not None and x.root != root:
                continue
            ls = r.entry_span(x.level)
            for i in range(x.count):
                pa = x.pa + i * ls
                yield Leaf(x.root, x.va + i * ls, pa, ls, x.level, x.kind, x.prot,
                           self.encoder.oa(pa) | x.attr_bits, x.label, x.alias_of)
