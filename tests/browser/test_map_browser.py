"""``mminspect map`` pages in a real browser (Debian's chromium, headless,
driven over the DevTools protocol by tests/browser/cdp.py).

Each page is opened from disk; the test reads the DOM after the script ran
and compares it with the classification and the simulation computed here:
the marks per origin, the legend's counts, the overlay's freed and kept
table pages; no console error or exception; a screenshot is saved
(``$MMINSPECT_SCREENSHOTS`` keeps a copy). A synthetic server kernel with
more tables than the page draws as marks checks the density map and the
zoom down to marks. Real dumps: tests/real/test_map_real.py.
"""

import json
import os

import pytest

from mminspect.classify import classify_roots, resolve_roots
from mminspect.cli import bundled_sample, open_kernel
from mminspect.hotremove import Proposal, capture_snapshot, select_policy, simulate
from tests.browser.mapcheck import (Chromium, expected_tables, find_chromium, in_range, legend, marks, open_map,
                                    overlay, run_map, save_shot, view, zoom_to)
from collections import Counter

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium (apt-get install chromium)")
GiB = 1 << 30
BLOCK = 128 << 20


@pytest.fixture(scope="module")
def browser():
    with Chromium() as b:
        yield b


@pytest.mark.skipif(bundled_sample() is None, reason="no bundled sample")
def test_sample_with_the_dimm_removed(browser, tmp_path):
    out = tmp_path / "sample-map.html"
    run_map("--block", "16..23", "-o", str(out))
    k = open_kernel(bundled_sample(), (), False, None)
    roots = resolve_roots(k, "init_mm") + resolve_roots(k, "efi_mm")
    want = expected_tables(classify_roots(k, roots))
    snap = capture_snapshot(k)
    result = simulate(snap, Proposal(16 * BLOCK, 24 * BLOCK), select_policy(snap.era))

    page = open_map(browser, out)
    assert view(page)[0] == "marks"
    drawn = marks(page)
    assert drawn == want
    assert legend(page) == {o: n for o, n in Counter(want.values()).items()} | \
        {o: 0 for o in legend(page) if o not in want.values()}
    freed, kept = overlay(page)
    assert freed == {e.phys for e in result.freed} and len(freed) == 513
    assert kept == {e.phys for e in result.kept}
    text = page.evaluate("document.getElementById('proposal-body').textContent")
    assert "513 table pages (512 PTE, 1 PMD)" in text and "+0 counter" in text
    save_shot(page, tmp_path / "sample-map.png")

    # hover evidence: the text classify prints for that table
    t = next(t for t in classify_roots(k, resolve_roots(k, "efi_mm"))[0].records() if t.level_name == "PTE")
    page.evaluate(f"document.querySelector('#map-svg .mark[data-phys=\"{t.phys}\"]')"
                  ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    details = page.evaluate("document.getElementById('details-body').textContent")
    assert "; ".join((t.allocator,) + t.evidence) in details and "efi_mm" in details

    # the overlay toggles
    shown = "getComputedStyle(document.querySelector('#map-svg .overlay')).display"
    assert page.evaluate(shown) != "none"
    page.evaluate("document.getElementById('overlay-toggle').click()")
    assert page.evaluate(shown) == "none"
    page.evaluate("document.getElementById('overlay-toggle').click()")
    assert page.evaluate(shown) != "none"

    # zoom into the block holding the freed tables: one mark per table there, none lost
    some = min(freed)
    lo, hi = zoom_to(page, some, clicks=1)
    assert hi - lo == BLOCK
    assert marks(page) == in_range(want, lo, hi)
    f2, _ = overlay(page)
    assert f2 == {p for p in freed if lo <= p < hi}
    assert page.errors == []


@pytest.mark.skipif(bundled_sample() is None, reason="no bundled sample")
def test_print_stylesheet_and_text_alternatives(browser, tmp_path):
    out = tmp_path / "m.html"
    run_map("-o", str(out))
    page = open_map(browser, out)
    # text alternatives: the map, every mark and every memory segment has a title
    assert page.evaluate("document.getElementById('map-svg').getAttribute('aria-labelledby')") == "map-title map-desc"
    assert page.evaluate("document.getElementById('map-title').textContent").startswith("Physical memory")
    assert page.evaluate("Array.from(document.querySelectorAll('#map-svg .mark')).every(m => m.querySelector('title'))")
    assert page.evaluate("document.querySelectorAll('#map-svg .row[role=button][aria-label]').length") > 0
    # grey-scale: every origin has its own mark shape (the swatches share a centre and size, so the
    # outlines differ exactly when the shapes do) and its own density pattern
    shapes = json.loads(page.evaluate("JSON.stringify(Array.from(document.querySelectorAll('.legend-origin path.mark'))"
                                      ".map(p => p.getAttribute('d')))"))
    assert len(shapes) == 7 and len(set(shapes)) == 7, shapes
    patterns = json.loads(page.evaluate("JSON.stringify(Array.from(document.querySelectorAll('pattern[id^=\"p-\"]'))"
                                        ".slice(0, 7).map(p => p.innerHTML.replace(/fill=\"[^\"]*\"|stroke=\"[^\"]*\"/g, '')))"))
    assert len(set(patterns)) == 7, patterns
    # no proposal: no overlay checkbox
    assert page.evaluate("document.getElementById('overlay-toggle-label').hidden") is True
    page.call("Emulation.setEmulatedMedia", media="print")
    assert page.evaluate("getComputedStyle(document.getElementById('controls')).display") == "none"
    pdf = tmp_path / "m.pdf"
    page.print_pdf(str(pdf))
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10000
    assert page.errors == []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A 32 GiB page-granular synthetic server (16,000+ tables: more than the
    page draws as marks at once) with 8 GiB hot-added."""
    pytest.importorskip("bench")
    from bench.kernels import ensure_kernel

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MMINSPECT_CACHE")
    os.environ["MMINSPECT_CACHE"] = str(cache)
    try:
        return ensure_kernel(32 * GiB, "page", log=lambda *a: None)
    finally:
        if old is None:
            os.environ.pop("MMINSPECT_CACHE")
        else:
            os.environ["MMINSPECT_CACHE"] = old


def test_server_density_map_zooms_into_marks(browser, server, tmp_path):
    out = tmp_path / "server-map.html"
    hot_lo, hot_size = server.meta["hotadd"]
    run_map("-c", server.core, "--simulate", f"{hot_lo:x}+{hot_size:x}", "-o", str(out), "--mm", "init_mm")
    k = open_kernel(server.core, (), False, None)
    want = expected_tables(classify_roots(k, resolve_roots(k, "init_mm")))
    assert len(want) == server.meta["n_tables"] > 12000
    snap = capture_snapshot(k)
    result = simulate(snap, Proposal(hot_lo, hot_lo + hot_size), select_policy(snap.era))
    freed_want = {e.phys for e in result.freed}
    assert len(freed_want) > 1000

    page = open_map(browser, out)
    assert view(page)[0] == "density"
    assert legend(page) == {o: Counter(want.values()).get(o, 0) for o in legend(page)}
    cells = json.loads(page.evaluate("JSON.stringify(Array.from(document.querySelectorAll('#map-svg .cell'))"
                                     ".map(c => +c.dataset.n))"))
    assert sum(cells) == len(want)
    freed_cells = json.loads(page.evaluate("JSON.stringify(Array.from(document.querySelectorAll("
                                           "'#map-svg .ov-cell-freed')).map(c => +c.dataset.n))"))
    assert sum(freed_cells) == len(freed_want)
    save_shot(page, tmp_path / "server-density.png")
    # down to marks where the freed tables are
    target = min(freed_want)
    lo, hi = zoom_to(page, target)
    assert marks(page) == in_range(want, lo, hi) and lo <= target < hi
    freed, _ = overlay(page)
    assert freed == {p for p in freed_want if lo <= p < hi} and freed
    save_shot(page, tmp_path / "server-marks.png", full_page=False)
    page.evaluate("document.getElementById('zoom-out').click()")
    assert view(page)[0] == "density"
    assert page.errors == []
