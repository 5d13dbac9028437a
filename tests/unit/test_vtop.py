"""vtop on synthetic kernels: every stop reason, the effective permissions,
the contiguous-run check, drgn's follow_phys as a check, and the non-present
user entries of both encodings (v5.19..v6.9 and v6.10+), written here from
the layout arch/arm64/include/asm/pgtable.h documents for each era."""

import pytest

import mminspect
from mminspect.errors import MMInspectError
from mminspect.synthetic import REGIMES, REGIMES_BY_NAME, Builder
from mminspect.synthetic.builder import Status
from mminspect.synthetic.oracle import sample_vas
from mminspect.synthetic.sample import make_sample
from mminspect.synthetic.encode import PAGE_KERNEL_ROX, PAGE_SHARED
from mminspect.synthetic.vmcore import write_vmcore
from mminspect.vtop import vtop

U64 = (1 << 64) - 1
BASE = (-(1 << 47)) & U64  # the vmalloc half of a 48-bit TTBR1 range
USER = 0x0000_1000_0000


def _swap(era, typ, offset, exclusive=False, uffd_wp=False):
    """A swap pte as __swp_entry() + __swp_entry_to_pte() build it."""
    if era == "v5.19":  # bits 3-7 type, 8-57 offset, bit 2 exclusive
        v = typ << 3 | offset << 8
    else:  # bits 6-10 type, 12-61 offset, bit 3 uffd-wp
        v = typ << 6 | offset << 12 | (uffd_wp << 3)
    return v | (exclusive << 2)


@pytest.fixture(scope="module", params=["6.1.0-synthetic", "6.12.0-synthetic"])
def kern(request, tmp_path_factory):
    r = REGIMES_BY_NAME["4k-va48"]
    b = Builder(r, osrelease=request.param)
    era = "v5.19" if request.param.startswith("6.1.") else "v6.10"
    ram0 = b.ram[0][0]
    cases = {}
    b.map(BASE, ram0 + (64 << 20), 1 << 12, kind="page")
    cases["page"] = BASE + 0x123
    # The linear map: one alias as __pa() has it, one to a wrong page.
    b.map(b.phys_to_virt(ram0 + (64 << 20)), ram0 + (64 << 20), 1 << 12, kind="page")
    b.map(b.phys_to_virt(ram0 + (65 << 20)), ram0 + (90 << 20), 1 << 12, kind="page")
    b.map(BASE + (2 << 20), ram0 + (128 << 20), 2 << 20, kind="pmd")
    cases["block"] = BASE + (2 << 20) + 0x4567
    b.map(BASE + (4 << 20), ram0 + (160 << 20), 64 << 10, kind="cont_page", prot=PAGE_KERNEL_ROX)
    cases["contiguous"] = BASE + (4 << 20) + 0x5001
    cases["none"] = BASE + (4 << 20) + (1 << 20)  # same PTE table, empty entry
    b.set_raw("swapper", BASE + (6 << 20), 3, 0x1234_5678_0000, note="invalid")
    cases["invalid"] = BASE + (6 << 20)
    b.set_raw("swapper", BASE + (8 << 20), 3, 0x4000_0001, note="0b01 at level 3")
    cases["reserved"] = BASE + (8 << 20)
    b.set_table_outside_ram("swapper", BASE + (1 << 30), 2, 0x10_0000_0000)
    cases["outside-ram"] = BASE + (1 << 30)
    b.map(BASE + (2 << 30), ram0 + (200 << 20), 1 << 12, kind="page")
    gone = b.table_at("swapper", BASE + (2 << 30), 3)
    b.omit_table(gone, mode="zero")  # in p_memsz, not in p_filesz: excluded
    cases["missing"] = BASE + (2 << 30)
    pmd = b.table_at("swapper", BASE, 2)
    pud = b.table_at("swapper", BASE, 1)
    b.link_table("swapper", BASE + (3 << 30), 1, pud)  # a PUD entry pointing to its own table
    cases["loop"] = BASE + (3 << 30) + (2 << 20)
    assert pmd
    # A user mm: one present page, and every kind of non-present entry.
    user = b.add_root("mm", ttbr=0)
    b.map(USER, ram0 + (300 << 20), 1 << 12, kind="page", prot=PAGE_SHARED, root="mm")
    hw = 23 if era == "v5.19" else 25  # MAX_SWAPFILES assumed without DWARF: 22 / 24, then hwpoison
    raw = {
        "swap": _swap(era, 2, 0x1234, exclusive=True, uffd_wp=era == "v6.10"),
        "hwpoison": _swap(era, hw - 1, 0x80123),
        "migration": _swap(era, hw + 2, 0x80456),  # migration write
        "present-invalid": (0x00E8_0000_8012_3F00 | (1 << 58)) & ~1 if era == "v5.19"
        else (0x0060_0000_8012_3F00 | (1 << 11)) & ~1,
    }
    for i, (name, value) in enumerate(raw.items()):
        b.set_raw("mm", USER + ((i + 1) << 12), 3, value)
    built = b.finish()
    path = tmp_path_factory.mktemp("vtop") / "vmcore"
    write_vmcore(str(path), built, full_ram=True)
    k = mminspect.open(core=str(path))
    return k, built, cases, user, era


