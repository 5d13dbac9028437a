"""
Reading table pages in batches
------------------------------

:class:`TableReader` reads each distinct table of a batch once, physically
contiguous tables together in reads of up to :data:`MAX_READ`, and bisects a
failed read down to the pages that are missing (each a ``Problem``, the
others read). :class:`Rows` holds the rows as the buffers the reads returned,
not copied.
"""

from typing import List, Tuple

import numpy as np

from mminspect.target.base import Target, TargetFault
from mminspect.walk.model import Problem

__all__ = ("MAX_READ", "Rows", "TableReader")

#: Longest single physical read. drgn returns each read as a new bytes object;
#: reads of 256 KiB .. 4 MiB run at memory speed, 64 MiB ones are about ten
#: times slower (fresh buffers are page-faulted in on every read).
MAX_READ = 1 << 20


class Rows:
    """The table rows of one batch, held as the arrays each read returned
    (``pieces``: first row, end row, 2-D view), so that rows are copied only
    when the per-entry path needs them together."""

    __slots__ = ("pieces", "n", "E")

    def __init__(self, pieces, n: int, E: int) -> None:
        self.pieces = pieces
        self.n = n
        self.E = E

    @classmethod
    def of(cls, D: np.ndarray) -> "Rows":
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


class TableReader:
    """Batched reads of table pages through a target, counting reads and
    bytes, and recording each unreadable table as a ``Problem``."""

    def __init__(self, target: Target, page_size: int, problems: List[Problem]) -> None:
        self.target = target
        self.page_size = page_size
        self.problems = problems
        self.reads = 0
        self.bytes_read = 0

    def read_tables(self, level, phys, va, entries):
        """Read each distinct table once, physically contiguous ones together
        (in pieces of at most MAX_READ bytes). Return the readable rows, as
        :class:`Rows` over the buffers the reads returned (not copied), and
        for each row the index of its occurrence in ``phys``; unreadable
        tables have no row."""
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
        if nbytes < self.page_size or m == 1:
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
        rows_u = Rows(pieces, int(good.sum()), entries)
        if dup:
            occ = np.nonzero(good[inverse])[0]
            newpos = np.cumsum(good) - 1
            full = rows_u.take(np.arange(rows_u.n))
            return Rows.of(full[newpos[inverse[occ]]]), occ
        return rows_u, (srt if good.all() else srt[good])

    def _unreadable(self, level, va, phys, uniq, k, err) -> None:
        reason = str(err).split(": ", 1)[-1]
        for j in np.nonzero(phys == uniq[k])[0].tolist():
            self.problems.append(Problem("unreadable", level, int(va[j]), int(uniq[k]), None, -1, reason))

    def _read(self, addr: int, size: int) -> bytes:
        self.reads += 1
        buf = self.target.read_phys(addr, size)
        self.bytes_read += size
        return buf
