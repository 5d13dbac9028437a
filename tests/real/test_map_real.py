"""``mminspect map`` on the recipe's real dumps, read back in headless Chromium.

For each kernel that hot-added memory: the map of its hot-add dump with the
hot-added blocks proposed for removal (and, with two DIMMs, dimm1 alone)
must draw every classified table page once with its origin, and overlay
exactly the table pages the real kernel freed (tables of the hot-add dump
gone from, or reused in, the hot-remove dump), with the kept tables the
simulation names; boot memory proposed for removal is drawn refused with
the kernel's message. Each page is opened from disk with no console error,
and a screenshot is saved ($MMINSPECT_SCREENSHOTS keeps a copy).
"""

import functools
import json
from collections import Counter

import pytest

import mminspect
import vmcores
from mminspect.classify import classify_roots, resolve_roots
from mminspect.hotremove import Proposal, capture_snapshot, diff_snapshots, select_policy, simulate
from tests.browser.mapcheck import (Chromium, expected_tables, find_chromium, legend, marks, open_map, overlay,
                                    run_map, save_shot, view, zoom_to)

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium (apt-get install chromium)")

CASES = [(k, before, after) for k in vmcores.kernel_ids()
         for before, after in (("hotadd", "hotremove"), ("hotadd2", "hotremove1"))]


@pytest.fixture(scope="module")
def browser():
    with Chromium() as b:
        yield b


@functools.cache
def _snapshot(kernel_id, scenario):
    from tests.real.conftest import get_dump

    d = get_dump(kernel_id, scenario)
    return capture_snapshot(mminspect.open(prog=d.program()))


def _embedded(path):
    """The mminspect.map/1 data a page embeds."""
    page = path.read_text()
    start = page.index('id="mminspect-map-data">') + len('id="mminspect-map-data">')
    return json.loads(page[start:page.index("</script>", start)])


@functools.cache
def _dumps(kernel_id, before, after):
    from tests.real.conftest import get_dump

    got = {sc: get_dump(kernel_id, sc) for sc in (before, after)}
    for d in got.values():
        if isinstance(d, str):
            return d
    return got[before], got[after]


def _removed_blocks(dump_before, dump_after):
    """The blocks the real removal took away: those of the DIMM the guest
    unplugged (the recipe's meta), else every hot-added block."""
    removed = (dump_after.meta.get("memory") or {}).get("removed_dimm")
    if removed and removed.get("blocks"):
        return removed["blocks"]
    mem = dump_before.meta["memory"]
    return [b for d in mem.get("dimms") or [mem["dimm"]] for b in d["blocks"]]


@pytest.mark.parametrize("kernel_id, before, after", CASES, ids=[f"{k}-{b}" for k, b, _ in CASES])
def test_map_overlays_the_real_removal(browser, tmp_path, kernel_id, before, after):
    got = _dumps(kernel_id, before, after)
    if isinstance(got, str):
        pytest.skip(got)
    d0, d1 = got
    blocks = _removed_blocks(d0, d1)
    out = tmp_path / f"{kernel_id}-{before}.html"
    run_map("-c", str(d0.vmcore), "-s", str(d0.vmlinux), "--block", f"{min(blocks)}..{max(blocks)}", "-o", str(out))

    k0 = mminspect.open(prog=d0.program())
    roots = resolve_roots(k0, "init_mm")
    try:
        roots += resolve_roots(k0, "efi_mm")
    except mminspect.MMInspectError:
        pass
    want = expected_tables(classify_roots(k0, roots))
    snap0 = _snapshot(kernel_id, before)
    snap1 = _snapshot(kernel_id, after)
    real_freed = set(diff_snapshots(snap0, snap1)["freed"])
    bsize = snap0.kernel["block_size"]
    result = simulate(snap0, Proposal.from_blocks(blocks, bsize), select_policy(snap0.era))

    page = open_map(browser, out)
    assert legend(page) == {o: Counter(want.values()).get(o, 0) for o in legend(page)}
    if view(page)[0] == "marks":
        assert marks(page) == want
    freed, kept = overlay(page)
    assert freed == real_freed, (len(freed), len(real_freed))
    assert kept == {e.phys for e in result.kept}
    save_shot(page, tmp_path / f"map-{kernel_id}-{before}.png")
    if real_freed:  # zoomed into the freed tables: each one a mark with the overlay's cross
        lo, hi = zoom_to(page, min(real_freed), clicks=1)
        assert marks(page) == {p: o for p, o in want.items() if lo <= p < hi}
        assert overlay(page)[0] == {p for p in real_freed if lo <= p < hi}
        save_shot(page, tmp_path / f"map-{kernel_id}-{before}-zoom.png", full_page=False)
    assert page.errors == []


@pytest.mark.parametrize("kernel_id", [k for k in vmcores.kernel_ids()])
def test_boot_memory_removal_is_drawn_refused(browser, tmp_path, kernel_id):
    got = _dumps(kernel_id, "hotadd", "hotremove")
    if isinstance(got, str):
        pytest.skip(got)
    d0, _ = got
    snap = _snapshot(kernel_id, "hotadd")
    boot = next(b for b in snap.blocks if b.early and b.start)
    html = tmp_path / "refused.html"
    p = run_map("-c", str(d0.vmcore), "-s", str(d0.vmlinux), "--block", str(boot.id), "-o", str(html))
    assert "refused" in p.stdout
    prop = _embedded(html)["proposal"]
    assert not prop["simulated"]
    result = simulate(snap, Proposal(boot.start, boot.start + boot.size), select_policy(snap.era))
    want = [(r.rule, r.message) for r in result.refusals if r.fatal]
    assert want and [(r["rule"], r["message"]) for r in prop["refusals"] if r["fatal"]] == want
    page = open_map(browser, html)
    assert page.evaluate("document.querySelectorAll('#map-svg .ov-refused').length") >= 1
    assert want[0][1] in page.evaluate("document.getElementById('proposal-body').textContent")
    assert page.errors == []


@pytest.mark.parametrize("kernel_id", [k for k in vmcores.kernel_ids()])
def test_rows_name_each_blocks_zone_and_node(browser, tmp_path, kernel_id):
    """Each memory block's row names its zone and NUMA node as the kernel's
    memory_blocks xarray gives them (two nodes on the -numa kernel)."""
    from tests.real.conftest import get_dump

    d = get_dump(kernel_id, "boot")
    if isinstance(d, str):
        pytest.skip(d)
    from drgn.helpers.linux.mm import for_each_memory_block

    prog = d.program()
    want = {}
    for mem in for_each_memory_block(prog):
        bid = mem.dev.id.value_()
        want[f"memory{bid}"] = ((mem.zone.name.string_().decode() if mem.zone else None), mem.nid.value_())
    out = tmp_path / "boot.html"
    run_map("-c", str(d.vmcore), "-s", str(d.vmlinux), "-o", str(out))
    page = open_map(browser, out)
    labels = json.loads(page.evaluate("JSON.stringify(Array.from(document.querySelectorAll('#map-svg .row-label'))"
                                      ".map(t => t.textContent))"))
    got = {}
    for text in labels:
        words = text.split()
        if words[0].startswith("memory") and "-" not in words[0]:
            got[words[0]] = (words[1] if len(words) > 2 else None, int(words[-1][1:]))
    assert got == want
    if kernel_id.endswith("-numa"):
        assert {n for _, n in want.values()} == {0, 1}
    assert page.errors == []
