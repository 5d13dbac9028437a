"""``mminspect map``: the mminspect.map/1 data against the classification and
the simulation it draws, and the command's handling of the user's files.

The data is checked table by table on the bundled sample (the capture of
Debian's 6.1 cloud kernel with a hot-added DIMM in blocks 16..23): the runs
expand to exactly the classified table pages, each with the origin, level,
ptlock, ctor state and the evidence text ``classify`` prints; the overlay
holds exactly what :func:`~mminspect.hotremove.simulate` freed and kept.
What a browser makes of it is tests/browser/.
"""

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from mminspect.classify import classify_roots, resolve_roots
from mminspect.cli import bundled_sample, open_kernel
from mminspect.hotremove import Proposal, capture_snapshot, select_policy, simulate
from mminspect.report.map import MAP_SCHEMA, build_map

SAMPLE = bundled_sample()
pytestmark = pytest.mark.skipif(SAMPLE is None, reason="no bundled sample")
BLOCK = 128 << 20
DIMM = Proposal(16 * BLOCK, 24 * BLOCK)


def expand(d):
    """phys -> class dict, from the data's table runs (the documented encoding)."""
    out, start = {}, 0
    step = d["memory"]["page_size"]
    for delta, count, cls in d["tables"]["runs"]:
        start += delta
        for j in range(count):
            out[start + j * step] = d["classes"][cls]
    return out


def expand_freed(p, step):
    out, start = {}, 0
    for delta, count, routine in p["freed"]["runs"]:
        start += delta
        for j in range(count):
            out[start + j * step] = p["freed"]["routines"][routine]
    return out


@pytest.fixture(scope="module")
def sample():
    k = open_kernel(SAMPLE, (), False, None)
    roots = resolve_roots(k, "init_mm") + resolve_roots(k, "efi_mm")
    data = build_map(k, roots, DIMM)
    classes = classify_roots(k, roots)
    snap = capture_snapshot(k)
    result = simulate(snap, DIMM, select_policy(snap.era))
    return k, data, classes, result


def test_every_classified_table_once_with_its_classification(sample):
    k, d, classes, _ = sample
    assert d["schema"] == MAP_SCHEMA
    tables = expand(d)
    want = {}
    for cl in classes:
        for t in cl.records():
            ev = "; ".join((t.allocator,) + t.evidence)
            if t.phys in want:
                want[t.phys]["roots"].append(cl.root.name)
                continue
            want[t.phys] = {"origin": t.origin, "level": t.level_name, "ptlock": t.ptlock, "ctor": t.typed,
                            "region": t.region, "evidence": ev, "roots": [cl.root.name]}
    assert set(tables) == set(want)
    names = [r["name"] for r in d["roots"]]
    for phys, c in tables.items():
        w = want[phys]
        assert (c["origin"], c["level"], c["ptlock"], c["ctor"], c["region"], c["evidence"]) == \
            (w["origin"], w["level"], w["ptlock"], w["ctor"], w["region"], w["evidence"]), hex(phys)
        assert [names[i] for i in c["roots"]] == w["roots"]
    by_origin = Counter(w["origin"] for w in want.values())
    assert d["tables"]["by_origin"] == {o: by_origin.get(o, 0) for o in d["origins"]}
    assert d["tables"]["count"] == len(want) == sum(len(cl) for cl in classes)
    # the sample has both ctor'd and un-ctor'd tables, and several origins
    assert {c["ctor"] for c in tables.values()} >= {True, False}
    assert sum(1 for n in by_origin.values() if n) >= 3


def test_overlay_is_the_simulation(sample):
    k, d, _, result = sample
    p = d["proposal"]
    assert p["simulated"] and (p["start"], p["end"]) == (DIMM.start, DIMM.end)
    freed = expand_freed(p, d["memory"]["page_size"])
    assert freed == {e.phys: e.routine for e in result.freed}
    assert len(freed) == p["freed"]["count"] == 513
    assert [(x["phys"], x["reason"]) for x in p["kept"]] == [(e.phys, e.detail) for e in result.kept]
    assert p["delta_nr_pagetable"] == result.delta_nr_pagetable
    assert len(p["findings"]) == len(result.findings)
    assert sum(m["sections"] for m in p["memmap"]) == len(result.memmap) == 8  # one 128 MiB section per block
    # freed tables are among the drawn ones
    assert set(freed) <= set(expand(d))


def test_memory_blocks_and_sections(sample):
    k, d, classes, _ = sample
    mem = classes[0].classifier.memory
    blocks = []
    for run in d["memory"]["blocks"]:
        blocks += [(run["id"] + j, run["start"] + j * run["size"], run["early"]) for j in range(run["count"])]
    assert blocks == [(b.id, b.start, b.early) for b in mem.blocks]
    secs = []
    for run in d["memory"]["sections"]:
        secs += [(run["start"] + j * run["size"], run["early"]) for j in range(run["count"])]
    assert secs == [(s.start, bool(s.early)) for s in mem.sections]
    hot = [b for b in blocks if not b[2]]
    assert [b[0] for b in hot] == list(range(16, 24))