def test_every_stop_reason(kern):
    k, built, cases, _, _ = kern
    for stop, va in cases.items():
        t = vtop(k, va)
        assert t.stop == stop, f"{va:#x}: {t.stop} ({t.reason}), expected {stop}"
        truth = built.lookup("swapper", va)
        assert (t.pa is not None) == (truth.pa is not None and stop in ("page", "block", "contiguous"))
        if t.pa is not None:
            assert t.pa == truth.pa
        # one step per level walked, the last one saying why it stopped
        assert t.steps and t.steps[0].level_name == "PGD"


def test_levels_and_effective_permissions(kern):
    k, built, cases, _, _ = kern
    t = vtop(k, cases["contiguous"])
    assert [s.level_name for s in t.steps] == ["PGD", "PUD", "PMD", "PTE"]
    assert [s.kind for s in t.steps] == ["table", "table", "table", "page"]
    for a, b in zip(t.steps, t.steps[1:]):
        assert a.next_table == b.table
        assert a.entry == a.table + 8 * a.index
    assert t.effective["ro"] and not t.effective["pxn"] and not t.effective["user"]
    assert t.cont["entries"] == 16 and t.cont["consistent"]
    # drgn's own walker, independently, agrees on the synthetic dump
    drgn_check = next(c for c in t.checks if c.source == "drgn follow_phys")
    assert drgn_check.agrees is True and drgn_check.pa == t.pa
    # The block's PA keeps the offset inside the 2 MiB block
    b = vtop(k, cases["block"])
    assert b.steps[-1].level_name == "PMD" and b.pa % (2 << 20) == 0x4567


def test_linear_map_checks(kern):
    """__pa() and the dump's PT_LOAD headers (p_vaddr -> p_paddr) against
    the tables: they agree where the tables map the linear alias to its own
    page, and the disagreement is reported where they do not."""
    k, built, _, _, _ = kern
    ram0 = built.ram[0][0]
    good = vtop(k, k.phys_to_virt(ram0 + (64 << 20)) + 8)
    by = {c.source: c for c in good.checks}
    assert good.pa == ram0 + (64 << 20) + 8
    assert by["__pa()"].agrees is True and by["PT_LOAD"].agrees is True
    bad = vtop(k, k.phys_to_virt(ram0 + (65 << 20)))
    by = {c.source: c for c in bad.checks}
    assert bad.pa == ram0 + (90 << 20)
    assert by["__pa()"].agrees is False and by["__pa()"].pa == ram0 + (65 << 20)
    assert by["PT_LOAD"].agrees is False and "disagree" in by["PT_LOAD"].detail
    assert by["drgn follow_phys"].agrees is True


def test_nonpresent_user_entries(kern):
    k, built, _, user, era = kern
    mm = f"pgd:{user:x}"
    kinds = [vtop(k, USER + ((i + 1) << 12), mm) for i in range(4)]
    assert all(t.stop == "invalid" for t in kinds)
    swap, hwp, mig, pinv = (t.nonpresent for t in kinds)
    assert swap["kind"] == "swap" and swap["type"] == 2 and swap["offset"] == 0x1234 and swap["exclusive"]
    if era == "v6.10":
        assert swap["uffd_wp"] is True
    assert hwp["kind"] == "hwpoison" and hwp["pfn"] == 0x80123
    assert mig["kind"] == "migration" and mig["special"] == "migration write" and mig["pfn"] == 0x80456
    assert pinv["kind"] == "present-invalid"
    ok = vtop(k, USER + 0x10, mm)
    assert ok.stop == "page" and ok.effective["user"]


def test_addresses_outside_every_root(kern):
    k, *_ = kern
    with pytest.raises(MMInspectError, match="user-half"):
        vtop(k, USER)
    with pytest.raises(MMInspectError, match="outside init_mm"):
        vtop(k, 0xFFF0_0000_0000_0000)


@pytest.mark.parametrize("regime", REGIMES, ids=[r.name for r in REGIMES])
def test_every_regime_against_ground_truth(regime, tmp_path):
    """Every granule x VA x level regime (LPA, LPA2 active and folded,
    64K/52 without LVA): vtop's PA is the generator's wherever the dump
    shows a mapping, and a fault elsewhere; its levels are the regime's."""
    built = make_sample(regime, seed=7)
    write_vmcore(str(tmp_path / "vmcore"), built)
    k = mminspect.open(core=str(tmp_path / "vmcore"))
    checked = 0
    for root, va in sample_vas(built, seed=5, per_run=2):
        truth = built.lookup(root, va)
        if truth.status == Status.ANOMALY:
            continue
        rr = built.roots[root]
        r = k.root("init_mm") if rr.ttbr == 1 else k.user_root(root, rr.pa)
        try:
            t = vtop(k, va, root=r, page_facts=False, checks=False)
        except MMInspectError:
            assert truth.dump_view != "mapped"
            continue
        if truth.dump_view == "mapped":
            assert t.pa == truth.pa, f"{root} {va:#x}: vtop {t.pa} ({t.reason}), truth {truth.pa:#x}"
            assert [s.level for s in t.steps] == list(range(k.regime.top_level, t.steps[-1].level + 1))
        else:
            assert t.pa is None, f"{root} {va:#x}: vtop {t.pa:#x}, truth {truth.dump_view}"
        assert t.steps[0].level == k.regime.top_level
        checked += 1
    assert checked > 50
