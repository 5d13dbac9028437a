"""
Page-table walker
-----------------

One pass over a root's page tables, level by level. Each level's table pages
are read as whole blocks (physically contiguous tables in reads of up to
``MAX_READ``), decoded as ``uint64`` arrays with numpy in cache-sized batches
(``CHUNK_BYTES``), and summarised on the fly: a table whose
entries map one contiguous physical range with identical attributes becomes
one run without touching its entries in Python, and runs are coalesced across
tables. Nothing here creates a Python object per entry, so a 1 TiB
page-granular linear map (half a million PTE tables) costs about what reading
its tables costs.

The result, :class:`Walk`, holds:

- ``runs``: VA-ordered, coalesced ranges, each a leaf mapping (``CLS_LEAF``),
  a hole of empty entries (``CLS_NONE``) or non-zero invalid entries
  (``CLS_INVALID``), at one level, with the raw descriptor attribute bits and
  the table-level PXN/UXN/APTable bits inherited from the path. Leaves join
  when their physical range continues, or when they map the same page over
  and over (``rep``: every page of the run maps ``pa``; the kernel's ptdump
  merges by attributes, so such a run is one line there too);
- ``tables``: every table page, once, with its level, VA span, valid-entry
  count and every parent entry that references it;
- ``problems``: what could not be seen (unreadable tables, loops, tables
  referenced at two levels), each with a reason;
- ``entries`` (``walk(..., keep_entries=True)``): the descriptors of every
  table page read, kept compactly (:class:`TableEntries`), so that a caller
  that needs them (a hot-remove snapshot) does not read the tables again.

The walk never follows a table entry to a page already walked at the same or
a higher level, so it always terminates.

KASAN (generic and software tags) maps every part of its shadow that no real
shadow memory backs through the shared ``kasan_early_shadow_{p4d,pud,pmd,pte}``
tables of the kernel image, all to ``kasan_early_shadow_page``: terabytes of
PTEs through three table pages. As the kernel's ptdump does
(``note_kasan_page_table()``, mm/ptdump.c), the walker does not descend into
them: an entry that references one becomes one PTE-level ``rep`` run of the
early shadow page, and the early tables are read once (checked to be what
mm/kasan/init.c makes of them) and recorded with every entry that references
them.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from mminspect.arch.arm64 import (
    PTE_CONT,
    PTE_PXN,
    PTE_RDONLY,
    PTE_USER,
    PTE_UXN,
    PTDUMP_MASK,
    Regime,
    decode_prot,
)
from mminspect.bits import U64, contains
from mminspect.kernel import Kernel, Root
from mminspect.target.base import TargetFault

__all__ = (
    "CLS_INVALID",
    "CLS_LEAF",
    "CLS_NONE",
    "Mapping",
    "Parent",
    "Problem",
    "TABLE_DTYPE",
    "TableEntries",
    "TablePage",
    "Walk",
    "walk",
)

CLS_NONE = 0
CLS_LEAF = 1
CLS_INVALID = 2

#: Inherited table-descriptor bits, packed from descriptor bits 59..62.
INH_PXN = 1 << 0
INH_UXN = 1 << 1
INH_NOEL0 = 1 << 2
INH_RO = 1 << 3

RUN_DTYPE = np.dtype(
    [
        ("va", np.uint64),
        ("size", np.uint64),
        ("pa", np.uint64),
        ("attr", np.uint64),
        ("level", np.int8),
        ("cls", np.uint8),
        ("inherit", np.uint8),
        ("rep", np.uint8),
    ]
)

#: One table page per element, as :meth:`Walk.table_array` returns them.
TABLE_DTYPE = np.dtype(
    [
        ("phys", np.uint64),
        ("level", np.int8),
        ("va", np.uint64),
        ("span", np.uint64),
        ("entries", np.int64),
        ("valid", np.int64),
        ("parent", np.uint64),
        ("index", np.int64),
        ("nparents", np.int64),
    ]
)

#: A whole table whose entry *i* is ``first + i * step`` (``first == 0``:
#: an empty table), as :class:`TableEntries` keeps it.
UNIFORM_DTYPE = np.dtype([("phys", np.uint64), ("first", np.uint64), ("step", np.uint64), ("count", np.int64)])

#: Bytes of tables decoded per batch: small enough that every numpy pass over
#: a batch stays in the CPU caches (measured on the 1 TiB benchmark: 4 MiB
#: batches decode about 3x faster than 64 MiB ones).
CHUNK_BYTES = 4 << 20
#: Upper bound on the tables of one batch (sub-page pgds are tiny).
CHUNK_TABLES = 16384
#: Occurrences of one level above which tables referenced from many
#: entries are walked once (see ``_Walker._level``).
SHARED_LIMIT = 1 << 16

#: Longest single physical read. drgn returns each read as a new bytes object;
#: reads of 256 KiB .. 4 MiB run at memory speed, 64 MiB ones are about ten
#: times slower (fresh buffers are page-faulted in on every read).
MAX_READ = 1 << 20



@dataclass(frozen=True)
class Parent:
    """An entry that references a table: ``phys`` of the parent table (None
    for the root register) and the entry's index in it."""

    phys: Optional[int]
    index: int