def test_va_overview_accounts_for_every_mapped_byte(sample):
    from mminspect.walk import walk

    k, d, _, _ = sample
    for root in d["roots"]:
        w = walk(k, k.root(root["name"]))
        total = sum(m.size for m in w.mappings())
        assert sum(g["mapped"] for g in root["regions"]) == total, root["name"]
        for g in root["regions"]:
            assert sum(x["bytes"] for x in g["granularity"]) == g["mapped"]
            assert sum(g["targets"].values()) >= 0
    init = next(r for r in d["roots"] if r["name"] == "init_mm")
    names = {g["name"] for g in init["regions"]}
    assert {"linear map", "vmalloc", "vmemmap", "fixmap", "modules"} <= names
    vmemmap = next(g for g in init["regions"] if g["name"] == "vmemmap")
    assert {x["level"] for x in vmemmap["granularity"]} == {"PMD"}  # the vmemmap is PMD-mapped on 4K
    efi = next(r for r in d["roots"] if r["name"] == "efi_mm")
    assert [g["name"] for g in efi["regions"]] == ["EFI runtime"]


def test_refused_proposal_is_data_not_an_error():
    k = open_kernel(SAMPLE, (), False, None)
    boot = Proposal(8 * BLOCK, 9 * BLOCK)
    d = build_map(k, resolve_roots(k, "init_mm"), boot)
    snap = capture_snapshot(k)
    result = simulate(snap, boot, select_policy(snap.era))
    p = d["proposal"]
    assert not p["simulated"] and not result.simulated
    fatal = [r for r in result.refusals if r.fatal]
    assert [(r["rule"], r["message"]) for r in p["refusals"] if r["fatal"]] == [(r.rule, r.message) for r in fatal]
    assert fatal
    for r in p["refusals"]:  # drawn where the kernel checked, inside the proposal
        assert boot.start <= r["start"] < r["end"] <= boot.end
    assert p["kernel_log"] == list(result.kernel_log)
    assert p["freed"]["count"] == 0


# -- the command ---------------------------------------------------------------------------


def run(*args, cwd=None):
    return subprocess.run(["mminspect", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_writes_html_with_the_json_inside(tmp_path):
    out = tmp_path / "m.html"
    p = run("map", "--block", "16..23", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "513 freed, 3 kept" in p.stdout
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # self-contained: no URL the browser would fetch
    for bad in ("http://", "https://", "src=", "@import", "url(http"):
        assert bad not in page.replace("http://www.w3.org/2000/svg", ""), bad
    start = page.index('id="mminspect-map-data">') + len('id="mminspect-map-data">')
    data = json.loads(page[start:page.index("</script>", start)])
    assert data["schema"] == MAP_SCHEMA and data["proposal"]["freed"]["count"] == 513
    assert [x.name for x in tmp_path.iterdir()] == ["m.html"]  # no temporary file left


def test_cli_json_to_stdout():
    p = run("map", "--format", "json", "-o", "-", "--mm", "efi_mm")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["schema"] == MAP_SCHEMA and [r["name"] for r in d["roots"]] == ["efi_mm"]
    assert d["tables"]["count"] == 9 and d["proposal"] is None


def test_cli_refused_removal_is_drawn(tmp_path):
    out = tmp_path / "m.json"
    p = run("map", "--format", "json", "--block", "8", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "refused" in p.stdout
    sim = run("simulate-remove", "--block", "8", "--format", "json")
    assert sim.returncode == 3  # what simulate-remove says: refused
    want = [(r["rule"], r["message"]) for r in json.loads(sim.stdout)["refusals"]]
    got = json.loads(out.read_text())["proposal"]["refusals"]
    assert [(r["rule"], r["message"]) for r in got] == want and want


def test_cli_never_overwrites_or_aliases(tmp_path):
    out = tmp_path / "m.html"
    out.write_text("mine")
    p = run("map", "-o", str(out))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "exists" in p.stderr and "Traceback" not in p.stderr
    assert out.read_text() == "mine"
    # the dump itself, by name, through a symlink, through a hard link: refused even with --force
    core = tmp_path / "sample.core"
    os.link(SAMPLE, core) if os.stat(SAMPLE).st_dev == os.stat(tmp_path).st_dev else core.symlink_to(SAMPLE)
    link = tmp_path / "alias.html"
    link.symlink_to(core)
    size = os.path.getsize(SAMPLE)
    for target in (core, link, Path(SAMPLE)):
        p = run("map", "-c", str(core), "-o", str(target), "--force")
        assert p.returncode == 2 and "is the input" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert os.path.getsize(SAMPLE) == size
    p = run("map", "-o", str(out), "--force")
    assert p.returncode == 0 and out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("args, words", [
    (("--block", "16", "--block", "18"), "not contiguous"),
    (("--block", "x"), "bad --block"),
    (("--simulate", "zz-yy"), "bad range"),
    (("--simulate", "80000000+1G", "--block", "16"), "one of --simulate"),
    (("--dimm", "dimm0"), "--qemu SOCKET"),
    (("--mm", "nosuchroot"), "nosuchroot"),
])
def test_cli_bad_input_one_line(tmp_path, args, words):
    out = tmp_path / "m.html"
    p = run("map", "-o", str(out), *args)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if not x.startswith("mminspect: no target given")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in p.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
