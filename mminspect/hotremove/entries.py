"""
Captured table entries, stored compactly
----------------------------------------

A 1 TiB page-granular linear map has half a million PTE tables whose 512
entries each map one contiguous range with one set of attributes: entry *i*
is entry 0 plus *i* pages. :class:`EntryStore` keeps such *uniform* tables
(and empty ones) as (first descriptor, step) and only the others in full, and
hands out arrays on demand, so a snapshot of a large server stays small in
memory and on disk. :func:`read_entries` fills one from a target in
physically contiguous reads.
"""

from collections.abc import Mapping
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from mminspect.sortedarrays import contains
from mminspect.target.base import TargetFault

__all__ = ("EntryStore", "read_entries")

#: Largest single read (drgn is fastest around 1 MiB).
MAX_READ = 1 << 20


class EntryStore(Mapping):
    """phys -> entries (``uint64`` array); uniform tables are generated.
    The snapshot's form of a walk's kept descriptors
    (:class:`~mminspect.walk.model.TableEntries`): a read-only mapping that
    saves to and loads from the snapshot file."""

    def __init__(self, dense: Dict[int, np.ndarray], uniform_phys: np.ndarray,
                 uniform_first: np.ndarray, uniform_step: np.ndarray, uniform_len: np.ndarray) -> None:
        self.dense = dense
        order = np.argsort(uniform_phys)
        self.uphys = uniform_phys[order].astype(np.uint64)
        self.ufirst = uniform_first[order].astype(np.uint64)
        self.ustep = uniform_step[order].astype(np.uint64)
        self.ulen = uniform_len[order].astype(np.int64)

    @classmethod
    def of(cls, dense: Dict[int, np.ndarray]) -> "EntryStore":
        """A store of full tables only."""
        empty = np.empty(0, np.uint64)
        return cls(dense, empty, empty, empty, empty)

    @classmethod
    def from_walk(cls, kept) -> "EntryStore":
        """The store of the entries a walk kept (:class:`mminspect.walk.TableEntries`)."""
        u = kept.uniform
        return cls(kept.dense, u["phys"], u["first"], u["step"], u["count"])

    def holds(self, phys: np.ndarray) -> np.ndarray:
        """A mask of the table pages in ``phys`` this store has entries for."""
        dense = np.sort(np.fromiter(self.dense, dtype=np.uint64, count=len(self.dense)))
        return contains(self.uphys, phys) | contains(dense, phys)

    def _uniform(self, phys: int) -> int:
        k = int(np.searchsorted(self.uphys, np.uint64(phys)))
        return k if k < len(self.uphys) and int(self.uphys[k]) == phys else -1

    def __getitem__(self, phys: int) -> np.ndarray:
        t = self.dense.get(phys)
        if t is not None:
            return t
        k = self._uniform(phys)
        if k < 0:
            raise KeyError(phys)
        return self.ufirst[k] + np.arange(int(self.ulen[k]), dtype=np.uint64) * self.ustep[k]

    def uniform(self, phys: int) -> Optional[Tuple[int, int, int]]:
        """(first descriptor, step, count) of a uniform or empty table, or
        None when the table is held in full (or not at all)."""
        if phys in self.dense:
            return None
        k = self._uniform(phys)
        return None if k < 0 else (int(self.ufirst[k]), int(self.ustep[k]), int(self.ulen[k]))

    def __contains__(self, phys: object) -> bool:
        return phys in self.dense or (isinstance(phys, int) and self._uniform(phys) >= 0)

    def __iter__(self) -> Iterator[int]:
        yield from self.dense
        yield from self.uphys.tolist()

    def __len__(self) -> int:
        return len(self.dense) + len(self.uphys)

    @property
    def uniform_count(self) -> int:
        return len(self.uphys)

    def arrays(self) -> Dict[str, np.ndarray]:
        """Everything as flat arrays, for saving."""
        phys = np.array(sorted(self.dense), dtype=np.uint64)
        lengths = np.array([len(self.dense[int(p)]) for p in phys], dtype=np.int64)
        flat = np.concatenate([self.dense[int(p)] for p in phys]) if len(phys) else np.empty(0, np.uint64)
        return {"phys": phys, "lengths": lengths, "entries": flat, "uphys": self.uphys,
                "ufirst": self.ufirst, "ustep": self.ustep, "ulen": self.ulen}

    @classmethod
    def from_arrays(cls, a) -> "EntryStore":
        dense: Dict[int, np.ndarray] = {}
        pos = 0
        for p, n in zip(a["phys"].tolist(), a["lengths"].tolist()):
            dense[p] = a["entries"][pos : pos + n].copy()
            pos += n
        return cls(dense, a["uphys"], a["ufirst"], a["ustep"], a["ulen"])


