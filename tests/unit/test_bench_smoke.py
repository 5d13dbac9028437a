"""The benchmark (bench/, issue 7) at its smallest size, as a smoke test.

No timing is asserted: CI machines vary. What is checked is that the
benchmark builds its kernel, that every stage either ran or says why it could
not, and that the outputs are right: the walk finds exactly the table pages
the generator built, maps exactly the synthetic linear map, and the baseline
reads every one of those pages.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
GiB = 1 << 30


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = cache / "bench.json"
    env = dict(os.environ, MMINSPECT_CACHE=str(cache))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(out.read_text())
    (key,) = data["kernels"]
    return data["kernels"][key], data["results"][key], p.stdout, cache


def test_kernel_is_cached_and_reused(smoke):
    meta, _, _, cache = smoke
    d = cache / "bench" / meta["key"]
    assert (d / "vmcore").exists() and (d / "tables.npy").exists()
    assert meta["linear_size"] == 16 * GiB and meta["mode"] == "page"
    # 16 GiB page-granular: one PTE table per 2 MiB, plus the upper levels,
    # the vmemmap's PMD tables and the vmalloc tables
    assert meta["tables_by_level"]["3"] >= 16 * GiB // (2 << 20)
    assert meta["n_tables"] == sum(meta["tables_by_level"].values())
    # sparse: the memmap is covered but not stored
    assert meta["file_bytes_on_disk"] < meta["file_size"]


def test_walk_finds_every_table_and_maps_the_linear_map(smoke):
    meta, res, _, _ = smoke
    w = res["walk"]
    assert w["status"] == "ok", w
    c = w["checks"]
    assert c["tables"] == meta["n_tables"] == c["expected_tables"]
    assert c["tables_match"]
    assert c["linear_mapped"] == meta["linear_size"] == 16 * GiB
    assert c["problems"] == 0
    assert w["peak_rss_kib"] > 0 and w["seconds"] > 0


def test_baseline_reads_every_table_page(smoke):
    meta, res, _, _ = smoke
    for stage in ("read", "read-bulk"):
        r = res[stage]
        assert r["status"] == "ok", r
        assert r["checks"]["ok"] and r["checks"]["bytes"] == meta["n_tables"] * meta["page_size"]
    assert res["read"]["checks"]["pages"] == meta["n_tables"]


def test_every_stage_ran_or_says_why(smoke):
    _, res, stdout, _ = smoke
    for stage in ("classify", "audit", "remove-1G", "remove-64G"):
        r = res[stage]
        assert r["status"] in ("ok", "n/a"), r
        if r["status"] == "n/a":
            assert r["reason"]
            assert "n/a (" in stdout
    # a 16 GiB kernel has 4 GiB hot-added: the 64 GiB removal cannot apply
    assert res["remove-64G"]["status"] == "n/a"
    if res["classify"]["status"] == "ok":
        assert res["classify"]["checks"]["classified"] == res["walk"]["checks"]["tables"]
    r1 = res["remove-1G"]
    if r1["status"] == "ok":
        # 1 GiB of page-granular linear map: 512 PTE tables go
        assert r1["checks"]["freed_tables"] >= 512


def test_identify_and_diff_stages(smoke):
    """identify finds every table page and maps every RAM page it is given;
    diff of the kernel and its copy without the hot-added linear map frees
    the hot-added range's PMD and PTE tables and unmaps exactly that range."""
    meta, res, stdout, _ = smoke
    for stage in ("walk-roots", "identify-10k", "walk-two", "diff"):
        assert res[stage]["status"] == "ok", res[stage]
    c = res["identify-10k"]["checks"]
    assert c["addresses"] == 10_000 and c["tables_found"] == c["data_mapped_in_init_mm"] == 5000
    d = res["diff"]["checks"]
    assert d["ok"] and d["removed_bytes"] == meta["hotadd"][1] and d["allocated"] == 0
    assert "identify-10k" in stdout and "walk-roots" in stdout


def test_table_is_printed(smoke):
    _, _, stdout, _ = smoke
    assert "(a) read table pages" in stdout and "(b) walk init_mm" in stdout
    assert "us/table page" in stdout


def test_server_kernel_struct_pages(smoke):
    """The struct pages the classifier reads look like real ones."""
    import mminspect
    from mminspect.synthetic.server import PG_RESERVED, PGTY_TABLE

    meta, _, _, cache = smoke
    d = cache / "bench" / meta["key"]
    k = mminspect.open(core=str(d / "vmcore"))
    ps = k.regime.page_shift
    reserved = np.load(d / "reserved.npy")
    typed = np.load(d / "typed.npy")
    w0 = np.frombuffer(k.target.read_virt(k.pfn_to_page(int(reserved[0]) >> ps), 64), "<u8")
    assert w0[0] & (1 << PG_RESERVED) and w0[1] == w0[2] == k.pfn_to_page(int(reserved[0]) >> ps) + 8
    assert (int(w0[6]) & 0xFFFFFFFF) == 0xFFFFFFFF
    assert len(typed) >= 2
    t0 = np.frombuffer(k.target.read_virt(k.pfn_to_page(int(typed[0]) >> ps), 64), "<u8")
    assert (int(t0[6]) & 0xFFFFFFFF) >> 24 == PGTY_TABLE and not t0[0] & (1 << PG_RESERVED)
    from mminspect.sparse import read_sections

    secs = read_sections(k)
    assert sum(s.size for s in secs) == meta["linear_size"]
    assert sum(s.size for s in secs if not s.early) == meta["hotadd"][1]


@pytest.mark.parametrize("regime", ["4k-va48", "16k-va47", "64k-va52-lpa", "4k-va52-lpa2"])
def test_walker_records_unchanged_by_the_rewrite(regime, tmp_path):
    """The issue-7 walker returns exactly the records of the walker before it
    (mminspect/walk.py before issue 7, from git), oddities included: shared tables, loops, tables
    outside RAM or missing from the dump."""
    sys.path.insert(0, str(REPO))
    import mminspect
    from bench.stages import NotAvailable, _walker_before

    try:
        walk_before = _walker_before()
    except NotAvailable as e:
        pytest.skip(str(e))
    from mminspect.synthetic import REGIMES_BY_NAME, make_sample, write_vmcore
    from mminspect.walk import walk

    built = make_sample(REGIMES_BY_NAME[regime], seed=1)
    write_vmcore(str(tmp_path / "vmcore"), built)
    k = mminspect.open(core=str(tmp_path / "vmcore"))
    roots = [k.root("init_mm")] + [k.user_root(n, rr.pa) for n, rr in built.roots.items() if rr.ttbr == 0]
    for root in roots:
        a, b = walk(k, root), walk_before(k, root)
        # Field by field: the runs have gained "rep" (a page mapped over and
        # over, as KASAN's early shadow does), never set on these samples.
        for f in b.runs.dtype.names:
            assert np.array_equal(a.runs[f], b.runs[f]), f
        assert set(a.runs.dtype.names) - set(b.runs.dtype.names) <= {"rep"} and not a.runs["rep"].any()
        for f in ("table_phys", "table_level", "table_va", "table_entries", "table_valid",
                  "edge_child", "edge_parent", "edge_index"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert [str(p) for p in a.problems] == [str(p) for p in b.problems]
        def rec(t):
            return (t.phys, t.level, t.level_name, t.va, t.span, t.entries, t.valid,
                    [(p.phys, p.index) for p in t.parents])

        assert [rec(t) for t in a.tables()] == [rec(t) for t in b.tables()]