@dataclass(frozen=True)
class TablePage:
    """One page-table page (or the sub-page pgd object of a non-init mm)."""

    phys: int
    level: int
    level_name: str
    va: int
    span: int
    entries: int
    valid: int
    parents: Tuple[Parent, ...]

    def __repr__(self) -> str:
        return (
            f"TablePage({self.level_name} phys={self.phys:#x} va={self.va:#x}+{self.span:#x} "
            f"valid={self.valid}/{self.entries} parents={len(self.parents)})"
        )


@dataclass(frozen=True)
class Mapping:
    """A coalesced leaf range: VA, PA, size, level, and decoded attributes."""

    va: int
    size: int
    pa: int
    level: int
    level_name: str
    desc_attr: int
    inherit: int
    #: every page of the range maps the same ``1 << shift(level)`` bytes at ``pa``
    repeat: bool = False

    @property
    def end(self) -> int:
        return (self.va + self.size) & U64

    @property
    def kind(self) -> str:
        """``page``, ``contiguous``, ``block``, or ``repeated`` (every page of
        the range maps the same page: KASAN's early shadow)."""
        if self.repeat:
            return "repeated"
        if self.desc_attr & 2 == 0:
            return "block"
        return "contiguous" if self.desc_attr & PTE_CONT else "page"

    @property
    def attrs(self) -> str:
        """Attributes as the kernel's ptdump prints them."""
        return " ".join(decode_prot(self.desc_attr & PTDUMP_MASK).split())

    @property
    def effective(self) -> Dict[str, bool]:
        """Permissions after table-level PXN/UXN/APTable inheritance."""
        a = self.desc_attr
        return {
            "user": bool(a & PTE_USER) and not self.inherit & INH_NOEL0,
            "ro": bool(a & PTE_RDONLY) or bool(self.inherit & INH_RO),
            "pxn": bool(a & PTE_PXN) or bool(self.inherit & INH_PXN),
            "uxn": bool(a & PTE_UXN) or bool(self.inherit & INH_UXN),
        }

    def __repr__(self) -> str:
        return (
            f"Mapping({self.va:#x}-{self.end:#x} -> {self.pa:#x} {self.level_name} "
            f"{self.kind} [{self.attrs}])"
        )


@dataclass(frozen=True)
class Problem:
    """Something the walk could not see, with the reason."""

    kind: str  # "unreadable", "loop"
    level: int
    va: int
    phys: int
    parent: Optional[int]
    index: int
    detail: str

    def __str__(self) -> str:
        where = f"parent {self.parent:#x}[{self.index}]" if self.parent is not None else "root"
        return f"{self.kind}: table {self.phys:#x} for VA {self.va:#x} ({where}): {self.detail}"


@dataclass
class TableEntries:
    """The descriptors of every table page a walk read. Uniform and empty
    tables, which the walker recognises anyway, are kept as one
    ``UNIFORM_DTYPE`` row each (a 1 TiB page-granular linear map is half a
    million of them: 12 MiB instead of 2 GiB); the others in full."""

    uniform: np.ndarray
    dense: Dict[int, np.ndarray]

    def __contains__(self, phys: object) -> bool:
        if phys in self.dense:
            return True
        k = int(np.searchsorted(self.uniform["phys"], np.uint64(phys))) if isinstance(phys, int) else -1
        return 0 <= k < len(self.uniform) and int(self.uniform["phys"][k]) == phys

    def __len__(self) -> int:
        return len(self.uniform) + len(self.dense)


