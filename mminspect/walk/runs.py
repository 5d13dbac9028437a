"""
Leaf, hole and invalid runs: building and coalescing
----------------------------------------------------

A run (:data:`~mminspect.walk.model.RUN_DTYPE`) is a VA range at one level
that is one thing all along: a leaf mapping of one physical range with one
set of attributes, a hole of empty entries, or non-zero invalid entries. As
arch/arm64/mm/ptdump.c's ``note_page()`` does, runs that continue each other
are joined; unlike it, leaves join only when their physical range continues
too (or maps one page again and again: a ``rep`` run), so a run translates.
"""

from typing import Optional

import numpy as np

from mminspect.walk.model import CLS_LEAF, RUN_DTYPE

__all__ = ("clip", "coalesce_rows", "merge")


def clip(runs: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Trim the first and last run to ``[lo, hi]`` (``hi`` inclusive)."""
    if not len(runs):
        return runs
    first = runs[0]
    if first["va"] < np.uint64(lo):
        d = np.uint64(lo) - first["va"]
        runs[0]["size"] = first["size"] - d
        if first["cls"] == CLS_LEAF and not first["rep"]:
            runs[0]["pa"] = first["pa"] + d
        runs[0]["va"] = lo
    last = runs[-1]
    end_incl = int(last["va"]) + int(last["size"]) - 1
    if end_incl > hi:
        runs[-1]["size"] = hi - int(last["va"]) + 1
    return runs


def coalesce_rows(level, size, va, pa, attr, inh) -> np.ndarray:
    """Leaf runs of whole uniform tables (each ``size`` bytes), sorted by VA
    and coalesced, built from plain columns (cheaper than :func:`merge`)."""
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


def merge(runs: np.ndarray, presorted: bool = False, spans: Optional[np.ndarray] = None) -> np.ndarray:
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