def read_entries(target, phys: np.ndarray, entries: np.ndarray, steps: np.ndarray) -> Tuple[EntryStore, np.ndarray]:
    """Read the tables at ``phys`` (``entries`` each; ``steps`` is the VA
    size of one entry at each table's level) in contiguous runs.

    :return: the store, and a mask of the tables that could be read
    """
    order = np.argsort(phys, kind="stable")
    phys, entries, steps = phys[order], entries[order], steps[order]
    ok = np.zeros(len(phys), dtype=bool)
    dense: Dict[int, np.ndarray] = {}
    uni: list = []
    nbytes = entries.astype(np.int64) * 8
    n = len(phys)
    # Runs of tables that follow each other in memory, cut at MAX_READ.
    cont = np.zeros(n, dtype=bool)
    if n > 1:
        cont[1:] = (phys[1:] == phys[:-1] + nbytes[:-1].astype(np.uint64)) & (entries[1:] == entries[:-1])
    starts = np.flatnonzero(~cont).tolist() + [n]
    pieces = []
    for a, b in zip(starts[:-1], starts[1:]):
        per = max(1, MAX_READ // int(nbytes[a]))
        pieces += [(i, min(b, i + per)) for i in range(a, b, per)]
    for i, j in pieces:
        total = int(nbytes[i]) * (j - i)
        try:
            block = np.frombuffer(target.read_phys(int(phys[i]), total), dtype="<u8")
            rows = block.reshape(j - i, int(entries[i]))
            idx = range(i, j)
        except TargetFault:
            rows, idx = [], []
            for k in range(i, j):
                try:
                    rows.append(np.frombuffer(target.read_phys(int(phys[k]), int(nbytes[k])), dtype="<u8"))
                    idx.append(k)
                except TargetFault:
                    continue
            if not rows:
                continue
            rows = np.stack(rows) if len({len(r) for r in rows}) == 1 else rows
        _store(rows, list(idx), phys, steps, dense, uni)
        ok[list(idx)] = True
    if uni:
        u = np.concatenate(uni).reshape(-1, 4)
        store = EntryStore(dense, u[:, 0], u[:, 1], u[:, 2], u[:, 3])
    else:
        store = EntryStore.of(dense)
    back = np.empty_like(ok)
    back[order] = ok
    return store, back


def _store(rows, idx, phys, steps, dense, uni) -> None:
    if isinstance(rows, np.ndarray):
        e = rows.shape[1]
        idx = np.asarray(idx)
        step = steps[idx].astype(np.uint64)
        first = rows[:, 0]
        # Uniform: entry i == entry 0 + i * step (leaves of one range, one
        # attribute set), or all zero.
        uniform = np.all(rows == first[:, None] + np.arange(e, dtype=np.uint64)[None, :] * step[:, None],
                         axis=1) & (first != 0)
        empty = ~rows.any(axis=1)
        keep = uniform | empty
        k = idx[keep]
        uni.append(np.stack((phys[k], np.where(uniform[keep], first[keep], 0),
                             np.where(uniform[keep], step[keep], 0),
                             np.full(len(k), e, dtype=np.uint64)), axis=1).astype(np.uint64))
        for r in np.nonzero(~keep)[0].tolist():
            dense[int(phys[idx[r]])] = rows[r].copy()
        return
    for r, k in zip(rows, idx):
        dense[int(phys[k])] = r.copy()
