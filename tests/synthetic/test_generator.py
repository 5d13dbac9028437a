"""Tests of the synthetic vmcore generator, validated against drgn's own arm64 walker.

For every regime in the catalogue a sample kernel is written as an ELF vmcore,
opened with drgn, and drgn's translation (``_linux_helper_follow_phys``) is compared
with the generator's ground truth at VAs inside every mapping, just outside them, in
holes, and through every oddity.  This validates the oracle itself.
"""

from __future__ import annotations

import collections
import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from mminspect.synthetic import (  # noqa: E402
    REGIMES,
    REGIMES_BY_NAME,
    Builder,
    LeafKind,
    Regime,
    Status,
    make_linear_kernel,
    make_sample,
    write_vmcore,
)
from mminspect.synthetic.encode import (  # noqa: E402
    PAGE_KERNEL,
    PTE_AF,
    PTE_CONT,
    TABLE_KERNEL_NOEXEC,
    Encoder,
    Prot,
)
from mminspect.synthetic.oracle import (  # noqa: E402
    FAULT,
    compare,
    drgn_support,
    drgn_translate,
    open_drgn,
    sample_vas,
)

drgn = pytest.importorskip("drgn")

GiB = 1 << 30
IDS = [r.name for r in REGIMES]

# ---------------------------------------------------------------------------------------
# the regime catalogue (kernel-model.md 1.1)
# ---------------------------------------------------------------------------------------

EXPECTED_GEOMETRY = {
    # name: (levels walked, root entries, start level)
    "4k-va39": (3, 512, 1),
    "4k-va48": (4, 512, 0),
    "4k-va52-lpa2": (5, 16, -1),
    "4k-va52-run48": (4, 512, 0),
    "16k-va36": (2, 2048, 2),
    "16k-va47": (3, 2048, 1),
    "16k-va48": (4, 2, 0),
    "16k-va52-lpa2": (4, 32, 0),
    "16k-va52-run47": (3, 2048, 1),
    "64k-va42": (2, 8192, 2),
    "64k-va42-lpa": (2, 8192, 2),
    "64k-va48": (3, 64, 1),
    "64k-va48-lpa": (3, 64, 1),
    "64k-va52": (3, 1024, 1),
    "64k-va52-lpa": (3, 1024, 1),
    "64k-va52-run48": (3, 1024, 1),
    "64k-va52-run48-lpa": (3, 1024, 1),
}


def test_catalogue_geometry():
    assert set(EXPECTED_GEOMETRY) == set(REGIMES_BY_NAME)
    for name, (levels, root, start) in EXPECTED_GEOMETRY.items():
        r = REGIMES_BY_NAME[name]
        assert (r.levels, r.root_entries, r.start_level) == (levels, root, start), name
    assert REGIMES_BY_NAME["4k-va52-run48"].config_levels == 5
    assert REGIMES_BY_NAME["16k-va52-run47"].config_levels == 4
    assert REGIMES_BY_NAME["4k-va52-lpa2"].pgd_bytes == 128
    assert REGIMES_BY_NAME["4k-va52-run48"].pgd_bytes == 4096
    assert REGIMES_BY_NAME["64k-va52-lpa"].pgd_bytes == 8192
    assert REGIMES_BY_NAME["16k-va48"].pgd_bytes == 16


def test_illegal_regimes_rejected():
    for kw in (dict(page_size=4096, va_bits=47), dict(page_size=16384, va_bits=39),
               dict(page_size=4096, va_bits=48, pa_bits=52),
               dict(page_size=4096, va_bits=52, vabits_actual=47),
               dict(page_size=16384, va_bits=52, vabits_actual=48),
               dict(page_size=4096, va_bits=52, vabits_actual=48, pa_bits=52)):
        with pytest.raises(ValueError):
            Regime(**kw)


