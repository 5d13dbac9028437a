"""Reading a ``mminspect map`` page in headless Chromium: what the DOM shows
(marks, density cells, overlay, legend), and driving it as a user does
(clicking rows to zoom, the overlay checkbox). The expectations the tests
compare it with come from the classification and the simulation, never from
the page's own JSON."""

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, Set, Tuple

from tests.browser.cdp import Chromium, Page, find_chromium

__all__ = ("Chromium", "expected_tables", "find_chromium", "legend", "marks", "open_map", "overlay", "save_shot",
           "zoom_to")


def open_map(browser: Chromium, path) -> Page:
    page = browser.open(Path(path).resolve().as_uri())
    assert page.evaluate("document.body.dataset.ready") == "1", page.errors
    assert page.errors == [], page.errors
    return page


def marks(page: Page) -> Dict[int, str]:
    """phys -> origin of every mark drawn."""
    got = page.evaluate("JSON.stringify(Array.from(document.querySelectorAll('#map-svg .mark'))"
                        ".map(m => [m.dataset.phys, m.dataset.origin]))")
    pairs = json.loads(got)
    out = {int(float(p)): o for p, o in pairs}
    assert len(out) == len(pairs), "a table drawn twice"
    return out


def overlay(page: Page) -> Tuple[Set[int], Set[int]]:
    """(freed, kept) table pages marked by the overlay."""
    def of(cls: str) -> Set[int]:
        got = json.loads(page.evaluate(f"JSON.stringify(Array.from(document.querySelectorAll('#map-svg .{cls}'))"
                                       ".map(m => m.dataset.phys))"))
        return {int(float(p)) for p in got}
    return of("ov-freed"), of("ov-kept")


def legend(page: Page) -> Dict[str, int]:
    got = json.loads(page.evaluate("JSON.stringify(Array.from(document.querySelectorAll('.legend-origin'))"
                                   ".map(e => [e.dataset.origin, e.dataset.count]))"))
    return {o: int(n) for o, n in got}


def view(page: Page) -> Tuple[str, int, int]:
    v = json.loads(page.evaluate("JSON.stringify((s => [s.dataset.mode, +s.dataset.lo, +s.dataset.hi])"
                                 "(document.getElementById('map-svg')))"))
    return v[0], int(v[1]), int(v[2])


def zoom_to(page: Page, phys: int, clicks: int = 0, max_steps: int = 6) -> Tuple[int, int]:
    """Click the row holding ``phys`` (at least ``clicks`` times) until the
    view draws marks; returns the view's physical range."""
    for step in range(max_steps):
        mode, lo, hi = view(page)
        if mode == "marks" and step >= clicks:
            return lo, hi
        ok = page.evaluate(
            "(pa => { const r = Array.from(document.querySelectorAll('#map-svg .row[tabindex]'))"
            f".find(r => +r.dataset.lo <= pa && pa < +r.dataset.hi); if (!r) return false;"
            " r.dispatchEvent(new MouseEvent('click', {bubbles: true})); return true; })" + f"({phys})")
        assert ok, f"no zoomable row holds {phys:#x}"
    raise AssertionError("the view never reached marks")


def expected_tables(classes) -> Dict[int, str]:
    """phys -> origin of the classified table pages (each page once)."""
    out: Dict[int, str] = {}
    for cl in classes:
        origins = cl.origin.tolist()
        from mminspect.classify import ORIGINS

        for p, o in zip(cl.phys.tolist(), origins):
            out.setdefault(int(p), ORIGINS[o])
    return out


def save_shot(page: Page, path, full_page: bool = True) -> Path:
    """A screenshot, also copied to $MMINSPECT_SCREENSHOTS when set."""
    path = Path(path)
    page.screenshot(str(path), full_page=full_page)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    keep = os.environ.get("MMINSPECT_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def run_map(*args) -> subprocess.CompletedProcess:
    p = subprocess.run(["mminspect", "map", *args], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    return p


def in_range(tables: Dict[int, str], lo: int, hi: int) -> Dict[int, str]:
    return {p: o for p, o in tables.items() if lo <= p < hi}


def count(tables: Iterable[str]) -> Counter:
    return Counter(tables)
