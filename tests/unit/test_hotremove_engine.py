"""The hot-remove engine and rules on small hand-built page tables (4K/48).

Layout: a root PGD -> one PUD table -> one PMD table -> two PTE tables that
map the first 4 MiB of the linear map page by page.
"""

import numpy as np
import pytest

from mminspect.arch.arm64 import Regime
from mminspect.errors import MMInspectError
from mminspect.hotremove.engine import TableState, free_empty_tables, pgtable_range_aligned, unmap_hotplug_range
from mminspect.hotremove.entries import EntryStore
from mminspect.hotremove.policies import RFC2017, Mainline57, Mainline616
from mminspect.hotremove.policy import Era
from mminspect.hotremove.proposal import Proposal
from mminspect.hotremove.simulate import simulate
from mminspect.hotremove.snapshot import Snapshot, TableFacts
from mminspect.memory import Block as MemoryBlock
from mminspect.sparse import Section

U64 = (1 << 64) - 1
R = Regime(12, 48, 48, 48)
PAGE_OFFSET = (-(1 << 48)) & U64
PAGE_END = (-(1 << 47)) & U64
ROOT, PUD, PMD, PTE0, PTE1 = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
RAM = 0x4000_0000  # PHYS_OFFSET
TABLE = 3
PAGE = 0x0068000000000703  # PAGE_KERNEL-like attributes with the page type bits


def tables():
    t = {p: np.zeros(512, dtype=np.uint64) for p in (ROOT, PUD, PMD, PTE0, PTE1)}
    t[ROOT][(PAGE_OFFSET >> 39) & 511] = PUD | TABLE
    t[PUD][0] = PMD | TABLE
    t[PMD][0] = PTE0 | TABLE
    t[PMD][1] = PTE1 | TABLE
    for i in range(512):
        t[PTE0][i] = (RAM + i * 4096) | PAGE
        t[PTE1][i] = (RAM + (512 + i) * 4096) | PAGE
    return t


def _uniform_store(t):
    """``t`` as a snapshot holds it: the PTE tables (uniform: entry i = entry
    0 + i pages) as first descriptor and step, the others in full."""
    ptes = (PTE0, PTE1)
    return EntryStore({p: t[p] for p in (ROOT, PUD, PMD)}, np.array(ptes, dtype=np.uint64),
                      np.array([t[p][0] for p in ptes], dtype=np.uint64),
                      np.full(2, 4096, dtype=np.uint64), np.full(2, 512, dtype=np.int64))


@pytest.mark.parametrize("invalid", [False, True])
@pytest.mark.parametrize("lo_off,hi_off,floor_off", [
    (0, 4 << 20, 0),              # both tables
    (0, 2 << 20, 0),              # one whole table
    (4096, 4 << 20, 0),           # the first table only partly
    (0, 4 << 20, 4096),           # a floor that keeps the first table
    (2 << 20, (2 << 20) + 8192, 0),
])
def test_uniform_tables_replay_like_full_ones(lo_off, hi_off, floor_off, invalid):
    """The engine's whole-table fast path (every entry of an untouched uniform
    table valid: clear it without generating it) gives what the per-entry
    replay gives, also when PTE0's entries are all invalid (WARN_ON(!pte_present))."""
    t = tables()
    if invalid:
        t[PTE0] &= ~np.uint64(1)
    for free_mapped in (False, True):
        states = [TableState(R, ROOT, t), TableState(R, ROOT, _uniform_store(t))]
        for st in states:
            lo, hi = PAGE_OFFSET + lo_off, PAGE_OFFSET + hi_off
            unmap_hotplug_range(st, lo, hi, free_mapped)
            free_empty_tables(st, lo, hi, PAGE_OFFSET + floor_off, PAGE_END)
        a, b = states
        assert a.events == b.events
        assert a.events  # something happened
        for p in (PMD, PTE0, PTE1):
            assert np.array_equal(a.entries(p), b.entries(p)), hex(p)


def test_pgtable_range_aligned_follows_the_kernel():
    mask = ~((1 << 21) - 1) & U64
    assert pgtable_range_aligned(PAGE_OFFSET, PAGE_OFFSET + (2 << 20), PAGE_OFFSET, PAGE_END, mask)
    # start below floor after masking
    assert not pgtable_range_aligned(PAGE_OFFSET + 4096, PAGE_OFFSET + (2 << 20), PAGE_OFFSET + 4096, PAGE_END, mask)
    # ceiling 0 means the top of the address space
    assert pgtable_range_aligned((-(2 << 20)) & U64, 0, 0, 0, mask)
    # a ceiling that masks to zero refuses
    assert not pgtable_range_aligned(PAGE_OFFSET, PAGE_OFFSET + 4096, 0, 4096, mask)
    # end beyond ceiling, in unsigned arithmetic
    assert not pgtable_range_aligned(PAGE_OFFSET, PAGE_END + 4096, PAGE_OFFSET, PAGE_END, mask)


