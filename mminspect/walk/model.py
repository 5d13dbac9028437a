"""
Walk records
------------

What a walk returns (:class:`Walk`) and the records it is read through:

- a leaf :class:`Mapping` (a coalesced VA range, its PA and attributes);
- a walked :class:`TablePage`: *where a table hangs* (level, VA span,
  valid entries, every :class:`Parent` entry that references it). The
  classifier's :class:`~mminspect.classify.model.TableClass` says *what* a
  table is and why; the hot-remove snapshot's compact columns keep what a
  simulation needs. Every other table view is one of these three;
- a :class:`Problem` the walk could not see past;
- :class:`TableEntries`: the descriptors of every table read, kept compactly.

The run and table columns are numpy structured arrays (:data:`RUN_DTYPE`,
:data:`TABLE_DTYPE`): no Python object per entry or per table unless asked.
"""

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

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
from mminspect.bits import U64
from mminspect.kernel import Kernel, Root

__all__ = (
    "CLS_INVALID",
    "CLS_LEAF",
    "CLS_NONE",
    "Mapping",
    "Parent",
    "Problem",
    "RUN_DTYPE",
    "TABLE_DTYPE",
    "TableEntries",
    "TablePage",
    "UNIFORM_DTYPE",
    "Walk",
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
    million of them: 12 MiB instead of 2 GiB); the others in full. The
    contents of tables, not a record about them; the hot-remove snapshot
    keeps them as an :class:`~mminspect.hotremove.entries.EntryStore`."""

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
