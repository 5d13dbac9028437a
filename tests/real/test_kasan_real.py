"""KASAN kernels (debug-6.12-4k-kasan): the shadow region's shared early
shadow tables.

mm/kasan/init.c maps every part of the shadow that no real shadow memory backs
through kasan_early_shadow_{pud,pmd,pte} (bss of the image), all to
kasan_early_shadow_page; arm64's kasan_init() maps the shadow of memory and of
the image with memblock pages (kasan_alloc_zeroed_page()). The kernel's ptdump
does not descend into the early tables (note_kasan_page_table()). Expected
values come from drgn (symbols, follow_phys) and the kernel's sources, never
from mminspect's output.
"""

import time

import drgn
import pytest
from drgn.helpers.linux.mm import follow_phys

import mminspect
from mminspect.classify import classifier_for, classify_walk

EARLY = ("kasan_early_shadow_pud", "kasan_early_shadow_pmd", "kasan_early_shadow_pte")


def _kasan(real_prog):
    dump, prog = real_prog
    try:
        prog.symbol("kasan_early_shadow_pte")
    except LookupError:
        pytest.skip(f"{dump.kernel_id} has no generic or software tag-based KASAN")
    return dump, prog, mminspect.open(prog=prog)


def _pa(prog, name):
    return prog.symbol(name).address - prog["kimage_voffset"].value_()


def test_walk_is_linear_and_whole(real_prog):
    """The 32 TiB shadow costs a few table pages: no shared-table problem,
    every early table once, with every entry that references it."""
    dump, prog, k = _kasan(real_prog)
    t0 = time.perf_counter()
    w = mminspect.walk(k, "init_mm")
    seconds = time.perf_counter() - t0
    assert not w.problems
    assert seconds < 5, seconds
    tables = {t.phys: t for t in w.tables()}
    pud, pmd, pte = (_pa(prog, n) for n in EARLY)
    E = w.regime.entries_per_table
    for phys in (pud, pmd, pte):
        assert tables[phys].valid == E
    # Every entry of the early table above is a parent.
    assert {(p.phys, p.index) for p in tables[pmd].parents} >= {(pud, i) for i in range(E)}
    assert {(p.phys, p.index) for p in tables[pte].parents} >= {(pmd, i) for i in range(E)}
    # The early PUD table sits behind PGD entries of swapper_pg_dir.
    assert {p.phys for p in tables[pud].parents} == {w.root.phys}


def test_early_shadow_translates_to_the_early_shadow_page(real_prog):
    dump, prog, k = _kasan(real_prog)
    w = mminspect.walk(k, "init_mm")
    page = _pa(prog, "kasan_early_shadow_page")
    lo, hi = k.layout.kasan_shadow
    rep = [m for m in w.mappings() if m.repeat]
    assert rep and all(m.pa == page and lo <= m.va and m.end <= hi for m in rep)
    assert sum(m.size for m in rep) > (1 << 40)  # terabytes, in a few ranges
    assert len(rep) < 100
    for m in rep:
        for va in (m.va, m.va + m.size // 2 + 123, m.end - 1):
            assert w.translate(va) == follow_phys(prog["init_mm"].address_of_(), va).value_()
    # The shadow of the first byte of the linear map's hole is the early page
    # only where kasan_init() left it unbacked; a real shadow page is not.
    real = next(m for m in w.mappings() if lo <= m.va < hi and not m.repeat)
    assert w.translate(real.va) != page


def test_early_tables_are_image_and_real_shadow_tables_memblock(real_prog):
    dump, prog, k = _kasan(real_prog)
    w = mminspect.walk(k, "init_mm")
    cl = classify_walk(k, w, classifier_for(k))
    by_phys = {t.phys: t for t in cl}
    for name in EARLY:
        t = by_phys[_pa(prog, name)]
        assert t.origin == "kernel-image" and t.image_symbol == name, t
    shadow = [t for t in cl if t.region == "KASAN shadow" and t.image_symbol is None]
    assert shadow
    # Boot: every real shadow table is kasan_init()'s (memblock); later ones
    # (KASAN_VMALLOC, a hot-added block's shadow) come from vmalloc's allocators.
    if dump.scenario == "boot":
        vm = [t for t in shadow if t.origin != "memblock"]
        lo, hi = k.layout.kasan_shadow
        assert all(t.origin in ("buddy-ctor", "buddy-no-ctor") for t in vm), vm
        assert sum(t.origin == "memblock" for t in shadow) >= len(shadow) // 2