def test_layout_matches_kernel_model():
    r = REGIMES_BY_NAME["4k-va48"]
    assert (r.page_offset, r.page_end, r.kimage_vaddr) == (
        0xFFFF000000000000, 0xFFFF800000000000, 0xFFFF800080000000)
    assert (r.vmemmap_start, r.vmemmap_end, r.vmalloc_end) == (
        0xFFFFFDFFC0000000, 0xFFFFFFFFC0000000, 0xFFFFFDFFBF800000)
    r = REGIMES_BY_NAME["4k-va52-lpa2"]
    assert (r.page_offset, r.vmemmap_start, r.vmalloc_end) == (
        0xFFF0000000000000, 0xFFFFC1FFC0000000, 0xFFFFC1FFBF800000)
    assert REGIMES_BY_NAME["4k-va52-run48"].vmalloc_end == 0xFFFFFDFFBF800000
    r = REGIMES_BY_NAME["16k-va47"]
    assert (r.page_offset, r.kimage_vaddr, r.vmemmap_start) == (
        0xFFFF800000000000, 0xFFFFC00080000000, 0xFFFFFFBFC0000000)


# ---------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------


def test_oa_encoding():
    lpa2 = Encoder(REGIMES_BY_NAME["4k-va52-lpa2"])
    d = lpa2.oa(0xC000812345000)
    assert d & (3 << 8) == 3 << 8                      # OA[51:50] in bits 9:8
    assert d & ((1 << 50) - 1) & ~0xFFF == 0xC000812345000 & ((1 << 50) - 1)
    lpa = Encoder(REGIMES_BY_NAME["64k-va52-lpa"])
    assert lpa.oa(0x000A_0001_2345_0000) == 0x0000_0001_2345_0000 | (0xA << 12)
    folded = REGIMES_BY_NAME["4k-va52-run48"]
    assert PAGE_KERNEL.bits(folded) & (3 << 8) == 3 << 8   # SH bits when LPA2 is off
    assert PAGE_KERNEL.bits(REGIMES_BY_NAME["4k-va52-lpa2"]) & (3 << 8) == 0
    with pytest.raises(ValueError):
        Prot(sh=3).bits(REGIMES_BY_NAME["16k-va52-lpa2"])
    with pytest.raises(ValueError):
        Encoder(REGIMES_BY_NAME["4k-va48"]).check_oa(1 << 48, 4096)


def test_cont_and_block_alignment_enforced():
    r = REGIMES_BY_NAME["16k-va47"]
    b = Builder(r, ram=[(0x4000_0000, 4 * GiB)])
    va = b.phys_to_virt(0x4000_0000)
    with pytest.raises(ValueError):
        b.map(va + r.page_size, 0x4000_0000 + r.page_size, 128 * r.page_size, LeafKind.CONT_PAGE)
    with pytest.raises(ValueError):          # no PUD blocks with 16K
        b.map(va, 0x4000_0000, 64 * GiB, LeafKind.PUD)
    run, = b.map(va, 0x4000_0000, 2 * 128 * r.page_size, LeafKind.CONT_PAGE)
    assert run.attr_bits & PTE_CONT and run.count == 256


# ---------------------------------------------------------------------------------------
# drgn as oracle, every regime
# ---------------------------------------------------------------------------------------


def _oa_field_mask(enc: Encoder, regime: Regime) -> int:
    return enc.oa(((1 << regime.pa_bits) - 1) & ~(regime.page_size - 1))


@pytest.mark.parametrize("regime", REGIMES, ids=IDS)
def test_drgn_agrees_with_ground_truth(regime, tmp_path):
    ok, why = drgn_support(regime)
    if not ok:
        pytest.skip(f"drgn cannot validate {regime.name}: {why}")
    for seed in (0, 1):
        built = make_sample(regime, seed)
        vf = write_vmcore(tmp_path / f"{regime.name}-{seed}.vmcore", built)
        assert vf.file_size < 4 << 20
        prog = open_drgn(vf.path)
        n, bad = compare(prog, built, sample_vas(built, seed))
        assert n > 200
        assert not bad, "\n".join(map(str, bad[:20]))

    # coverage of the sample (seed 1)
    kinds = {x.kind for x in built.leaf_runs}
    legal = {LeafKind.PAGE, LeafKind.CONT_PAGE, LeafKind.PMD, LeafKind.CONT_PMD}
    if regime.page_size == 4096:
        legal.add(LeafKind.PUD)
    assert kinds == legal
    assert {a.kind for a in built.anomalies} >= {"shared", "loop", "raw", "table_outside_ram"}
    assert any(x.alias_of is not None for x in built.leaf_runs)
    views = collections.Counter(built.lookup(root, va).dump_view for root, va in sample_vas(built, 1))
    assert views["fault"] and views["mapped"] and views["unmapped"]
    if regime.pa_bits == 52:
        assert any(x.pa >= 1 << 48 for x in built.leaf_runs)
        assert any(t.pa >= 1 << 48 for t in built.tables())
    if regime.lpa2_active:
        assert any(x.pa >= 1 << 50 for x in built.leaf_runs)
        assert any(t.pa >= 1 << 50 for t in built.tables())
    attrs = {x.prot.attrindx for x in built.leaf_runs}
    assert attrs == {0, 1, 2, 3, 4}
    efi = built.roots["efi"]
    if regime.pgd_bytes < regime.page_size:
        assert efi.pa % regime.page_size != 0 and efi.size == regime.pgd_bytes

    # table ground truth is consistent with the bytes in memory (and in the dump)
    enc = built.encoder
    mask = _oa_field_mask(enc, regime)
    tables = list(built.tables())
    for t in tables:
        for ppa, idx in t.parents:
            desc = int.from_bytes(built.read_phys(ppa + 8 * idx, 8), "little")
            assert desc & 3 == 3 and desc & mask == enc.oa(t.pa), (hex(t.pa), hex(desc))
    root_pas = {r.pa for r in built.roots.values()}
    assert all(t.parents or t.pa in root_pas for t in tables)
    assert sum(1 for t in tables if not t.in_dump) == 2


