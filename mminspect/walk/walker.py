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
them (:mod:`mminspect.walk.shadow`).

The package: :mod:`~mminspect.walk.model` (the records),
:mod:`~mminspect.walk.walker` (this walker), :mod:`~mminspect.walk.read`
(batched table reads), :mod:`~mminspect.walk.runs` (building and coalescing
runs), :mod:`~mminspect.walk.shadow` (KASAN's early shadow tables),
:mod:`~mminspect.walk.wx` (the kernel's W+X check over a walk).
"""

import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from mminspect.bits import U64, contains
from mminspect.kernel import Kernel, Root
from mminspect.walk.model import (
    CLS_INVALID,
    CLS_LEAF,
    CLS_NONE,
    RUN_DTYPE,
    UNIFORM_DTYPE,
    Problem,
    TableEntries,
    Walk,
)
from mminspect.walk.read import Rows, TableReader
from mminspect.walk.runs import clip, coalesce_rows, merge
from mminspect.walk.shadow import EarlyShadow

__all__ = ("walk",)

#: Bytes of tables decoded per batch: small enough that every numpy pass over
#: a batch stays in the CPU caches (measured on the 1 TiB benchmark: 4 MiB
#: batches decode about 3x faster than 64 MiB ones).
CHUNK_BYTES = 4 << 20
#: Upper bound on the tables of one batch (sub-page pgds are tiny).
CHUNK_TABLES = 16384
#: Occurrences of one level above which tables referenced from many
#: entries are walked once (see ``_Walker._level``).
SHARED_LIMIT = 1 << 16




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
        self.reader = TableReader(kernel.target, self.r.page_size, self.problems)
        self._scratch: Optional[np.ndarray] = None
        self._bscratch: Optional[np.ndarray] = None
        self.keep = keep_entries
        self.kept_uniform: List[np.ndarray] = []
        self.kept_dense: List[Tuple[np.ndarray, np.ndarray]] = []
        self.shadow = EarlyShadow(kernel, root)

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
        if self.shadow.reached:
            self.shadow.record(self.tables, self.edges, self.kept_dense if self.keep else None)
        runs = merge(np.concatenate(self.runs) if self.runs else np.empty(0, RUN_DTYPE), spans=self.spans)
        runs = clip(runs, self.lo, self.hi)
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
            {"seconds": elapsed, "bytes_read": self.reader.bytes_read, "reads": self.reader.reads,
             "tables": int(len(cols[0]))},
            self._kept() if self.keep else None,
        )

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
        D, rows = self.reader.read_tables(level, phys, va, entries)
        if not len(rows):
            return None
        phys, va, inh, occ_idx = phys[rows], va[rows], inh[rows], occ_idx[rows]
        E = D.E
        lo, hi = np.uint64(self.lo), np.uint64(self.hi)
        # Rows wholly inside [lo, hi]; only the others need per-entry VAs.
        row_last = va + (np.uint64(E) * span - np.uint64(1))
        inside = (va >= lo) & (row_last <= hi) & (row_last >= va)
        first = D.column(0)
        uniform, pa_first = self._uniform(level, D, first, inside, span)
        out = []
        u = np.nonzero(uniform)[0]
        if len(u):
            if self.keep:
                self._keep_uniform(phys[u], first[u], span, E)
            valid_counts[occ_idx[u]] = E
            out.append(coalesce_rows(level, np.uint64(E) * span, va[u], pa_first[u],
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
            self.runs.append(merge(np.concatenate(out), spans=self.spans))
        return nxt

    def _uniform(self, level: int, D: Rows, first: np.ndarray, inside: np.ndarray, span):
        """Which rows are uniform: one contiguous physical range with
        identical attributes (and the PA of each row's first entry). Cheap
        column tests first (leaf type in entry 0, no carry out of the OA
        field into attribute bits by the last entry), then one comparison of
        every entry against the generated progression."""
        r = self.r
        n, E = D.n, D.E
        uniform = np.zeros(n, dtype=bool)
        if level == 3:
            leaf_type = 3
        elif level in r.block_levels():
            leaf_type = 1
        else:
            return uniform, None
        if E < 2:
            return uniform, None
        pa_first = r.descs_to_phys(first)
        cand = inside & ((first & np.uint64(3)) == np.uint64(leaf_type))
        cand &= r.descs_to_phys(D.column(E - 1)) == pa_first + np.uint64(E - 1) * span
        if cand.any():
            for s0, e0, A in D.pieces:
                c = cand[s0:e0]
                if c.all():
                    uniform[s0:e0] = self._uniform_rows(A, span)
                elif c.any():
                    ci = np.flatnonzero(c)
                    uniform[s0 + ci] = self._uniform_rows(A[ci], span)
        return uniform, pa_first

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
                if len(self.shadow.keys):
                    sh = np.isin(child_pa, self.shadow.keys)
                    if sh.any():
                        shadow = self.shadow.runs(child_pa[sh], child_va[sh], child_inh[sh], span)
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
        return nxt, merge(runs, spans=self.spans)
