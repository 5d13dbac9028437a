"""Frozen copy of mminspect/walk.py as of commit f8768a0, before issue 7's
performance work. The benchmark keeps it so that ``--before`` prints
before/after ratios in the same run. mminspect itself never imports it.
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
from mminspect.kernel import Kernel, Root
from mminspect.target.base import TargetFault

__all__ = (
    "CLS_INVALID",
    "CLS_LEAF",
    "CLS_NONE",
    "Mapping",
    "Parent",
    "Problem",
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
    ]
)

#: Tables decoded per batch: bounds the memory of the PTE level (64 MiB at 4K).
CHUNK_TABLES = 16384
#: Longest single physical read.
MAX_READ = 64 << 20

_U64 = (1 << 64) - 1


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

    @property
    def end(self) -> int:
        return (self.va + self.size) & _U64

    @property
    def kind(self) -> str:
        """``page``, ``contiguous`` or ``block``."""
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
            )

    def tables(self) -> Iterator[TablePage]:
        """Every table page once, top level first, then by VA."""
        r = self.regime
        order = np.lexsort((self.table_va, self.table_level))
        parents: Dict[int, List[Parent]] = {}
        for c, p, i in zip(self.edge_child.tolist(), self.edge_parent.tolist(), self.edge_index.tolist()):
            parents.setdefault(c, []).append(Parent(None if p == _U64 else p, i))
        for k in order.tolist():
            lvl = int(self.table_level[k])
            phys = int(self.table_phys[k])
            n = int(self.table_entries[k])
            yield TablePage(
                phys,
                lvl,
                r.level_name(lvl),
                int(self.table_va[k]),
                n << r.shift(lvl),
                n,
                int(self.table_valid[k]),
                tuple(parents.get(phys, ())),
            )

    def translate(self, va: int) -> Optional[int]:
        """The PA a VA maps to according to this walk, or None."""
        runs = self.runs
        k = int(np.searchsorted(runs["va"], np.uint64(va), side="right")) - 1
        if k < 0:
            return None
        run = runs[k]
        off = (va - int(run["va"])) & _U64
        if off >= int(run["size"]) or run["cls"] != CLS_LEAF:
            return None
        return int(run["pa"]) + off

    @property
    def table_count(self) -> int:
        return len(self.table_phys)


def walk(
    kernel: Kernel,
    root: Root,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> Walk:
    """
    Walk ``root`` in one pass and return its :class:`Walk`.

    >>> w = walk(k, k.root("efi_mm"))
    >>> next(w.mappings())
    Mapping(0x20000000-0x20010000 -> 0x43f9b0000 PTE page [...])
    """
    return _Walker(kernel, root, progress).run()


class _Walker:
    def __init__(self, kernel: Kernel, root: Root, progress) -> None:
        self.k = kernel
        self.r = kernel.regime
        self.root = root
        self.progress = progress
        self.lo = root.start
        self.hi = (root.end - 1) & _U64  # inclusive
        self.oa_mask = np.uint64(self.r.oa_mask)
        self.problems: List[Problem] = []
        self.runs: List[np.ndarray] = []
        self.tables: List[Tuple[np.ndarray, ...]] = []
        self.edges: List[Tuple[np.ndarray, ...]] = []
        self.seen = np.empty(0, dtype=np.uint64)  # sorted table PAs walked so far
        self.bytes_read = 0
        self.reads = 0

    def run(self) -> Walk:
        t0 = time.perf_counter()
        r = self.r
        level = r.top_level
        occ = (
            np.array([self.root.phys], dtype=np.uint64),
            np.array([self.root.va_base], dtype=np.uint64),
            np.zeros(1, dtype=np.uint8),
            np.array([_U64], dtype=np.uint64),
            np.array([-1], dtype=np.int64),
        )
        entries = self.root.entries
        while len(occ[0]) and level <= 3:
            occ = self._level(level, entries, occ)
            entries = r.entries_per_table
            level += 1
        runs = _merge(np.concatenate(self.runs) if self.runs else np.empty(0, RUN_DTYPE))
        runs = self._clip(runs)
        cols = [np.concatenate(c) if c else np.empty(0) for c in zip(*self.tables)] if self.tables else []
        ecols = [np.concatenate(c) for c in zip(*self.edges)] if self.edges else []
        if not cols:
            cols = [np.empty(0, np.uint64), np.empty(0, np.int8), np.empty(0, np.uint64),
                    np.empty(0, np.int64), np.empty(0, np.int64)]
        if not ecols:
            ecols = [np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.int64)]
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
        )

    # -- one level ----------------------------------------------------------
    def _level(self, level: int, entries: int, occ):
        """Decode every table occurrence of one level; return the next level's."""
        phys, va, inh, parent, pindex = occ
        # A table referenced twice at this level is one record (several parents).
        uniq, first = np.unique(phys, return_index=True)
        self.seen = np.union1d(self.seen, uniq)
        self.edges.append((phys, parent, pindex))
        valid_counts = np.zeros(len(phys), dtype=np.int64)
        order = np.argsort(va, kind="stable")
        nxt: List[Tuple[np.ndarray, ...]] = []
        total = len(order)
        for c0 in range(0, total, CHUNK_TABLES):
            idx = order[c0 : c0 + CHUNK_TABLES]
            nxt.append(self._chunk(level, entries, phys[idx], va[idx], inh[idx], idx, valid_counts))
            if self.progress:
                self.progress(self.r.level_name(level), min(c0 + CHUNK_TABLES, total), total)
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
        r = self.r
        shift = r.shift(level)
        span = np.uint64(1 << shift)
        D, ok = self._read_tables(level, phys, va, entries)
        phys, va, inh, occ_idx, D = phys[ok], va[ok], inh[ok], occ_idx[ok], D[ok]
        n, E = D.shape
        typ = D & np.uint64(3)
        valid_counts[occ_idx] = np.count_nonzero(D & np.uint64(1), axis=1)
        ar = np.arange(E, dtype=np.uint64)
        # Entries outside [lo, hi] are ignored; only rows that straddle the
        # range's edges need per-entry VAs.
        row_last = va + np.uint64(E) * span - np.uint64(1)
        inside = (va >= np.uint64(self.lo)) & (row_last <= np.uint64(self.hi)) & (row_last >= va)
        in_range = np.ones((n, E), dtype=bool)
        part = np.nonzero(~inside)[0]
        if len(part):
            eva = va[part, None] + ar[None, :] * span
            elast = eva + (span - np.uint64(1))
            in_range[part] = (elast >= np.uint64(self.lo)) & (eva <= np.uint64(self.hi))
        # Tables of the next level.
        if level < 3:
            is_table = (typ == np.uint64(3)) & in_range
        else:
            is_table = np.zeros((n, E), dtype=bool)
        rows, cols = np.nonzero(is_table)
        desc = D[rows, cols]
        child_pa = r.descs_to_phys(desc)
        child_va = va[rows] + cols.astype(np.uint64) * span
        child_inh = inh[rows] | ((desc >> np.uint64(59)) & np.uint64(0xF)).astype(np.uint8)
        loop = np.isin(child_pa, self.seen)
        for k in np.nonzero(loop)[0].tolist():
            self.problems.append(
                Problem("loop", level + 1, int(child_va[k]), int(child_pa[k]), int(phys[rows[k]]),
                        int(cols[k]), "entry points to a table already walked at this or a higher level")
            )
        keep = ~loop
        nxt = (child_pa[keep], child_va[keep], child_inh[keep], phys[rows[keep]],
               cols[keep].astype(np.int64))
        # Leaves and holes.
        if level in r.block_levels() and level < 3:
            leaf = typ == np.uint64(1)
        elif level == 3:
            leaf = typ == np.uint64(3)
        else:
            leaf = np.zeros((n, E), dtype=bool)
        self._runs(level, D, leaf, is_table | ~in_range, inside, va, inh, span, E, ar)
        return nxt

    def _runs(self, level, D, leaf, skip, inside, va, inh, span, E, ar):
        """Summarise one chunk's entries into coalesced runs."""
        r = self.r
        pa_first = r.descs_to_phys(D[:, 0])
        expect = D[:, :1] + ar[None, :] * span
        uniform = inside & leaf[:, 0] & np.all(D == expect, axis=1)
        # Guard against a carry out of the OA field into attribute bits.
        uniform &= r.descs_to_phys(D[:, -1]) == pa_first + np.uint64(E - 1) * span
        empty = inside & ~np.any(D, axis=1)
        out = []
        u = np.nonzero(uniform | empty)[0]
        if len(u):
            runs = np.empty(len(u), RUN_DTYPE)
            runs["va"] = va[u]
            runs["size"] = np.uint64(E) * span
            runs["pa"] = np.where(uniform[u], pa_first[u], 0)
            runs["attr"] = np.where(uniform[u], D[u, 0] & ~self.oa_mask, 0)
            runs["level"] = level
            runs["cls"] = np.where(uniform[u], CLS_LEAF, CLS_NONE)
            runs["inherit"] = inh[u]
            out.append(runs)
        g = np.nonzero(~(uniform | empty))[0]
        if len(g):
            sub = D[g]
            keep = ~skip[g]
            rr, cc = np.nonzero(keep)
            d = sub[rr, cc]
            lf = leaf[g][rr, cc]
            runs = np.empty(len(d), RUN_DTYPE)
            runs["va"] = va[g][rr] + cc.astype(np.uint64) * span
            runs["size"] = span
            runs["pa"] = np.where(lf, r.descs_to_phys(d), 0)
            runs["attr"] = np.where(lf, d & ~self.oa_mask, d)
            runs["level"] = level
            runs["cls"] = np.where(lf, CLS_LEAF, np.where(d == 0, CLS_NONE, CLS_INVALID))
            runs["inherit"] = inh[g][rr]
            out.append(_merge(runs, presorted=True))
        if out:
            self.runs.append(_merge(np.concatenate(out)))

    # -- reading ------------------------------------------------------------
    def _read_tables(self, level, phys, va, entries):
        """Read each distinct table once, physically contiguous ones together."""
        r = self.r
        nbytes = entries * 8
        uniq, inverse = np.unique(phys, return_inverse=True)
        data = np.zeros((len(uniq), entries), dtype=np.uint64)
        good = np.ones(len(uniq), dtype=bool)
        if nbytes < r.page_size or len(uniq) == 1:
            groups = [(0, len(uniq))]
        else:
            step = np.diff(uniq) != np.uint64(nbytes)
            starts = np.concatenate(([0], np.nonzero(step)[0] + 1))
            ends = np.concatenate((starts[1:], [len(uniq)]))
            groups = list(zip(starts.tolist(), ends.tolist()))
        per = max(1, MAX_READ // nbytes)
        for s, e in groups:
            for s2 in range(s, e, per):
                e2 = min(e, s2 + per)
                try:
                    buf = self._read(int(uniq[s2]), (e2 - s2) * nbytes)
                    data[s2:e2] = np.frombuffer(buf, dtype="<u8").reshape(e2 - s2, entries)
                    continue
                except TargetFault as err:
                    if e2 - s2 == 1:
                        self._unreadable(level, va, inverse, uniq, s2, err)
                        good[s2] = False
                        continue
                for k in range(s2, e2):  # find the pages that are missing
                    try:
                        data[k] = np.frombuffer(self._read(int(uniq[k]), nbytes), dtype="<u8")
                    except TargetFault as err:
                        self._unreadable(level, va, inverse, uniq, k, err)
                        good[k] = False
        return data[inverse], good[inverse]

    def _unreadable(self, level, va, inverse, uniq, k, err) -> None:
        reason = str(err).split(": ", 1)[-1]
        for j in np.nonzero(inverse == k)[0].tolist():
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
            if first["cls"] == CLS_LEAF:
                runs[0]["pa"] = first["pa"] + d
            runs[0]["va"] = lo
        last = runs[-1]
        end_incl = int(last["va"]) + int(last["size"]) - 1
        if end_incl > self.hi:
            runs[-1]["size"] = self.hi - int(last["va"]) + 1
        return runs


def _merge(runs: np.ndarray, presorted: bool = False) -> np.ndarray:
    """Sort runs by VA and join neighbours that continue each other."""
    if len(runs) < 2:
        return runs
    if not presorted:
        runs = runs[np.argsort(runs["va"], kind="stable")]
    va, size, pa = runs["va"], runs["size"], runs["pa"]
    cont = (
        (va[1:] == va[:-1] + size[:-1])
        & (runs["cls"][1:] == runs["cls"][:-1])
        & (runs["attr"][1:] == runs["attr"][:-1])
        & (runs["inherit"][1:] == runs["inherit"][:-1])
        & (runs["level"][1:] == runs["level"][:-1])
        & ((runs["cls"][1:] != CLS_LEAF) | (pa[1:] == pa[:-1] + size[:-1]))
    )
    if not cont.any():
        return runs
    starts = np.concatenate(([0], np.nonzero(~cont)[0] + 1))
    out = runs[starts].copy()
    out["size"] = np.add.reduceat(size, starts)
    return out