@dataclass
class Walk:
    """The records of one walk; see the module docstring."""

    kernel: Kernel
    root: Root
    runs: np.ndarray
    table_phys: np.ndarray
    table_level: np.ndarray
    table_va: np.ndarray
    table_entries: np.ndarray
    table_valid: np.ndarray
    edge_child: np.ndarray
    edge_parent: np.ndarray
    edge_index: np.ndarray
    problems: List[Problem]
    stats: Dict[str, float] = field(default_factory=dict)
    entries: Optional[TableEntries] = None

    @property
    def regime(self) -> Regime:
        return self.kernel.regime

    def mappings(self) -> Iterator[Mapping]:
        """Leaf ranges in VA order."""
        r = self.regime
        for run in self.runs[self.runs["cls"] == CLS_LEAF]:
            lvl = int(run["level"])
            yield Mapping(
                int(run["va"]),
                int(run["size"]),
                int(run["pa"]),
                lvl,
                r.level_name(lvl),
                int(run["attr"]),
                int(run["inherit"]),
                bool(run["rep"]),
            )

    def tables(self) -> Iterator[TablePage]:
        """Every table page once, top level first, then by VA.

        Half a million tables (a 1 TiB page-granular linear map) take about a
        second here, mostly in creating the objects; bulk consumers should use
        :meth:`table_array` and :meth:`parents_of` instead.
        """
        r = self.regime
        order = np.lexsort((self.table_va, self.table_level))
        parents = self._parents()
        names: Dict[int, Tuple[str, int]] = {}
        new = object.__new__
        for phys, lvl, va, n, valid in zip(
            self.table_phys[order].tolist(),
            self.table_level[order].tolist(),
            self.table_va[order].tolist(),
            self.table_entries[order].tolist(),
            self.table_valid[order].tolist(),
        ):
            nm = names.get(lvl)
            if nm is None:
                nm = names[lvl] = (r.level_name(lvl), r.shift(lvl))
            # Equivalent to TablePage(...), without the frozen dataclass's
            # per-field object.__setattr__ (twice as fast).
            tp = new(TablePage)
            tp.__dict__.update(phys=phys, level=lvl, level_name=nm[0], va=va, span=n << nm[1],
                               entries=n, valid=valid, parents=parents.get(phys, ()))
            yield tp

    def parents_of(self, phys: int) -> Tuple[Parent, ...]:
        """Every entry that references the table page at ``phys``."""
        return self._parents().get(phys, ())

    def _parents(self) -> Dict[int, Tuple[Parent, ...]]:
        cache = self.__dict__.get("_parents_cache")
        if cache is None:
            cache = {}
            new = object.__new__
            for c, p, i in zip(self.edge_child.tolist(), self.edge_parent.tolist(), self.edge_index.tolist()):
                o = new(Parent)
                d = o.__dict__
                d["phys"] = None if p == U64 else p
                d["index"] = i
                t = cache.get(c)
                cache[c] = (o,) if t is None else t + (o,)
            self.__dict__["_parents_cache"] = cache
        return cache

    def table_array(self) -> np.ndarray:
        """Every table page once as a structured array (``TABLE_DTYPE``), in
        :meth:`tables` order: ``phys``, ``level``, ``va``, ``span``,
        ``entries``, ``valid``, the first parent entry (``parent``, the
        parent table's PA or 2**64-1 for the root register, and ``index``)
        and the number of parents (``nparents``). No Python object per table:
        this is what a classifier of half a million tables should iterate."""
        r = self.regime
        order = np.lexsort((self.table_va, self.table_level))
        n = len(order)
        out = np.empty(n, TABLE_DTYPE)
        out["phys"] = self.table_phys[order]
        lvl = self.table_level[order]
        out["level"] = lvl
        out["va"] = self.table_va[order]
        ent = self.table_entries[order]
        out["entries"] = ent
        shifts = np.zeros(len(lvl), dtype=np.uint64)
        for L in np.unique(lvl).tolist():
            shifts[lvl == L] = r.shift(L)
        out["span"] = ent.astype(np.uint64) << shifts
        out["valid"] = self.table_valid[order]
        # First parent per child (edges keep walk order), and parent counts.
        ec = self.edge_child
        es = np.argsort(ec, kind="stable")
        sc = ec[es]
        head = np.ones(len(sc), dtype=bool)
        head[1:] = sc[1:] != sc[:-1]
        uc = sc[head]
        counts = np.diff(np.append(np.nonzero(head)[0], len(sc)))
        pos = np.searchsorted(uc, out["phys"])
        pos = np.minimum(pos, max(len(uc) - 1, 0))
        has = (uc[pos] == out["phys"]) if len(uc) else np.zeros(n, bool)
        first = es[head][pos] if len(uc) else np.zeros(n, np.int64)
        out["parent"] = np.where(has, self.edge_parent[first] if len(uc) else 0, np.uint64(U64))
        out["index"] = np.where(has, self.edge_index[first] if len(uc) else 0, -1)
        out["nparents"] = np.where(has, counts[pos] if len(uc) else 0, 0)
        return out

    def translate(self, va: int) -> Optional[int]:
        """The PA a VA maps to according to this walk, or None."""
        runs = self.runs
        k = int(np.searchsorted(runs["va"], np.uint64(va), side="right")) - 1
        if k < 0:
            return None
        run = runs[k]
        off = (va - int(run["va"])) & U64
        if off >= int(run["size"]) or run["cls"] != CLS_LEAF:
            return None
        if run["rep"]:
            return int(run["pa"]) + (va & ((1 << self.regime.shift(int(run["level"]))) - 1))
        return int(run["pa"]) + off

    @property
    def table_count(self) -> int:
        return len(self.table_phys)

    def __repr__(self) -> str:
        leaf = self.runs[self.runs["cls"] == CLS_LEAF]
        return (f"Walk({self.root.name}: {self.table_count} table pages, {len(leaf)} mapped ranges, "
                f"{int(leaf['size'].sum()) >> 10} KiB mapped, {len(self.problems)} problems)")


def walk(
    kernel: Kernel,
    root: Root,
    progress: Optional[Callable[[str, int, int], None]] = None,
    keep_entries: bool = False,
) -> Walk:
    """
    Walk ``root`` in one pass and return its :class:`Walk` (with
    ``keep_entries``, also every table's descriptors: :attr:`Walk.entries`).

    >>> w = walk(k, k.root("efi_mm"))
    >>> next(w.mappings())
    Mapping(0x20000000-0x20010000 -> 0x43f9b0000 PTE page [...])
    """
    return _Walker(kernel, root, progress, keep_entries).run()


