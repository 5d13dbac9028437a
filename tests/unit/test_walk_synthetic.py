"""The walker on synthetic arm64 kernels of every translation regime.

Each regime (every granule x VA size x level count arm64 Linux allows, LPA,
LPA2 active and folded, 64K/52 without LVA) gets a seeded sample kernel with
page, contiguous and block mappings at every legal level, shared tables, a
loop, tables outside RAM and tables left out of the dump. The walker must
agree with the generator's ground truth and with drgn's own translation, and
must list every table page the generator built, with its parents.
"""

import pytest

import mminspect
from mminspect.synthetic import REGIMES
from mminspect.synthetic.builder import Status
from mminspect.synthetic.oracle import FAULT, drgn_translate, sample_vas
from mminspect.synthetic.sample import make_sample
from mminspect.synthetic.vmcore import write_vmcore
from mminspect.walk import walk


@pytest.fixture(scope="module", params=REGIMES, ids=[r.name for r in REGIMES])
def synthetic(request, tmp_path_factory):
    built = make_sample(request.param, seed=7)
    path = tmp_path_factory.mktemp(request.param.name) / "vmcore"
    write_vmcore(str(path), built)
    kernel = mminspect.open(core=str(path))
    walks = {}
    for name, rr in built.roots.items():
        if rr.ttbr == 1:
            walks[name] = walk(kernel, kernel.root("init_mm"))
        else:
            walks[name] = walk(kernel, kernel.user_root(name, rr.pa))
    return built, kernel, walks


def test_regime_from_vmcoreinfo(synthetic):
    built, kernel, _ = synthetic
    r = built.regime
    assert kernel.regime.page_size == r.page_size
    assert kernel.regime.vabits_actual == r.vabits_actual
    assert kernel.regime.levels == r.levels
    assert kernel.regime.lpa2 == r.lpa2_active


def test_translation_matches_ground_truth_and_drgn(synthetic):
    built, kernel, walks = synthetic
    prog = kernel.target.prog
    checked = 0
    for root, va in sample_vas(built, seed=3, per_run=4):
        truth = built.lookup(root, va)
        if truth.status == Status.ANOMALY:
            continue
        ours = walks[root].translate(va)
        if truth.dump_view == "mapped":
            assert ours == truth.pa, f"{root} {va:#x}: walker {ours} truth {truth.pa:#x}"
        else:
            assert ours is None, f"{root} {va:#x}: walker {ours:#x}, truth {truth.dump_view}"
        rr = built.roots[root]
        theirs = drgn_translate(prog, rr.va, va)
        if theirs != FAULT:
            assert ours == theirs, f"{root} {va:#x}: walker {ours} drgn {theirs}"
        checked += 1
    assert checked > 100


def test_every_table_found_once_with_its_parents(synthetic):
    built, kernel, walks = synthetic
    r = kernel.regime
    for root, w in walks.items():
        ours = {t.phys: t for t in w.tables()}
        for t in built.tables():
            if t.root != root or not t.in_dump:
                continue
            pa = t.pa if t.pa in ours else t.pa & ~(r.page_size - 1)
            assert pa in ours, f"{root}: table {t.pa:#x} ({t.name}) not found"
            got = ours[pa]
            assert got.level == t.level and got.level_name == t.name
            if t.parents:
                want = {(p, i) for p, i in t.parents}
                have = {(p.phys, p.index) for p in got.parents}
                assert want <= have, f"{root}: parents of {t.pa:#x}: {have} lack {want - have}"


def test_problems_name_what_could_not_be_seen(synthetic):
    built, kernel, walks = synthetic
    seen = {(p.kind, p.phys) for w in walks.values() for p in w.problems}
    for a in built.anomalies:
        if a.kind == "loop":
            assert any(k == "loop" for k, _ in seen), "a loop was not reported"
        if a.kind == "table_outside_ram":
            assert any(k == "unreadable" for k, _ in seen), "a table outside RAM was not reported"