@pytest.mark.parametrize("name", ["4k-va48", "4k-va52-lpa2", "16k-va52-run47", "64k-va52-run48-lpa"])
def test_drgn_reads_through_tables(name, tmp_path):
    """prog.read() of VAs outside the PT_LOAD vaddrs goes through drgn's walker."""
    built = make_sample(REGIMES_BY_NAME[name], 3)
    vf = write_vmcore(tmp_path / "x.vmcore", built)
    prog = open_drgn(vf.path)
    from _drgn import _linux_helper_read_vm

    vm = next(x for x in built.leaf_runs if x.label == "vmalloc" and x.pa in built.pattern_pages)
    data = prog.read(vm.va + 0x40, 16)
    assert struct.unpack("<2Q", data) == (vm.pa + 0x40, vm.pa + 0x48)
    efi = next(x for x in built.leaf_runs if x.label == "efi-data")
    data = _linux_helper_read_vm(prog, built.roots["efi"].va, efi.va + 8, 8)
    assert struct.unpack("<Q", data)[0] == efi.pa + 8
    # VMCOREINFO as drgn sees it
    assert drgn.helpers.linux.kaslr_offset(prog) == built.kaslr_offset
    info = prog["VMCOREINFO"].string_().decode()
    po = int(info.split("NUMBER(PHYS_OFFSET)=")[1].split()[0], 16)
    assert po == built.phys_offset & ((1 << 64) - 1)


def test_negative_phys_offset_on_folded_build():
    built = make_sample(REGIMES_BY_NAME["4k-va52-run48"], 0)
    assert built.phys_offset < 0
    assert built.phys_to_virt(built.ram[0][0]) >> 48 == 0xFFFF


def test_harness_detects_a_wrong_descriptor(tmp_path):
    """Corrupt one leaf descriptor in the file: the comparison must notice."""
    r = REGIMES_BY_NAME["4k-va52-lpa2"]
    b = Builder(r, ram=[(0x4000_0000, GiB), (0xC_0000_0000_0000 - 0 * GiB + 0, GiB)])
    va = b.phys_to_virt(0xC_0000_0000_0000)
    b.map(va, 0xC_0000_0000_0000, 64 * r.page_size, LeafKind.PAGE, table_prot=TABLE_KERNEL_NOEXEC)
    built = b.finish()
    vf = write_vmcore(tmp_path / "ok.vmcore", built)
    n, bad = compare(open_drgn(vf.path), built, [("swapper", va + 5 * r.page_size + 1)])
    assert n == 1 and not bad
    pte_table = b.table_at("swapper", va, 3)
    entry_pa = pte_table + 8 * 5
    seg = next(s for s in vf.segments if s.paddr <= entry_pa < s.paddr + s.filesz)
    with open(vf.path, "r+b") as f:
        f.seek(seg.offset + entry_pa - seg.paddr)
        desc = struct.unpack("<Q", f.read(8))[0]
        f.seek(seg.offset + entry_pa - seg.paddr)
        f.write(struct.pack("<Q", desc & ~(1 << 9)))          # drop OA bit 51
    n, bad = compare(open_drgn(vf.path), built, [("swapper", va + 5 * r.page_size + 1)])
    assert len(bad) == 1 and bad[0].got == 0x4_0000_0000_5001