class _Walker:
    def __init__(self, kernel: Kernel, root: Root, progress, keep_entries: bool = False) -> None:
        self.k = kernel
        self.r = kernel.regime
        self.root = root
        self.progress = progress
        self.lo = root.start
        self.hi = (root.end - 1) & U64  # inclusive
        self.oa_mask = np.uint64(self.r.oa_mask)
        #: Bytes one entry maps, by level + 1 (level -1 of 5-level regimes first).
        self.spans = np.array([1 << self.r.shift(L) if L >= self.r.top_level else 0 for L in range(-1, 4)],
                              dtype=np.uint64)
        self.problems: List[Problem] = []
        self.runs: List[np.ndarray] = []
        self.tables: List[Tuple[np.ndarray, ...]] = []
        self.edges: List[Tuple[np.ndarray, ...]] = []
        self.seen = np.empty(0, dtype=np.uint64)  # sorted table PAs walked so far
        self.bytes_read = 0
        self.reads = 0
        self._scratch: Optional[np.ndarray] = None
        self._bscratch: Optional[np.ndarray] = None
        self.keep = keep_entries
        self.kept_uniform: List[np.ndarray] = []
        self.kept_dense: List[Tuple[np.ndarray, np.ndarray]] = []
        #: KASAN's early shadow tables: PA -> (level, rows, page PA, leaf attr, inherited bits)
        self.shadow: Dict[int, Tuple[int, np.ndarray, int, int, int]] = self._shadow_tables()
        self.shadow_keys = np.array(sorted(self.shadow), dtype=np.uint64)
        self.shadow_reached: Dict[int, int] = {}  # PA -> first VA it maps

    def run(self) -> Walk:
        t0 = time.perf_counter()
        r = self.r
        level = r.top_level
        occ = (
            np.array([self.root.phys], dtype=np.uint64),
            np.array([self.root.va_base], dtype=np.uint64),
            np.zeros(1, dtype=np.uint8),
            np.array([U64], dtype=np.uint64),
            np.array([-1], dtype=np.int64),
        )
        entries = self.root.entries
        while len(occ[0]) and level <= 3:
            occ = self._level(level, entries, occ)
            entries = r.entries_per_table
            level += 1
        if self.shadow_reached:
            self._record_shadow()
        runs = _merge(np.concatenate(self.runs) if self.runs else np.empty(0, RUN_DTYPE), spans=self.spans)
        runs = self._clip(runs)
        cols = [np.concatenate(c) if c else np.empty(0) for c in zip(*self.tables)] if self.tables else []
        ecols = [np.concatenate(c) for c in zip(*self.edges)] if self.edges else []
        if not cols:
            cols = [np.empty(0, np.uint64), np.empty(0, np.int8), np.empty(0, np.uint64),
                    np.empty(0, np.int64), np.empty(0, np.int64)]
        if not ecols:
            ecols = [np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.int64)]
        elif len(ecols[0]) > len(cols[0]):
            # A shared table under a shared table is reached through the same
            # parent entry more than once: keep each (child, parent, index) once.
            # (A lexsort of the three columns: np.unique of a structured key
            # sorts void records, 1.8 s for a KASAN kernel's 100k edges.)
            c, p, i = ecols
            order = np.lexsort((i, p, c))
            sc, sp, si = c[order], p[order], i[order]
            new = np.ones(len(order), dtype=bool)
            new[1:] = (sc[1:] != sc[:-1]) | (sp[1:] != sp[:-1]) | (si[1:] != si[:-1])
            if not new.all():
                first = np.sort(order[new])  # the first of each, in walk order
                ecols = [col[first] for col in ecols]
        elapsed = time.perf_counter() - t0
        return Walk(
            self.k,
            self.root,
            runs,
            *cols,
            *ecols,
            self.problems,
            {"seconds": elapsed, "bytes_read": self.bytes_read, "reads": self.reads,
             "tables": int(len(cols[0]))},
            self._kept() if self.keep else None,
        )

    # -- KASAN's early shadow tables -----------------------------------------
    def _shadow_tables(self) -> Dict[int, Tuple[int, np.ndarray, int, int, int]]:
        """The early shadow tables that are what mm/kasan/init.c and
        kasan_init() make of them, bottom up: a PTE table whose entries all map
        one page with one set of attributes, and tables above it whose entries
        all reference the table below. A table that is not (a dump taken
        during early boot) is walked like any other."""
        ka = self.k.kasan
        if ka is None or not self.root.ttbr1:
            return {}
        r = self.r
        E = r.entries_per_table
        out: Dict[int, Tuple[int, np.ndarray, int, int, int]] = {}
        below = None
        for name, level in (("kasan_early_shadow_pte", 3), ("kasan_early_shadow_pmd", 2),
                            ("kasan_early_shadow_pud", 1), ("kasan_early_shadow_p4d", 0)):
            phys = ka.tables.get(name)
            if phys is None or level <= r.top_level:
                break
            try:
                rows = np.frombuffer(self.k.target.read_phys(phys, E * 8), dtype="<u8")
            except TargetFault:
                break
            d = rows[0]
            if not (rows == d).all():
                break
            typ = int(d) & 3
            if level == 3:
                if typ != 3:
                    break
                out[phys] = (level, rows, int(r.descs_to_phys(rows[:1])[0]), int(d & ~self.oa_mask), 0)
            else:
                if typ != 3 or below is None or int(r.descs_to_phys(rows[:1])[0]) != below:
                    break
                _, _, pa, attr, inh = out[below]
                out[phys] = (level, rows, pa, attr, inh | (int(d) >> 59) & 0xF)
            below = phys
        return out

    def _shadow_runs(self, child_pa, child_va, child_inh, span) -> np.ndarray:
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
            _, _, page, attr, inh = self.shadow[pa]
            runs["pa"][sel] = page
            runs["attr"][sel] = attr
            runs["inherit"][sel] = child_inh[sel] | np.uint8(inh)
            va0 = int(child_va[sel].min())
            if va0 < self.shadow_reached.get(pa, U64):
                self.shadow_reached[pa] = va0
        return runs

    def _record_shadow(self) -> None:
        """Each early shadow table reached, once, with the entries of the
        early tables above it among its parents."""
        E = self.r.entries_per_table
        by_level = sorted(self.shadow.items(), key=lambda kv: kv[1][0])
        for phys, (level, rows, _, _, _) in by_level:  # top level first
            if phys not in self.shadow_reached:
                continue
            va = self.shadow_reached[phys]
            self.tables.append((np.array([phys], np.uint64), np.array([level], np.int8),
                                np.array([va], np.uint64), np.array([E], np.int64),
                                np.array([np.count_nonzero(rows & np.uint64(1))], np.int64)))
            if self.keep:
                self.kept_dense.append((np.array([phys], np.uint64), rows[None, :]))
            child = next((c for c, v in self.shadow.items() if v[0] == level + 1), None)
            if child is not None and level < 3:
                self.edges.append((np.full(E, child, np.uint64), np.full(E, phys, np.uint64),
                                   np.arange(E, dtype=np.int64)))
                if va < self.shadow_reached.get(child, U64):
                    self.shadow_reached[child] = va

    def _keep_uniform(self, phys, first, step, count: int) -> None:
        rows = np.empty(len(phys), UNIFORM_DTYPE)
        rows["phys"], rows["first"], rows["step"], rows["count"] = phys, first, step, count
        self.kept_uniform.append(rows)

    def _kept(self) -> TableEntries:
        uniform = np.concatenate(self.kept_uniform) if self.kept_uniform else np.empty(0, UNIFORM_DTYPE)
        # A table read twice (referenced twice in one batch) is kept once.
        _, first = np.unique(uniform["phys"], return_index=True)
        dense: Dict[int, np.ndarray] = {}
        for phys, rows in self.kept_dense:
            dense.update(zip(phys.tolist(), rows))
        return TableEntries(uniform[first], dense)

    # -- one level ----------------------------------------------------------
    def _level(self, level: int, entries: int, occ):
        """Decode every table occurrence of one level; return the next level's."""
        phys, va, inh, parent, pindex = occ
        # A table referenced twice at this level is one record (several parents).
        srt = np.argsort(phys, kind="stable")
        sp = phys[srt]
        head = np.ones(len(sp), dtype=bool)
        head[1:] = sp[1:] != sp[:-1]
        uniq, first = sp[head], srt[head]
        if len(phys) > SHARED_LIMIT and len(phys) > 4 * len(uniq):
            # One table referenced from very many entries (KASAN's early
            # shadow maps terabytes through one PTE table): its subtree is
            # walked once, and the other ranges are reported, not expanded,
            # so the walk stays linear in the number of table pages.
            self.edges.append((phys, parent, pindex))  # every parent, still
            self._shared(level, phys, va, srt, head)
            keep = np.sort(first)
            reduced = tuple(a[keep] for a in (phys, va, inh, parent, pindex))
            return self._level_unique(level, entries, reduced, uniq, np.searchsorted(keep, first),
                                      record_edges=False)
        return self._level_unique(level, entries, occ, uniq, first)

    def _shared(self, level: int, phys, va, srt, head) -> None:
        counts = np.diff(np.concatenate((np.nonzero(head)[0], [len(srt)])))
        for k in np.nonzero(counts > 1)[0].tolist():
            i = int(np.nonzero(head)[0][k])
            occ = srt[i : i + int(counts[k])]
            self.problems.append(Problem(
                "shared", level, int(va[occ[0]]), int(phys[occ[0]]), None, -1,
                f"referenced by {int(counts[k])} entries: walked once, at {int(va[occ[0]]):#x}; "
                f"the other {int(counts[k]) - 1} ranges it maps are not expanded",
            ))

    def _level_unique(self, level: int, entries: int, occ, uniq, first, record_edges: bool = True):
        phys, va, inh, parent, pindex = occ
        seen = np.concatenate((self.seen, uniq))
        seen.sort(kind="stable")  # two sorted runs: linear
        self.seen = seen  # sorted; a PA seen at an earlier level may repeat
        if record_edges:
            self.edges.append((phys, parent, pindex))
        valid_counts = np.zeros(len(phys), dtype=np.int64)
        order = np.argsort(va, kind="stable")
        nxt: List[Tuple[np.ndarray, ...]] = []
        total = len(order)
        per = max(1, min(CHUNK_TABLES, CHUNK_BYTES // (entries * 8)))
        for c0 in range(0, total, per):
            idx = order[c0 : c0 + per]
            got = self._chunk(level, entries, phys[idx], va[idx], inh[idx], idx, valid_counts)
            if got is not None:
                nxt.append(got)
            if self.progress:
                self.progress(self.r.level_name(level), min(c0 + per, total), total)
        self.tables.append(
            (
                uniq,
                np.full(len(uniq), level, dtype=np.int8),
                va[first],
                np.full(len(uniq), entries, dtype=np.int64),
                valid_counts[first],
            )
        )
        if not nxt:
            return tuple(np.empty(0, t) for t in (np.uint64, np.uint64, np.uint8, np.uint64, np.int64))
        return tuple(np.concatenate(c) for c in zip(*nxt))

    def _chunk(self, level, entries, phys, va, inh, occ_idx, valid_counts):
        """Decode one batch of table occurrences (a few MiB of tables, so that
        every pass below stays in the CPU caches); return the next level's
        occurrences found in it, or None."""
        r = self.r
        span = np.uint64(1 << r.shift(level))
        D, rows = self._read_tables(level, phys, va, entries)
        if not len(rows):
            return None
        phys, va, inh, occ_idx = phys[rows], va[rows], inh[rows], occ_idx[rows]
        n, E = D.n, D.E
        lo, hi = np.uint64(self.lo), np.uint64(self.hi)
        # Rows wholly inside [lo, hi]; only the others need per-entry VAs.
        row_last = va + (np.uint64(E) * span - np.uint64(1))
        inside = (va >= lo) & (row_last <= hi) & (row_last >= va)
        # Uniform rows: one contiguous physical range with identical
        # attributes. Cheap column tests first (leaf type in entry 0, no carry
        # out of the OA field into attribute bits by the last entry), then
        # one comparison of every entry against the generated progression.
        first = D.column(0)
        if level == 3:
            leaf_type = 3
        elif level in r.block_levels():
            leaf_type = 1
        else:
            leaf_type = None
        if leaf_type is not None and E > 1:
            pa_first = r.descs_to_phys(first)
            cand = inside & ((first & np.uint64(3)) == np.uint64(leaf_type))
            cand &= r.descs_to_phys(D.column(E - 1)) == pa_first + np.uint64(E - 1) * span
            uniform = np.zeros(n, dtype=bool)
            if cand.any():
                for s0, e0, A in D.pieces:
                    c = cand[s0:e0]
                    if c.all():
                        uniform[s0:e0] = self._uniform_rows(A, span)
                    elif c.any():
                        ci = np.flatnonzero(c)
                        uniform[s0 + ci] = self._uniform_rows(A[ci], span)
        else:
            pa_first = None
            uniform = np.zeros(n, dtype=bool)
        out = []
        u = np.nonzero(uniform)[0]
        if len(u):
            if self.keep:
                self._keep_uniform(phys[u], first[u], span, E)
            valid_counts[occ_idx[u]] = E
            out.append(_coalesce_rows(level, np.uint64(E) * span, va[u], pa_first[u],
                                      first[u] & ~self.oa_mask, inh[u]))
        nxt = None
        g = np.nonzero(~uniform)[0]
        if len(g):
            sub = D.take(g)
            valid = np.count_nonzero(sub & np.uint64(1), axis=1)
            valid_counts[occ_idx[g]] = valid
            empty = inside[g] & ~np.any(sub, axis=1)
            e = g[empty]
            if self.keep:
                self._keep_uniform(phys[e], 0, 0, E)
                self.kept_dense.append((phys[g[~empty]], sub[~empty]))
            if len(e):
                runs = np.empty(len(e), RUN_DTYPE)
                runs["va"] = va[e]
                runs["size"] = np.uint64(E) * span
                runs["pa"] = 0
                runs["attr"] = 0
                runs["level"] = level
                runs["cls"] = CLS_NONE
                runs["inherit"] = inh[e]
                runs["rep"] = 0
                out.append(runs)
            keep = ~empty
            if keep.any():
                if not keep.all():
                    g, sub = g[keep], sub[keep]
                nxt, runs = self._entries(level, sub, phys[g], va[g], inh[g], inside[g], span, rows[g])
                out.append(runs)
        if len(out) == 1 and len(u):
            self.runs.append(out[0])  # sorted and coalesced already
        elif out:
            self.runs.append(_merge(np.concatenate(out), spans=self.spans))
        return nxt

    def _uniform_rows(self, D, span) -> np.ndarray:
        """Rows whose entries are ``D[i, 0] + k * span``, in two passes over
        ``D`` and none per row: every entry plus ``span`` must equal the next
        entry of the flattened rows. The last entry of each row is compared
        with the first of the next row, so that slot of the shifted copy is
        overwritten with exactly that value (making the comparison true)."""
        n, E = D.shape
        m = n * E
        if self._scratch is None or self._scratch.size < m:
            self._scratch = np.empty(m, dtype=np.uint64)
            self._bscratch = np.empty(m, dtype=bool)
        flat = D.reshape(m)
        nxt = np.add(flat, span, out=self._scratch[:m])
        nxt.reshape(n, E)[:-1, -1] = D[1:, 0]
        eq = self._bscratch[:m]
        np.equal(flat[1:], nxt[:-1], out=eq[:-1])
        eq[-1] = True
        if eq.all():
            return np.ones(n, dtype=bool)
        return eq.reshape(n, E).all(axis=1)

    def _entries(self, level, D, phys, va, inh, inside, span, rank):
        """Per-entry decoding of the rows that are neither uniform nor empty:
        the next level's tables, and leaf/hole/invalid runs. ``rank`` is each
        row's place in the batch's VA order: children are listed in that
        order (rows are in physical order here)."""
        r = self.r
        n, E = D.shape
        typ = D & np.uint64(3)
        ar = np.arange(E, dtype=np.uint64)
        in_range = np.ones((n, E), dtype=bool)
        part = np.nonzero(~inside)[0]
        if len(part):
            eva = va[part, None] + ar[None, :] * span
            elast = eva + (span - np.uint64(1))
            in_range[part] = (elast >= np.uint64(self.lo)) & (eva <= np.uint64(self.hi))
        # Tables of the next level.
        nxt = None
        shadow = None
        if level < 3:
            is_table = (typ == np.uint64(3)) & in_range
            rows, cols = np.nonzero(is_table)
            if len(rows):
                o = np.argsort(rank[rows].astype(np.int64) * E + cols, kind="stable")
                rows, cols = rows[o], cols[o]
                desc = D[rows, cols]
                child_pa = r.descs_to_phys(desc)
                child_va = va[rows] + cols.astype(np.uint64) * span
                child_inh = inh[rows] | ((desc >> np.uint64(59)) & np.uint64(0xF)).astype(np.uint8)
                loop = contains(self.seen, child_pa)
                for k in np.nonzero(loop)[0].tolist():
                    self.problems.append(
                        Problem("loop", level + 1, int(child_va[k]), int(child_pa[k]), int(phys[rows[k]]),
                                int(cols[k]), "entry points to a table already walked at this or a higher level")
                    )
                keep = ~loop
                if len(self.shadow_keys):
                    sh = np.isin(child_pa, self.shadow_keys)
                    if sh.any():
                        shadow = self._shadow_runs(child_pa[sh], child_va[sh], child_inh[sh], span)
                        self.edges.append((child_pa[sh], phys[rows[sh]], cols[sh].astype(np.int64)))
                        keep &= ~sh
                nxt = (child_pa[keep], child_va[keep], child_inh[keep], phys[rows[keep]],
                       cols[keep].astype(np.int64))
            skip = is_table | ~in_range
        else:
            skip = ~in_range
        # Leaves and holes.
        if level in r.block_levels() and level < 3:
            leaf = typ == np.uint64(1)
        elif level == 3:
            leaf = typ == np.uint64(3)
        else:
            leaf = np.zeros((n, E), dtype=bool)
        rr, cc = np.nonzero(~skip)
        d = D[rr, cc]
        lf = leaf[rr, cc]
        runs = np.empty(len(d), RUN_DTYPE)
        runs["va"] = va[rr] + cc.astype(np.uint64) * span
        runs["size"] = span
        runs["pa"] = np.where(lf, r.descs_to_phys(d), 0)
        runs["attr"] = np.where(lf, d & ~self.oa_mask, d)
        runs["level"] = level
        runs["cls"] = np.where(lf, CLS_LEAF, np.where(d == 0, CLS_NONE, CLS_INVALID))
        runs["inherit"] = inh[rr]
        runs["rep"] = 0
        if shadow is not None:
            runs = np.concatenate((runs, shadow))
        return nxt, _merge(runs, spans=self.spans)

    # -- reading ------------------------------------------------------------
    def _read_tables(self, level, phys, va, entries):
        """Read each distinct table once, physically contiguous ones together
        (in pieces of at most MAX_READ bytes). Return the readable rows, as
        :class:`_Rows` over the buffers the reads returned (not copied), and
        for each row the index of its occurrence in ``phys``; unreadable
        tables have no row."""
        r = self.r
        nbytes = entries * 8
        n = len(phys)
        srt = np.argsort(phys, kind="stable")
        sp = phys[srt]
        dup = n > 1 and bool(np.any(sp[1:] == sp[:-1]))
        if dup:
            uniq, inverse = np.unique(phys, return_inverse=True)
        else:
            uniq = sp
        m = len(uniq)
        pieces: List[Tuple[int, int, np.ndarray]] = []  # (first row, end row, rows) in uniq order
        good = np.ones(m, dtype=bool)
        if nbytes < r.page_size or m == 1:
            groups = [(0, m)]
        else:
            brk = np.nonzero(np.diff(uniq) != np.uint64(nbytes))[0] + 1
            bounds = [0] + brk.tolist() + [m]
            groups = list(zip(bounds[:-1], bounds[1:]))
        per = max(1, MAX_READ // nbytes)
        for s, e in groups:
            for s2 in range(s, e, per):
                e2 = min(e, s2 + per)
                try:
                    raw = self._read(int(uniq[s2]), (e2 - s2) * nbytes)
                    pieces.append((s2, e2, np.frombuffer(raw, dtype="<u8").reshape(e2 - s2, entries)))
                    continue
                except TargetFault as err:
                    if e2 - s2 == 1:
                        self._unreadable(level, va, phys, uniq, s2, err)
                        good[s2] = False
                        continue
                for k in range(s2, e2):  # find the pages that are missing
                    try:
                        raw = self._read(int(uniq[k]), nbytes)
                        pieces.append((k, k + 1, np.frombuffer(raw, dtype="<u8").reshape(1, entries)))
                    except TargetFault as err:
                        self._unreadable(level, va, phys, uniq, k, err)
                        good[k] = False
        if not good.all():
            # Renumber the rows of the readable tables.
            newpos = np.cumsum(good) - 1
            pieces = [(int(newpos[s]), int(newpos[s]) + (e - s), A) for s, e, A in pieces]
        rows_u = _Rows(pieces, int(good.sum()), entries)
        if dup:
            occ = np.nonzero(good[inverse])[0]
            newpos = np.cumsum(good) - 1
            full = rows_u.take(np.arange(rows_u.n))
            return _Rows.of(full[newpos[inverse[occ]]]), occ
        return rows_u, (srt if good.all() else srt[good])

    def _unreadable(self, level, va, phys, uniq, k, err) -> None:
        reason = str(err).split(": ", 1)[-1]
        for j in np.nonzero(phys == uniq[k])[0].tolist():
            self.problems.append(Problem("unreadable", level, int(va[j]), int(uniq[k]), None, -1, reason))

    def _read(self, addr: int, size: int) -> bytes:
        self.reads += 1
        buf = self.k.target.read_phys(addr, size)
        self.bytes_read += size
        return buf

    def _clip(self, runs: np.ndarray) -> np.ndarray:
        """Trim the first and last run to the requested VA range."""
        if not len(runs):
            return runs
        lo = np.uint64(self.lo)
        first = runs[0]
        if first["va"] < lo:
            d = lo - first["va"]
            runs[0]["size"] = first["size"] - d
            if first["cls"] == CLS_LEAF and not first["rep"]:
                runs[0]["pa"] = first["pa"] + d
            runs[0]["va"] = lo
        last = runs[-1]
        end_incl = int(last["va"]) + int(last["size"]) - 1
        if end_incl > self.hi:
            runs[-1]["size"] = self.hi - int(last["va"]) + 1
        return runs


class _Rows:
    """The table rows of one batch, held as the arrays each read returned
    (``pieces``: first row, end row, 2-D view), so that rows are copied only
    when the per-entry path needs them together."""

    __slots__ = ("pieces", "n", "E")

    def __init__(self, pieces, n: int, E: int) -> None:
        self.pieces = pieces
        self.n = n
        self.E = E

    @classmethod
    def of(cls, D: np.ndarray) -> "_Rows":
        return cls([(0, len(D), D)] if len(D) else [], len(D), D.shape[1])

    def column(self, j: int) -> np.ndarray:
        out = np.empty(self.n, dtype=np.uint64)
        for s, e, A in self.pieces:
            out[s:e] = A[:, j]
        return out

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted) as one array."""
        if len(self.pieces) == 1 and len(idx) == self.n:
            return self.pieces[0][2]
        out = np.empty((len(idx), self.E), dtype=np.uint64)
        for s, e, A in self.pieces:
            lo, hi = np.searchsorted(idx, (s, e))
            if hi > lo:
                out[lo:hi] = A[idx[lo:hi] - s]
        return out


def _coalesce_rows(level, size, va, pa, attr, inh) -> np.ndarray:
    """Leaf runs of whole uniform tables (each ``size`` bytes), sorted by VA
    and coalesced, built from plain columns (cheaper than :func:`_merge`)."""
    if len(va) > 1:
        o = np.argsort(va, kind="stable")
        va, pa, attr, inh = va[o], pa[o], attr[o], inh[o]
        cont = ((va[1:] == va[:-1] + size) & (pa[1:] == pa[:-1] + size)
                & (attr[1:] == attr[:-1]) & (inh[1:] == inh[:-1]))
        starts = np.flatnonzero(~cont) + 1
        starts = np.concatenate(([0], starts))
        counts = np.diff(np.append(starts, len(va))).astype(np.uint64)
    else:
        starts = np.zeros(len(va), dtype=np.int64)
        counts = np.ones(len(va), dtype=np.uint64)
    runs = np.empty(len(starts), RUN_DTYPE)
    runs["va"] = va[starts]
    runs["size"] = counts * size
    runs["pa"] = pa[starts]
    runs["attr"] = attr[starts]
    runs["level"] = level
    runs["cls"] = CLS_LEAF
    runs["inherit"] = inh[starts]
    runs["rep"] = 0
    return runs


def _merge(runs: np.ndarray, presorted: bool = False, spans: Optional[np.ndarray] = None) -> np.ndarray:
    """Sort runs by VA and join neighbours that continue each other: the
    same kind, level and attributes, and for leaves the physical range
    continuing, or (with ``spans``, the bytes one entry maps at each level
    + 1) the same page mapped again (a ``rep`` run)."""
    if len(runs) < 2:
        return runs
    if not presorted:
        runs = runs[np.argsort(runs["va"], kind="stable")]
    va, size, pa, rp = runs["va"], runs["size"], runs["pa"], runs["rep"]
    same = (
        (va[1:] == va[:-1] + size[:-1])
        & (runs["cls"][1:] == runs["cls"][:-1])
        & (runs["attr"][1:] == runs["attr"][:-1])
        & (runs["inherit"][1:] == runs["inherit"][:-1])
        & (runs["level"][1:] == runs["level"][:-1])
    )
    leaf = runs["cls"][1:] == CLS_LEAF
    flat = (rp[1:] == 0) & (rp[:-1] == 0)
    cont = same & (~leaf | (flat & (pa[1:] == pa[:-1] + size[:-1])))
    again = None
    if spans is not None:
        # One page (or a rep run) followed by the same page again.
        one = (rp != 0) | (size == spans[runs["level"].astype(np.int64) + 1])
        again = same & leaf & one[1:] & one[:-1] & (pa[1:] == pa[:-1])
        if again.any():
            # A chain is either contiguous or repeating: where the kind of
            # join changes, the later join is dropped.
            both = cont | again
            clash = np.zeros(len(both), dtype=bool)
            clash[1:] = both[1:] & both[:-1] & (again[1:] != again[:-1])
            again &= ~clash
            cont = (cont & ~clash) | again
        else:
            again = None
    elif (rp != 0).any():
        cont &= ~leaf | flat
    if not cont.any():
        return runs
    starts = np.concatenate(([0], np.nonzero(~cont)[0] + 1))
    out = runs[starts].copy()
    out["size"] = np.add.reduceat(size, starts)
    if again is not None:
        # A group joined by repeats (its first join says which).
        grp = np.zeros(len(starts), dtype=bool)
        idx = starts[starts < len(again)]
        grp[: len(idx)] = again[idx]
        out["rep"] |= grp.astype(np.uint8)
    return out