def test_leaf_pass_then_table_pass_frees_only_the_empty_table():
    st = TableState(R, ROOT, tables())
    lo, hi = PAGE_OFFSET, PAGE_OFFSET + (2 << 20)
    unmap_hotplug_range(st, lo, hi, free_mapped=False)
    free_empty_tables(st, lo, hi, PAGE_OFFSET, PAGE_END)
    freed = [e.phys for e in st.events if e.kind == "free_table"]
    assert freed == [PTE0]
    assert st.entries(PMD)[0] == 0 and st.entries(PMD)[1] != 0
    assert st.entries(PTE1).all()
    assert not any(e.kind == "free_data" for e in st.events)  # linear map: the RAM stays


def test_floor_keeps_an_empty_table_whose_span_leaves_the_range():
    st = TableState(R, ROOT, tables())
    lo, hi = PAGE_OFFSET, PAGE_OFFSET + (2 << 20)
    unmap_hotplug_range(st, lo, hi, free_mapped=False)
    free_empty_tables(st, lo, hi, PAGE_OFFSET + 4096, PAGE_END)
    assert not [e for e in st.events if e.kind == "free_table"]
    kept = [e for e in st.events if e.kind == "keep_table"]
    assert kept and kept[0].phys == PTE0 and "floor" in kept[0].detail


def test_whole_range_frees_up_to_but_never_the_root():
    st = TableState(R, ROOT, tables())
    lo, hi = PAGE_OFFSET, PAGE_OFFSET + (1 << 39)
    unmap_hotplug_range(st, lo, hi, free_mapped=True)
    free_empty_tables(st, lo, hi, PAGE_OFFSET, PAGE_END)
    freed = {e.phys for e in st.events if e.kind == "free_table"}
    assert freed == {PTE0, PTE1, PMD, PUD}
    assert sum(e.size for e in st.events if e.kind == "free_data") == 4 << 20