def test_uniform_fast_path(tmp_path):
    r = REGIMES_BY_NAME["4k-va48"]
    size = 4 * GiB
    b = Builder(r, ram=[(0x4000_0000, size + GiB)],
                table_pool=(0x4000_0000 + size, 0x4000_0000 + size + GiB))
    b.map_uniform(b.phys_to_virt(0x4000_0000), 0x4000_0000, size, table_prot=TABLE_KERNEL_NOEXEC)
    b.omit_table(b.table_at("swapper", b.phys_to_virt(0x4000_0000 + GiB), 3), "absent")
    built = b.finish()
    assert built.n_tables() == 2048 + 4 + 1 + 1
    vf = write_vmcore(tmp_path / "u.vmcore", built)
    assert vf.file_size < (2048 + 16) * 4096 + 65536
    prog = open_drgn(vf.path)
    n, bad = compare(prog, built, sample_vas(built, per_run=500))
    assert n > 400 and not bad
    assert drgn_translate(prog, built.swapper_pg_dir, b.phys_to_virt(0x4000_0000 + GiB)) == FAULT


@pytest.mark.parametrize("name", ["4k-va52-lpa2", "16k-va48", "64k-va52-run48-lpa"])
def test_make_linear_kernel(name, tmp_path):
    r = REGIMES_BY_NAME[name]
    built = make_linear_kernel(r, 16 * r.table_span(3))
    assert built.n_tables() >= 16
    vf = write_vmcore(tmp_path / "l.vmcore", built)
    n, bad = compare(open_drgn(vf.path), built, sample_vas(built, per_run=100))
    assert n > 100 and not bad


def test_full_ram_sparse_file(tmp_path):
    built = make_sample(REGIMES_BY_NAME["16k-va36"], 0)
    vf = write_vmcore(tmp_path / "f.vmcore", built, full_ram=True)
    assert vf.file_size > 4 * GiB - 64 * 16384   # all RAM minus the absent table pages
    assert os.stat(vf.path).st_blocks * 512 < 64 << 20
    n, bad = compare(open_drgn(vf.path), built, sample_vas(built))
    assert not bad


# ---------------------------------------------------------------------------------------
# drgn's known divergences from the architecture (documented, not hidden)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,level", [("4k-va48", 0), ("16k-va47", 1), ("64k-va48", 1),
                                        ("4k-va52-lpa2", -1)])
def test_drgn_block_at_non_block_level(name, level, tmp_path):
    """``01`` at a level where the architecture has no blocks is invalid (a translation
    fault); drgn 0.3.0 treats it as a block at every level above 3."""
    r = REGIMES_BY_NAME[name]
    assert level not in r.hw_block_levels
    b = Builder(r, ram=[(0x4000_0000, GiB)])
    va = r.kernel_va_min
    b.set_raw("swapper", va, level, 1 | PTE_AF, hw="unmapped", note="block at a non-block level")
    built = b.finish()
    assert built.lookup("swapper", va + 0x1234).status == Status.UNMAPPED
    vf = write_vmcore(tmp_path / "b.vmcore", built)
    got = drgn_translate(open_drgn(vf.path), built.swapper_pg_dir, va + 0x1234)
    if got is not None:
        pytest.xfail(f"drgn maps a level-{level} '01' entry as a block (got {got:#x})")


@pytest.mark.parametrize("name", ["4k-va52-run48", "16k-va52-run47"])
def test_drgn_needs_t1sz_for_folded_lpa2(name, tmp_path):
    """Without NUMBER(TCR_EL1_T1SZ) drgn walks a folded LPA2 build with VA_BITS=52
    (one level too many). Kernels that can fold (6.9+) always write T1SZ."""
    built = make_sample(REGIMES_BY_NAME[name], 0)
    vf = write_vmcore(tmp_path / "t.vmcore", built, vmcoreinfo_omit=("NUMBER(TCR_EL1_T1SZ)",))
    n, bad = compare(open_drgn(vf.path), built, sample_vas(built))
    if bad:
        pytest.xfail(f"{len(bad)}/{n} translations differ without TCR_EL1_T1SZ")
