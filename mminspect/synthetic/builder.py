"""Build synthetic arm64 kernel page tables in a synthetic physical memory.

The :class:`Builder` places ``swapper_pg_dir`` in a kernel-image area, allocates
table pages from pools (RAM top-down like memblock, or static pages inside the image
like ``bm_pte``), and encodes descriptors with :class:`~.encode.Encoder`.  Every
decision is recorded as ground truth (:class:`TableRecord`, :class:`LeafRun`,
:class:`Anomaly`); :meth:`Builder.finish` returns a :class:`BuiltKernel` that
answers "what does this VA map to" from that record alone, never by decoding
descriptors.

Scaling: descriptors are written a whole table at a time with numpy, and
:meth:`Builder.map_uniform` creates page-granular linear maps whose PTE tables are
*not* materialised: they are stored as one extent and generated on the fly by the
vmcore writer (so a 1 TiB linear map costs a few kilobytes until it is written).
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

from .encode import (
    PAGE_KERNEL,
    PMD_TYPE_TABLE,
    PTE_CONT,
    TABLE_KERNEL,
    Encoder,
    Prot,
    TableProt,
)
from .anomalies import InjectAnomalies
from .records import (  # noqa: F401 (their names, importable here as before)
    AUTO,
    Anomaly,
    Leaf,
    LeafKind,
    LeafRun,
    RootRecord,
    Status,
    TableRecord,
    Translation,
)
from .regime import U64, Regime, page_offset_for
from .tables import _Extent, _Pool, _Table

# --------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------


class Builder(InjectAnomalies):
    """Assemble a synthetic kernel: RAM, a kernel image, roots, mappings, oddities.

    :param regime: the translation regime.
    :param ram: RAM banks as ``(start, size)``; page aligned.
    :param image_pa: PA of the kernel image (``_text``); default: 2 MiB into bank 0,
        rounded to 2 MiB.
    :param image_size: bytes of image to model (``swapper_pg_dir`` and static tables
        live inside it).
    :param table_pool: ``(start, end)`` PA range the ``"ram"`` table pool allocates
        from, top-down; default: the top eighth of the highest RAM bank (at least 64
        pages, at most 1 GiB).
    :param osrelease: OSRELEASE for VMCOREINFO.
    """

    def __init__(
        self,
        regime: Regime,
        ram: Sequence[tuple[int, int]] = ((0x4000_0000, 1 << 30),),
        *,
        image_pa: int | None = None,
        image_size: int | None = None,
        table_pool: tuple[int, int] | None = None,
        osrelease: str = "6.12.0-mminspect-synthetic",
    ):
        r = self.regime = regime
        self.enc = Encoder(regime)
        self.page = ps = regime.page_size
        self.osrelease = osrelease
        self.ram = sorted((int(s), int(n)) for s, n in ram)
        for s, n in self.ram:
            if s % ps or n % ps or n <= 0:
                raise ValueError(f"RAM bank {s:#x}+{n:#x} not page aligned")
            if s + n > regime.max_pa:
                raise ValueError(f"RAM bank {s:#x}+{n:#x} beyond {regime.pa_bits}-bit PA")
        for (s0, n0), (s1, _) in zip(self.ram, self.ram[1:]):
            if s0 + n0 > s1:
                raise ValueError("RAM banks overlap")

        # PHYS_OFFSET (memstart_addr, s64)
        if regime.phys_offset is None:
            po = self.ram[0][0] - self.ram[0][0] % regime.memstart_align
            if regime.va_bits == 52 and regime.vabits_actual != 52:
                po -= (page_offset_for(regime.vabits_actual) - page_offset_for(52)) & U64
        else:
            po = regime.phys_offset
        self.phys_offset = po
        for s, n in self.ram:
            lo = self.phys_to_virt(s)
            if not (regime.linear_start <= lo and (s + n - po) <= (regime.page_end - regime.page_offset) & U64
                    and lo + n <= regime.page_end):
                raise ValueError(
                    f"RAM bank {s:#x}+{n:#x} is outside the linear map with PHYS_OFFSET {po:#x}"
                )

        # kernel image
        if image_size is None:
            image_size = max(8 << 20, 64 * ps)
        if image_pa is None:
            base = self.ram[0][0]
            image_pa = (base + (2 << 20) + (2 << 20) - 1) & ~((2 << 20) - 1)
        if image_pa % ps or image_size % ps or not self.in_ram(image_pa, image_size):
            raise ValueError("kernel image must be page aligned and inside RAM")
        self.image_pa, self.image_size = image_pa, image_size
        self.kimage_va = (regime.kimage_vaddr + regime.kaslr_offset) & U64
        self.kimage_voffset = (self.kimage_va - image_pa) & U64

        # state
        self._pages: dict[int, np.ndarray] = {}          # page PA -> uint64 array
        self._tables: dict[int, _Table] = {}             # table PA -> table
        self._child: dict[int, int] = {}                 # entry PA -> child table PA
        self._extents: list[_Extent] = []
        self._extent_starts: list[int] = []
        self._ext_parent: dict[int, list[tuple[int, int, _Extent, int]]] = {}
        self._runs: list[LeafRun] = []
        self._anomalies: list[Anomaly] = []
        self._links: list[tuple[str, int, int, int]] = []   # (root, va_base, level, target)
        self._omitted: dict[int, str] = {}                # page PA -> mode
        self._roots: dict[str, RootRecord] = {}
        self._root_table: dict[str, _Table] = {}
        self._symbols: dict[str, int] = {}

        # pools
        self._pools: dict[str, _Pool] = {}
        if table_pool is None:
            s, n = self.ram[-1]
            take = min(max(n // 8, 64 * ps), n, 1 << 30)
            take -= take % ps
            table_pool = (s + n - take, s + n)
        self._pools["ram"] = _Pool("ram", table_pool[0], table_pool[1], ps, down=True)
        # image layout (6.12 order): idmap_pg_dir, tramp_pg_dir, reserved_pg_dir,
        # swapper_pg_dir, then static tables (bm_pud/bm_pmd/bm_pte, kept init_pg_dir pages)
        half = (image_size // 2) - (image_size // 2) % ps
        for i, sym in enumerate(("idmap_pg_dir", "tramp_pg_dir", "reserved_pg_dir", "swapper_pg_dir")):
            self._symbols[sym] = self.kimage_va + half + i * ps
        self._pools["image"] = _Pool("image", image_pa + half + 4 * ps, image_pa + image_size, ps, down=False)
        self._slab_page: int | None = None
        self._slab_next = 0

        sw_pa = image_pa + half + 3 * ps
        t = self._new_table_at(sw_pa, regime.start_level, "swapper", regime.kernel_va_min, "image",
                               "swapper_pg_dir", n=regime.root_entries)
        self._root_table["swapper"] = t
        self._roots["swapper"] = RootRecord("swapper", sw_pa, self._symbols["swapper_pg_dir"], 1,
                                            regime.root_entries, ps)
        # the other image pgds exist as (empty) pages in the dump
        for sym in ("idmap_pg_dir", "tramp_pg_dir", "reserved_pg_dir"):
            self._page_array(self._symbols[sym] - self.kimage_voffset)

    # ---- address helpers ------------------------------------------------------------
    def phys_to_virt(self, pa: int) -> int:
        """Linear-map VA: ``(pa - PHYS_OFFSET) | PAGE_OFFSET``."""
        return ((pa - self.phys_offset) + self.regime.page_offset) & U64

    def virt_to_phys(self, va: int) -> int:
        return ((va - self.regime.page_offset) + self.phys_offset) & U64

    def kimg_to_phys(self, va: int) -> int:
        return (va - self.kimage_voffset) & U64

    def in_ram(self, pa: int, size: int = 1) -> bool:
        for s, n in self.ram:
            if s <= pa and pa + size <= s + n:
                return True
        return False

    @property
    def swapper_pg_dir(self) -> int:
        return self._symbols["swapper_pg_dir"]

    def symbol(self, name: str) -> int:
        return self._symbols[name]

    def add_symbol(self, name: str, va: int) -> None:
        self._symbols[name] = va

    # ---- pages and tables -----------------------------------------------------------
    def _page_array(self, page_pa: int) -> np.ndarray:
        arr = self._pages.get(page_pa)
        if arr is None:
            if page_pa % self.page:
                raise ValueError("page PA not aligned")
            arr = self._pages[page_pa] = np.zeros(self.page // 8, dtype=np.uint64)
        return arr

    def add_pool(self, name: str, start: int, end: int, down: bool = True) -> None:
        """Register another table pool (e.g. tables in a hot-added memory block)."""
        if not self.in_ram(start, end - start):
            raise ValueError("pool outside RAM")
        self._pools[name] = _Pool(name, start, end, self.page, down)

    def alloc_page(self, pool: str = "ram") -> int:
        return self._pools[pool].alloc()

    def _new_table_at(self, pa, level, root, va_start, pool, symbol=None, n=None) -> _Table:
        r = self.regime
        n = r.entries_per_table if n is None else n
        page_pa = pa - pa % self.page
        arr = self._page_array(page_pa)
        off = (pa - page_pa) // 8
        if off + n > len(arr):
            raise ValueError("table crosses a page")
        t = _Table(pa, level, root, va_start, pool, symbol, n, arr[off:off + n])
        if pa in self._tables:
            raise ValueError(f"table already at {pa:#x}")
        self._tables[pa] = t
        return t

    def _alloc_table(self, level, root, va_start, pool) -> _Table:
        pa = self._pools[pool].alloc()
        return self._new_table_at(pa, level, root, va_start, pool)

    def _table(self, pa: int) -> _Table:
        t = self._tables.get(pa)
        if t is None:
            t = self._materialise(pa)
        return t

    def _extent_of(self, pa: int) -> tuple[_Extent, int] | None:
        i = bisect.bisect_right(self._extent_starts, pa) - 1
        if i >= 0:
            e = self._extents[i]
            k, rem = divmod(pa - e.table_pa0, self.page)
            if rem == 0 and 0 <= k < e.n_tables:
                return e, (e.n_tables - 1 - k if e.reverse else k)
        return None

    def _ext_pa(self, e: _Extent, k: int) -> int:
        """PA of the table with VA index ``k`` of an extent."""
        return e.table_pa0 + ((e.n_tables - 1 - k) if e.reverse else k) * self.page

    def _extent_pages(self, e: _Extent, j0: int, n: int) -> np.ndarray:
        """Contents of the extent's pages ``j0 .. j0 + n - 1`` in PA order."""
        if not e.reverse:
            return self._extent_table_content(e, j0, n)
        return self._extent_table_content(e, e.n_tables - j0 - n, n)[::-1]

    def _extent_table_content(self, e: _Extent, k0: int, n: int) -> np.ndarray:
        E = self.regime.entries_per_table
        step = self.page
        oa0 = e.pa0 + k0 * E * step
        return self.enc.leaves_linear(oa0, step, n * E, e.attr_bits).reshape(n, E)

    def _materialise(self, pa: int) -> _Table:
        found = self._extent_of(pa)
        if found is None:
            raise KeyError(f"no table at {pa:#x}")
        e, k = found
        r = self.regime
        arr = self._page_array(pa)
        arr[:] = self._extent_table_content(e, k, 1)[0]
        t = _Table(pa, 3, e.root, e.va0 + k * r.table_span(3), "uniform", None, r.entries_per_table, arr)
        self._tables[pa] = t
        t.parents.append(e.parents_of[k] if isinstance(e.parents_of, list) else e.parents_of(k))
        return t

    def _child_of(self, table: _Table, idx: int) -> int | None:
        c = self._child.get(table.pa + 8 * idx)
        if c is not None:
            return c
        for i0, n, e, k0 in self._ext_parent.get(table.pa, ()):
            if i0 <= idx < i0 + n:
                return self._ext_pa(e, k0 + idx - i0)
        return None

    def _check_root_va(self, root: str, va: int, size: int) -> None:
        r = self.regime
        rr = self._roots[root]
        end = va + size
        if rr.ttbr == 1:
            if not (r.hw_kernel_va_min <= va and end <= 1 << 64):
                raise ValueError(f"{va:#x}+{size:#x} not a TTBR1 VA for {r.name}")
        else:
            if not (0 <= va and end <= r.hw_user_va_limit):
                raise ValueError(f"{va:#x}+{size:#x} not a TTBR0 VA for {r.name}")

    def ensure_table(self, root: str, va: int, level: int, *, pool: str = "ram",
                     table_prot: TableProt = TABLE_KERNEL, symbol: str | None = None) -> int:
        """Return the PA of the table at ``level`` covering ``va``, creating the path.

        Newly created tables come from ``pool``; ``symbol`` names the table created at
        ``level`` (e.g. ``"bm_pte"``) if it did not exist yet.
        """
        return self._ensure(root, va, level, pool, table_prot, symbol).pa

    def _ensure(self, root, va, level, pool, tprot, symbol=None) -> _Table:
        r = self.regime
        t = self._root_table[root]
        if level < r.start_level or level > 3:
            raise ValueError(f"level {level} not walked in {r.name}")
        for lv in range(r.start_level, level):
            idx = r.index(va, lv)
            c = self._child_of(t, idx)
            if c is None:
                if t.arr[idx] != 0:
                    raise ValueError(
                        f"entry {idx} of level-{lv} table {t.pa:#x} is a leaf or raw entry; "
                        f"cannot create a table under it (VA {va:#x})"
                    )
                span = r.entry_span(lv)
                child = self._alloc_table(lv + 1, root, (va - va % span) & U64, pool)
                if symbol is not None and lv + 1 == level:
                    child.symbol = symbol
                    self._symbols[symbol] = self.phys_to_virt(child.pa) if pool != "image" else (
                        child.pa + self.kimage_voffset) & U64
                t.arr[idx] = self.enc.table(child.pa, tprot)
                self._child[t.pa + 8 * idx] = child.pa
                child.parents.append((t.pa, idx))
                c = child.pa
            t = self._table(c)
            if t.level != lv + 1:
                raise ValueError(f"path for {va:#x} crosses a loop or a level-confused link")
        return t

    # ---- roots ----------------------------------------------------------------------
    def add_root(self, name: str, *, ttbr: int = 0, pa: int | None = None, slab: bool | None = None) -> int:
        """Create a second root (an ``efi_mm``-style pgd for TTBR0 VAs).

        Its size is ``regime.pgd_bytes``; when that is less than a page (e.g. 128 bytes
        with 4K/52 LPA2, 16 bytes with 16K/48) it is a slab object, placed at a
        non-zero offset inside a page (not page aligned).  Returns its PA; its VA
        (``RootRecord.va``) is the linear-map alias, which is what ``mm->pgd`` holds.
        """
        r = self.regime
        if name in self._roots:
            raise ValueError(f"root {name} exists")
        size = r.pgd_bytes
        n = size // 8
        if pa is None:
            if slab is None:
                slab = size < self.page
            if slab:
                pa = self._slab_alloc(size)
            else:
                pa = self._pools["ram"].alloc()
        va_start = r.kernel_va_min if ttbr == 1 else 0
        t = self._new_table_at(pa, r.start_level, name, va_start, "slab" if pa % self.page else "ram",
                               n=r.root_entries)
        self._root_table[name] = t
        self._roots[name] = RootRecord(name, pa, self.phys_to_virt(pa), ttbr, r.root_entries, size)
        return pa

    def _slab_alloc(self, size: int) -> int:
        if self._slab_page is None or self._slab_next + size > self.page:
            self._slab_page = self._pools["ram"].alloc()
            # leave the first object slot free so the object is not page aligned
            self._slab_next = size
        pa = self._slab_page + self._slab_next
        self._slab_next += size
        return pa

    def root(self, name: str) -> RootRecord:
        return self._roots[name]

    # ---- mappings ---------------------------------------------------------------------
    def _unit(self, kind: LeafKind) -> int:
        r = self.regime
        size = r.entry_span(kind.level)
        if kind == LeafKind.CONT_PAGE:
            size *= r.cont_ptes
        elif kind == LeafKind.CONT_PMD:
            size *= r.cont_pmds
        return size

    def _kind_allowed(self, kind: LeafKind) -> bool:
        r = self.regime
        lv = kind.level
        if lv == 3:
            return True
        return lv in r.block_levels

    def _plan(self, va, pa, size, kind, no_block, no_cont) -> list[tuple[int, int, int, LeafKind]]:
        if kind != AUTO:
            kind = LeafKind(kind)
            if not self._kind_allowed(kind):
                raise ValueError(f"{kind.value} mappings are not allowed in {self.regime.name}")
            u = self._unit(kind)
            if va % u or pa % u or size % u:
                raise ValueError(f"{kind.value} mapping {va:#x}->{pa:#x}+{size:#x} not aligned to {u:#x}")
            return [(va, pa, size, kind)]
        cands = [LeafKind.PUD, LeafKind.CONT_PMD, LeafKind.PMD, LeafKind.CONT_PAGE, LeafKind.PAGE]
        cands = [k for k in cands if self._kind_allowed(k)
                 and not (no_block and k.level < 3) and not (no_cont and k.cont)]
        units = [self._unit(k) for k in cands]
        out: list[tuple[int, int, int, LeafKind]] = []
        p, q, rem = va, pa, size
        while rem:
            for i, (k, u) in enumerate(zip(cands, units)):
                if p % u == 0 and q % u == 0 and rem >= u:
                    n = rem // u
                    if i > 0:
                        big = units[i - 1]
                        if p % big:
                            n = min(n, (big - p % big) // u)
                    take = n * u
                    if out and out[-1][3] == k and out[-1][0] + out[-1][2] == p:
                        v0, p0, s0, _ = out[-1]
                        out[-1] = (v0, p0, s0 + take, k)
                    else:
                        out.append((p, q, take, k))
                    p, q, rem = p + take, q + take, rem - take
                    break
            else:
                raise ValueError(f"mapping {va:#x}->{pa:#x}+{size:#x} not page aligned")
        return out

    def map(
        self,
        va: int,
        pa: int,
        size: int,
        kind: str | LeafKind = AUTO,
        prot: Prot = PAGE_KERNEL,
        *,
        table_prot: TableProt = TABLE_KERNEL,
        root: str = "swapper",
        pool: str = "ram",
        no_block: bool = False,
        no_cont: bool = False,
        label: str = "",
    ) -> list[LeafRun]:
        """Map ``[va, va+size)`` to ``[pa, pa+size)``.

        ``kind`` is one of :class:`LeafKind` (``page``, ``cont_page``, ``pmd``,
        ``cont_pmd``, ``pud``) or ``"auto"``, which picks the largest legal mapping at
        each step like ``__create_pgd_mapping`` (``no_block``/``no_cont`` act like
        ``NO_BLOCK_MAPPINGS``/``NO_CONT_MAPPINGS``).  Tables on the path come from
        ``pool`` and get ``table_prot`` in their descriptors.  Existing non-zero entries
        are never overwritten.
        """
        va &= U64
        self._check_root_va(root, va, size)
        if size <= 0:
            raise ValueError("empty mapping")
        runs = []
        for v, p, s, k in self._plan(va, pa, size, kind, no_block, no_cont):
            runs.append(self._emit(root, v, p, s, k, prot, table_prot, pool, label))
        return runs

    def _emit(self, root, va, pa, size, kind: LeafKind, prot, tprot, pool, label) -> LeafRun:
        r = self.regime
        lv = kind.level
        leaf = r.entry_span(lv)
        self.enc.check_oa(pa, leaf)
        if pa + size > r.max_pa:
            raise ValueError("mapping beyond the PA size")
        attr = self.enc.leaf_type(lv) | prot.bits(r) | (PTE_CONT if kind.cont else 0)
        tspan = r.table_span(lv) if lv != r.start_level else None
        v, p, rem = va, pa, size
        while rem:
            t = self._ensure(root, v, lv, pool, tprot)
            idx = r.index(v, lv)
            n = min(rem // leaf, t.n - idx)
            if tspan is not None:
                n = min(n, (tspan - (v % tspan)) // leaf)
            sl = t.arr[idx:idx + n]
            if np.any(sl):
                raise ValueError(f"mapping {v:#x} overlaps existing entries in table {t.pa:#x}")
            sl[:] = self.enc.leaves_linear(p, leaf, n, attr)
            v, p, rem = v + n * leaf, p + n * leaf, rem - n * leaf
        run = LeafRun(root, va, pa, size // leaf, lv, kind, prot, attr, leaf, label)
        self._runs.append(run)
        return run

    def map_uniform(self, va: int, pa: int, size: int, prot: Prot = PAGE_KERNEL, *,
                    table_prot: TableProt = TABLE_KERNEL, root: str = "swapper",
                    pool: str = "ram", label: str = "linear") -> LeafRun:
        """Fast path: page-granular map whose PTE tables are generated lazily.

        ``va``, ``pa`` and ``size`` must be multiples of the span of a PTE table (2 MiB
        with 4K pages, 32 MiB with 16K, 512 MiB with 64K).  The PTE tables are
        allocated contiguously from ``pool`` and only their parents are written now;
        the vmcore writer streams their content.
        """
        r = self.regime
        va &= U64
        self._check_root_va(root, va, size)
        span = r.table_span(3)
        if r.start_level == 3:
            raise ValueError("no PTE tables below the root")
        if va % span or pa % span or size % span or size <= 0:
            raise ValueError(f"map_uniform needs {span:#x}-aligned va, pa and size")
        self.enc.check_oa(pa, self.page)
        n_tables = size // span
        t0 = self._pools[pool].alloc(n_tables)
        if self._pools[pool].down:
            pass  # contiguous block [t0, t0 + n*page)
        attr = self.enc.leaf_type(3) | prot.bits(r)
        e = _Extent(t0, n_tables, va, pa, attr, root)
        parents: list[tuple[int, int]] = []
        k = 0
        while k < n_tables:
            v = va + k * span
            pt = self._ensure(root, v, 2, pool, table_prot)
            idx = r.index(v, 2)
            n = min(n_tables - k, pt.n - idx)
            sl = pt.arr[idx:idx + n]
            if np.any(sl):
                raise ValueError(f"map_uniform overlaps existing entries at {v:#x}")
            sl[:] = self.enc.oa_vec(np.uint64(t0 + k * self.page)
                                    + np.arange(n, dtype=np.uint64) * np.uint64(self.page)) \
                | np.uint64(PMD_TYPE_TABLE | table_prot.bits())
            self._ext_parent.setdefault(pt.pa, []).append((idx, n, e, k))
            if n_tables <= 4096:
                parents.extend((pt.pa, idx + j) for j in range(n))
            k += n
        if n_tables <= 4096:
            e.parents_of = parents
        else:
            ranges = sorted((k0, n, ptpa, i0) for ptpa, lst in self._ext_parent.items()
                            for (i0, n, ee, k0) in lst if ee is e)
            k0s = [x[0] for x in ranges]

            def parents_of(kk, ranges=ranges, k0s=k0s):
                k0, n, ptpa, i0 = ranges[bisect.bisect_right(k0s, kk) - 1]
                if not k0 <= kk < k0 + n:
                    raise KeyError(kk)
                return (ptpa, i0 + kk - k0)
            e.parents_of = parents_of
        i = bisect.bisect_right(self._extent_starts, t0)
        self._extent_starts.insert(i, t0)
        self._extents.insert(i, e)
        run = LeafRun(root, va, pa, size // self.page, 3, LeafKind.PAGE, prot, attr, self.page, label)
        self._runs.append(run)
        return run

    def map_uniform_topdown(self, va: int, pa: int, size: int, prot: Prot = PAGE_KERNEL, *,
                            table_prot: TableProt = TABLE_KERNEL, root: str = "swapper",
                            pool: str = "ram", label: str = "linear") -> LeafRun:
        """Like :meth:`map_uniform`, with the tables placed the way
        ``__create_pgd_mapping`` gets them from memblock at boot: one at a time,
        top-down, each below the previous. A PMD table is allocated when its
        first entry is needed, then the PTE tables of its entries, so PTE tables
        of consecutive VAs have descending PAs and each PMD table sits just above
        the PTE tables it points to. ``pool`` must allocate top-down.
        """
        r = self.regime
        va &= U64
        self._check_root_va(root, va, size)
        span = r.table_span(3)
        if r.start_level == 3:
            raise ValueError("no PTE tables below the root")
        if va % span or pa % span or size % span or size <= 0:
            raise ValueError(f"map_uniform_topdown needs {span:#x}-aligned va, pa and size")
        if not self._pools[pool].down:
            raise ValueError(f"pool {pool} does not allocate top-down")
        self.enc.check_oa(pa, self.page)
        n_tables = size // span
        attr = self.enc.leaf_type(3) | prot.bits(r)
        k = 0
        while k < n_tables:
            v = va + k * span
            pt = self._ensure(root, v, 2, pool, table_prot)
            idx = r.index(v, 2)
            n = min(n_tables - k, pt.n - idx)
            sl = pt.arr[idx:idx + n]
            if np.any(sl):
                raise ValueError(f"map_uniform_topdown overlaps existing entries at {v:#x}")
            t0 = self._pools[pool].alloc(n)
            e = _Extent(t0, n, v, pa + k * span, attr, root, reverse=True)
            pas = np.uint64(t0) + (np.uint64(n - 1) - np.arange(n, dtype=np.uint64)) * np.uint64(self.page)
            sl[:] = self.enc.oa_vec(pas) | np.uint64(PMD_TYPE_TABLE | table_prot.bits())
            self._ext_parent.setdefault(pt.pa, []).append((idx, n, e, 0))
            e.parents_of = [(pt.pa, idx + j) for j in range(n)]
            i = bisect.bisect_right(self._extent_starts, t0)
            self._extent_starts.insert(i, t0)
            self._extents.insert(i, e)
            k += n
        run = LeafRun(root, va, pa, size // self.page, 3, LeafKind.PAGE, prot, attr, self.page, label)
        self._runs.append(run)
        return run

    # ---- data ------------------------------------------------------------------------
    def write_phys(self, pa: int, data: bytes) -> None:
        """Put bytes in physical memory (they end up in the dump)."""
        if not self.in_ram(pa, len(data)):
            raise ValueError("write outside RAM")
        pos = 0
        while pos < len(data):
            a = pa + pos
            page_pa = a - a % self.page
            arr = self._page_array(page_pa).view(np.uint8)
            off = a - page_pa
            n = min(len(data) - pos, self.page - off)
            arr[off:off + n] = np.frombuffer(data[pos:pos + n], dtype=np.uint8)
            pos += n

    def fill_pattern(self, pa: int, size: int | None = None) -> None:
        """Fill pages with their own PA as little-endian u64 words (``word i = pa + 8*i``)."""
        size = self.page if size is None else size
        for page_pa in range(pa - pa % self.page, pa + size, self.page):
            arr = self._page_array(page_pa)
            arr[:] = np.uint64(page_pa) + np.arange(len(arr), dtype=np.uint64) * np.uint64(8)

    # ---- oddities ----------------------------------------------------------------------
    def table_at(self, root: str, va: int, level: int) -> int | None:
        """PA of the existing level-``level`` table on the path for ``va`` (or None)."""
        r = self.regime
        va &= U64
        t = self._root_table[root]
        for lv in range(r.start_level, level):
            c = self._child_of(t, r.index(va, lv))
            if c is None:
                return None
            t = self._table(c)
        return t.pa

    # ---- finish ------------------------------------------------------------------------
    def finish(self) -> "BuiltKernel":
        return BuiltKernel(self)


from .built import BuiltKernel  # noqa: E402,F401 (finish() returns one; it reads a Builder)