def _snapshot(facts, era=None, blocks_early=False):
    t = tables()
    parents = {PUD: [(ROOT, (PAGE_OFFSET >> 39) & 511)], PMD: [(PUD, 0)], PTE0: [(PMD, 0)], PTE1: [(PMD, 1)]}
    names = {PUD: ("PUD", 1), PMD: ("PMD", 2), PTE0: ("PTE", 3), PTE1: ("PTE", 3)}
    tf = {}
    for p, (name, level) in names.items():
        tf[p] = TableFacts(p, level, name, PAGE_OFFSET, "linear map", list(parents[p]), ["init_mm"], **facts.get(p, {}))
    kernel = {
        "osrelease": "test",
        "regime": {"page_size": 4096, "va_bits": 48, "vabits_actual": 48, "pa_bits": 48},
        "layout": {"page_offset": PAGE_OFFSET, "page_end": PAGE_END,
                   "vmemmap_start": 0xFFFFFC0000000000, "vmemmap_end": 0xFFFFFE0000000000},
        "phys_offset": RAM, "struct_page_size": 64, "section_size": 2 << 20, "block_size": 2 << 20,
    }
    sections = [Section(RAM // (2 << 20) + i, RAM + i * (2 << 20), 2 << 20, 0x7 | (8 if blocks_early else 0))
                for i in range(2)]
    blocks = [MemoryBlock(s.nr, s.start, s.size, "online", "Movable", 0, blocks_early) for s in sections]
    return Snapshot(kernel, era or Era(), ROOT, tf, t, sections, blocks)


def _rules(result):
    return sorted({f.rule for f in result.findings})


def test_balanced_when_neither_ctor_nor_dtor():
    snap = _snapshot({p: {"typed": False, "reserved": False} for p in (PTE0, PTE1, PMD, PUD)})
    res = simulate(snap, Proposal(RAM, RAM + (2 << 20)), Mainline57(snap.era))
    assert [e.phys for e in res.freed] == [PTE0]
    assert res.findings == [] and res.delta_nr_pagetable == 0


def test_ctor_without_dtor_is_found_with_the_bad_page_message():
    era = Era(page_type="pgty", init_mm_ctor=True, free_clears_type=False, check_pages=True)
    snap = _snapshot({p: {"typed": True, "reserved": False} for p in (PTE0, PTE1, PMD, PUD)}, era)
    res = simulate(snap, Proposal(RAM, RAM + (2 << 20)), Mainline616(era))
    assert _rules(res) == ["ctor without dtor"]
    assert any("nonzero mapcount" in m for f in res.findings for m in f.messages)
    assert res.drift == 1  # the counter keeps a page that is gone
    fixed = simulate(snap, Proposal(RAM, RAM + (2 << 20)), Mainline616(era, {"dtor_fix": "yes"}))
    assert fixed.findings == [] and fixed.delta_nr_pagetable == -1 and fixed.drift == 0


def test_dtor_without_ctor_and_reserved_pages():
    era = Era(page_type="inverted", debug_vm=True)
    snap = _snapshot({PTE0: {"typed": False, "reserved": True}}, era)
    res = simulate(snap, Proposal(RAM, RAM + (2 << 20)), RFC2017(era))
    # The RFC sends reserved pages to free_reserved_page(): no dtor, balanced.
    assert _rules(res) == []
    snap = _snapshot({PTE0: {"typed": False, "reserved": False}}, era)
    res = simulate(snap, Proposal(RAM, RAM + (2 << 20)), RFC2017(era))
    assert _rules(res) == ["dtor without ctor"]
    assert any("VM_BUG_ON_PAGE(!PageTable(page))" in m for f in res.findings for m in f.messages)
    assert res.drift == -1
    snap = _snapshot({PTE0: {"typed": False, "reserved": True}}, era)
    res = simulate(snap, Proposal(RAM, RAM + (2 << 20)), Mainline57(era))
    assert _rules(res) == ["memblock page freed to buddy"]


def test_shared_and_image_tables_are_critical():
    snap = _snapshot({PTE0: {"typed": False, "reserved": False, "image_symbol": "bm_pte"}})
    snap.tables[PTE0].parents.append((PUD, 7))  # also referenced from elsewhere
    res = simulate(snap, Proposal(RAM, RAM + (2 << 20)), Mainline57(snap.era))
    assert {"kernel-image table freed", "shared table freed"} <= set(_rules(res))
    assert res.worst() == "critical"


def test_kernel_refusals():
    snap = _snapshot({}, blocks_early=True)
    res = simulate(snap, Proposal(RAM, RAM + (2 << 20)), Mainline57(snap.era))
    assert not res.simulated and res.refusals[0].message == (
        f"Boot memory [{RAM:x} {RAM + (2 << 20):x}] offlining attempted")
    with pytest.raises(MMInspectError, match="unaligned hotplug range"):
        simulate(snap, Proposal(RAM, RAM + 4096), Mainline57(snap.era))
    forced = simulate(snap, Proposal(RAM, RAM + (2 << 20)), Mainline57(snap.era), force=True)
    assert forced.simulated and forced.freed


@pytest.mark.parametrize("policy", [Mainline57, RFC2017])
def test_snapshot_roundtrip_gives_the_same_result(tmp_path, policy):
    snap = _snapshot({p: {"typed": False, "reserved": False} for p in (PTE0, PTE1, PMD, PUD)})
    path = tmp_path / "s.npz"
    snap.save(str(path))
    again = Snapshot.load(str(path))
    a = simulate(snap, Proposal(RAM, RAM + (4 << 20)), policy(snap.era))
    b = simulate(again, Proposal(RAM, RAM + (4 << 20)), policy(again.era))
    assert [e.phys for e in a.freed] == [e.phys for e in b.freed]
    assert a.findings == b.findings


VMEMMAP_START = 0xFFFFFC0000000000


def _vmemmap_snapshot(era):
    """66 hot-added 2 MiB sections whose memmap sits in one PTE-mapped vmemmap
    table (as for base-page vmemmap) with no ctor (vmemmap_alloc_block).
    2 MiB of RAM has 32 KiB of memmap, 8 vmemmap PTEs: removing 128 MiB
    empties the vmemmap PTE table."""
    snap = _snapshot({p: {"typed": True, "reserved": False} for p in (PTE0, PTE1, PMD, PUD)}, era)
    vroot_i = (VMEMMAP_START >> 39) & 511
    VPUD, VPMD, VPTE = 0x6000, 0x7000, 0x8000
    t = snap.entries
    for p in (VPUD, VPMD, VPTE):
        t[p] = np.zeros(512, dtype=np.uint64)
    t[ROOT][vroot_i] = VPUD | TABLE
    # pfn_to_page(RAM >> 12) with PHYS_OFFSET == RAM is VMEMMAP_START itself.
    t[VPUD][0] = VPMD | TABLE
    t[VPMD][0] = VPTE | TABLE
    for i in range(512):
        t[VPTE][i] = (0x9000_0000 + i * 4096) | PAGE
    for p, level, name, parent in ((VPUD, 1, "PUD", (ROOT, vroot_i)), (VPMD, 2, "PMD", (VPUD, 0)),
                                   (VPTE, 3, "PTE", (VPMD, 0))):
        snap.tables[p] = TableFacts(p, level, name, VMEMMAP_START, "vmemmap", [parent], ["init_mm"],
                                    typed=False, reserved=False)
    snap.kernel["section_size"] = snap.kernel["block_size"] = 2 << 20
    for i in range(64):
        snap.sections.append(Section(snap.sections[0].nr + i + 2, RAM + (i + 2) * (2 << 20), 2 << 20, 0x7))
        snap.blocks.append(MemoryBlock(snap.sections[-1].nr, snap.sections[-1].start, 2 << 20, "online",
                                       "Movable", 0, False))
    return snap, VPTE


def test_s14_after_the_fix_vmemmap_tables_get_a_dtor_without_ctor():
    era = Era(page_type="pgty", init_mm_ctor=True, free_clears_type=True, ptlock_free_null_safe=True)
    snap, vpte = _vmemmap_snapshot(era)
    prop = Proposal(RAM, RAM + (128 << 20))
    after = simulate(snap, prop, Mainline616(era, {"dtor_fix": "yes"}))
    s14 = [f for f in after.findings if f.rule == "dtor without ctor"]
    # The whole vmemmap branch empties: its PTE, PMD and PUD tables are freed,
    # each through vmemmap_free() with a dtor and no ctor behind it.
    assert sorted(f.phys for f in s14) == [vpte - 0x2000, vpte - 0x1000, vpte]
    assert {f.routine for f in s14} == {"vmemmap_free"}
    assert after.drift == -3  # NR_PAGETABLE ends three below the typed-page count
    before = simulate(snap, prop, Mainline616(era))
    assert {f.rule for f in before.findings} == {"ctor without dtor"}
    assert vpte not in {f.phys for f in before.findings}  # untyped, no dtor: balanced


@pytest.mark.parametrize("page_shift,va_bits,vabits_actual", [
    (12, 52, 48),  # 4K/52 LPA2 build folded to 4 levels
    (14, 52, 47),  # 16K/52 LPA2 build folded to 3 levels
    (14, 48, 48),  # 16K/48: a 2-entry PGD
    (16, 52, 48),  # 64K/52 on a CPU without LVA
    (16, 42, 42),  # 64K/42: 2 levels
])
def test_s18_the_root_page_is_never_freed(page_shift, va_bits, vabits_actual):
    r = Regime(page_shift, va_bits, vabits_actual, 48)
    n = r.entries_per_table
    base = (-(1 << (va_bits if not r.folded else vabits_actual))) & U64
    root = 0x10_0000
    tables = {root: np.zeros(r.root_entries(index_bits=va_bits), dtype=np.uint64)}
    phys, parent, idx = root, None, (base >> r.shift(r.top_level)) & (len(tables[root]) - 1)
    for level in range(r.top_level, 3):
        child = phys + (1 << 20)
        tables[child] = np.zeros(n, dtype=np.uint64)
        tables[phys][idx if level == r.top_level else 0] = child | TABLE
        phys, idx = child, 0
    tables[phys][0] = RAM | PAGE
    st = TableState(r, root, tables)
    span = 1 << r.shift(r.top_level)
    unmap_hotplug_range(st, base, (base + span) & U64, False)
    free_empty_tables(st, base, (base + span) & U64, 0, 0)
    freed = {e.phys for e in st.events if e.kind == "free_table"}
    assert root not in freed
    assert freed == set(tables) - {root}
    assert st.entries(root).any() == False  # noqa: E712  (the root's entry was cleared, the page kept)


def test_builtin_policies_come_through_the_entry_point_group():
    from mminspect.hotremove.policy import available_policies

    assert {"rfc2017", "v5.7", "v6.16", "v6.16-dtor"} <= set(available_policies())


def test_example_third_party_policy_balances_s14():
    from pathlib import Path

    from mminspect.hotremove.policy import get_policy, load_plugin_file

    plugin = Path(__file__).parents[2] / "plugins" / "example_policy" / "mminspect_balanced_dtor.py"
    assert load_plugin_file(str(plugin)) == ["balanced-dtor"]
    era = Era(page_type="pgty", init_mm_ctor=True, free_clears_type=True, ptlock_free_null_safe=True)
    snap, _ = _vmemmap_snapshot(era)
    res = simulate(snap, Proposal(RAM, RAM + (128 << 20)), get_policy("balanced-dtor", era))
    assert res.freed and res.findings == [] and res.drift == 0
