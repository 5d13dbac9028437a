"""Leaf runs join when their physical range continues, or when they map the
same page again (KASAN's early shadow page behind terabytes of PTEs); a chain
never mixes the two."""

import numpy as np

from mminspect.walk import CLS_LEAF, RUN_DTYPE, _merge

PAGE = 4096
SPANS = np.array([0, 1 << 39, 1 << 30, 1 << 21, PAGE], dtype=np.uint64)  # levels -1 .. 3


def _runs(pas, level=3, size=PAGE, rep=0):
    runs = np.zeros(len(pas), RUN_DTYPE)
    runs["va"] = np.arange(len(pas), dtype=np.uint64) * np.uint64(size)
    runs["size"] = size
    runs["pa"] = pas
    runs["attr"] = 0x703
    runs["level"] = level
    runs["cls"] = CLS_LEAF
    runs["rep"] = rep
    return runs


def _shape(out):
    return [(int(r["va"]), int(r["size"]), int(r["pa"]), int(r["rep"])) for r in out]


def test_same_page_joins_as_one_rep_run():
    P = 0x40000000
    assert _shape(_merge(_runs([P] * 512), spans=SPANS)) == [(0, 512 * PAGE, P, 1)]
    # Without spans (the old behaviour) nothing joins.
    assert len(_merge(_runs([P] * 4))) == 4


def test_contiguous_and_repeated_chains_do_not_mix():
    P = 0x40000000
    out = _shape(_merge(_runs([P, P + PAGE, P + PAGE, P + PAGE, P + 2 * PAGE]), spans=SPANS))
    # [P, P+1] contiguous; then P+1 twice more would repeat: the clash drops the join.
    assert out[0] == (0, 2 * PAGE, P, 0)
    covered = sum(size for _, size, _, _ in out)
    assert covered == 5 * PAGE
    for va, size, pa, rep in out:
        for off in range(0, size, PAGE):  # every page still translates as before
            want = [P, P + PAGE, P + PAGE, P + PAGE, P + 2 * PAGE][(va + off) // PAGE]
            assert (pa if rep else pa + off) == want


def test_rep_runs_of_bigger_entries_join_with_pte_repeats():
    P = 0x40000000
    a = _runs([P], rep=1, size=1 << 30)  # an entry referencing the early shadow PMD table
    b = _runs([P, P])
    b["va"] += np.uint64(1 << 30)
    out = _merge(np.concatenate((a, b)), spans=SPANS)
    assert _shape(out) == [(0, (1 << 30) + 2 * PAGE, P, 1)]
    # A rep run never joins a contiguous neighbour.
    c = _runs([P + PAGE])
    c["va"] += np.uint64((1 << 30) + 2 * PAGE)
    assert len(_merge(np.concatenate((out, c)), spans=SPANS)) == 2
