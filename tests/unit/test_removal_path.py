"""The removal path before any table is freed, on hand-built tables (4K/48).

The layout of test_hotremove_engine (two 2 MiB blocks of RAM mapped page by
page in the linear map), plus a vmemmap whose first PMD entry is a 2 MiB
block leaf, as vmemmap_populate_hugepages() maps a section's memmap on 4K.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mminspect.arch.arm64 import PTE_CONT
from mminspect.cli import main
from mminspect.errors import MMInspectError
from mminspect.hotremove.engine import TableState
from mminspect.hotremove.isolation import IsolationScan
from mminspect.hotremove.notifiers import addr_splits_kernel_leaf
from mminspect.hotremove.policies import Mainline616
from mminspect.hotremove.policy import Era
from mminspect.hotremove.proposal import Proposal
from mminspect.hotremove.simulate import simulate
from mminspect.hotremove.snapshot import Snapshot, TableFacts
from mminspect.memory import Block
from tests.unit.test_hotremove_engine import PTE0, PTE1, RAM, ROOT, R, TABLE, _snapshot

VMEMMAP_START = 0xFFFFFC0000000000
VPUD, VPMD = 0x6000, 0x7000
PMD_BLOCK = 0x0068000000000701  # a valid block descriptor (bits[1:0] = 01)
SZ_2M = 2 << 20
MEMMAP_PAGES = 8  # the block's own memmap: 512 struct pages of 64 bytes


def _mom_snapshot(leaf_split=True, altmap=True, cont_linear=False, scans=True):
    """Block 0 added with memmap_on_memory: its first 8 pages hold its memmap."""
    era = Era(page_type="pgty", init_mm_ctor=True, free_clears_type=True, ptlock_free_null_safe=True,
              leaf_split_notifier=leaf_split, block_memmap="altmap", altmap_per_block=True,
              evidence={"leaf_split_notifier": "test"})
    snap = _snapshot({p: {"typed": True, "reserved": False} for p in (PTE0, PTE1)}, era)
    t = snap.entries
    t[VPUD] = np.zeros(512, dtype=np.uint64)
    t[VPMD] = np.zeros(512, dtype=np.uint64)
    t[ROOT][(VMEMMAP_START >> 39) & 511] = VPUD | TABLE
    t[VPUD][0] = VPMD | TABLE
    t[VPMD][0] = RAM | PMD_BLOCK  # the memmap lives in the block's own first pages
    if cont_linear:
        t[PTE0] |= np.uint64(PTE_CONT)
    for p, level, name, parent in ((VPUD, 1, "PUD", (ROOT, (VMEMMAP_START >> 39) & 511)), (VPMD, 2, "PMD", (VPUD, 0))):
        snap.tables[p] = TableFacts(p, level, name, VMEMMAP_START, "vmemmap", [parent], ["init_mm"],
                                    typed=False, reserved=False)
    b = snap.blocks[0]
    snap.blocks[0] = Block(b.id, b.start, b.size, b.state, b.zone, b.nid, False,
                           RAM >> 12 if altmap else 0, MEMMAP_PAGES if altmap else 0,
                           MEMMAP_PAGES if altmap else 0)
    snap.kernel["system_ram"] = [[RAM, 2 * SZ_2M]]
    if scans:
        snap.scans = {b.id: IsolationScan(512 - MEMMAP_PAGES) for b in snap.blocks}
    return snap


def test_addr_splits_kernel_leaf_follows_the_kernel():
    snap = _mom_snapshot()
    st = TableState(R, ROOT, snap.entries)
    assert addr_splits_kernel_leaf(st, VMEMMAP_START + 512) is True  # inside the PMD leaf
    assert addr_splits_kernel_leaf(st, VMEMMAP_START) is False  # PUD-aligned: on a boundary
    assert addr_splits_kernel_leaf(st, VMEMMAP_START + SZ_2M + 512) is False  # not mapped
    lin = 0xFFFF000000000000
    assert addr_splits_kernel_leaf(st, lin + 0x8000) is False  # a page boundary, no contiguous run
    cont = TableState(R, ROOT, _mom_snapshot(cont_linear=True).entries)
    assert addr_splits_kernel_leaf(cont, lin + 0x8000) is True  # inside a CONT_PTE run
    assert addr_splits_kernel_leaf(cont, lin + 0x10000) is False  # CONT_PTE_SIZE aligned


def test_a_memmap_on_memory_block_is_refused_in_vmemmap_word_for_word():
    snap = _mom_snapshot()
    res = simulate(snap, Proposal(RAM, RAM + SZ_2M), Mainline616(snap.era))
    assert not res.simulated and not res.freed
    msg = f"[{RAM + MEMMAP_PAGES * 4096:x} {RAM + SZ_2M:x}] splits a leaf entry in vmemmap"
    (r,) = [r for r in res.refusals if r.fatal]
    assert (r.rule, r.block, r.message, r.range) == ("leaf-split", 0 + RAM // SZ_2M, msg,
                                                     (RAM + MEMMAP_PAGES * 4096, RAM + SZ_2M))
    # ACPI: tried in pass 1, again in pass 2, then "Offline failed."
    assert res.kernel_log == [msg, msg, f"memory memory{RAM // SZ_2M}: Offline failed."]
    assert res.blocks[0].offline_range[0] == RAM + MEMMAP_PAGES * 4096
    assert "altmap" in res.memmap[0].lives and "vmem_altmap_free" in res.memmap[0].goes
    # --force: what would happen without the check; the memmap goes back to the altmap.
    forced = simulate(snap, Proposal(RAM, RAM + SZ_2M), Mainline616(snap.era), force=True)
    assert forced.simulated and forced.data_to_altmap == SZ_2M and forced.data_freed == 0


def test_the_linear_map_edge_is_checked_first():
    snap = _mom_snapshot(cont_linear=True)
    res = simulate(snap, Proposal(RAM, RAM + SZ_2M), Mainline616(snap.era))
    assert res.refusals[-1].message.endswith("splits a leaf entry in linear map")


def test_one_refused_block_stops_the_eject_of_the_whole_dimm():
    snap = _mom_snapshot(leaf_split=False)
    second = RAM // SZ_2M + 1
    snap.scans[second] = IsolationScan(512, 0, (0x40210, "page table"), {"page table": 1})
    res = simulate(snap, Proposal(RAM, RAM + 2 * SZ_2M), Mainline616(snap.era))
    assert [b.outcome for b in res.blocks] == ["offlined, then onlined again", "refused"]
    assert not res.simulated and not res.freed
    dump = "page dumped because: unmovable page"
    assert res.kernel_log == [dump, dump, f"memory memory{second}: Offline failed."]


def test_without_the_check_it_proceeds():
    snap = _mom_snapshot(leaf_split=False)
    res = simulate(snap, Proposal(RAM, RAM + SZ_2M), Mainline616(snap.era))
    assert res.simulated and not [r for r in res.refusals if r.fatal] and not res.unchecked
    assert res.data_to_altmap == SZ_2M  # vmemmap_free() -> vmem_altmap_free()


def test_an_unknown_check_is_never_a_silent_pass():
    snap = _mom_snapshot(leaf_split=None)
    res = simulate(snap, Proposal(RAM, RAM + SZ_2M), Mainline616(snap.era))
    (u,) = res.unchecked
    assert u.rule == "leaf-split" and "splits a leaf entry in vmemmap" in u.why
    snap = _mom_snapshot(scans=False)
    res = simulate(snap, Proposal(RAM + SZ_2M, RAM + 2 * SZ_2M), Mainline616(snap.era))
    assert [u.rule for u in res.unchecked] == ["unmovable-page"]


def test_an_unmovable_page_stops_isolation_before_the_notifier():
    snap = _mom_snapshot()
    snap.scans[RAM // SZ_2M] = IsolationScan(504, 0, (0x40010, "slab"), {"slab": 3})
    res = simulate(snap, Proposal(RAM, RAM + SZ_2M), Mainline616(snap.era))
    assert res.refusals[-1].rule == "unmovable-page" and "0x40010" in res.refusals[-1].evidence
    assert res.kernel_log[0] == "page dumped because: unmovable page"
    assert not any("splits" in line for line in res.kernel_log)  # the notifier never ran


def test_bad_proposals_are_errors():
    snap = _mom_snapshot()
    with pytest.raises(MMInspectError, match="not all present memory"):
        simulate(snap, Proposal(RAM + 4 * SZ_2M, RAM + 5 * SZ_2M), Mainline616(snap.era))


def test_cli_exit_codes_and_json(tmp_path):
    path = tmp_path / "mom.npz"
    _mom_snapshot().save(str(path))
    run = CliRunner().invoke
    res = run(main, ["simulate-remove", "--snapshot", str(path), "--block", str(RAM // SZ_2M), "--format", "json",
                     "--policy", "v6.16"])
    assert res.exit_code == 3, res.output
    doc = json.loads(res.output)
    (r,) = doc["refusals"]
    assert r["rule"] == "leaf-split" and r["block"] == RAM // SZ_2M and r["range"][0] == RAM + 0x8000
    assert r["message"].endswith("splits a leaf entry in vmemmap") and r["evidence"]
    assert doc["kernel_log"][-1] == f"memory memory{RAM // SZ_2M}: Offline failed."
    forced = run(main, ["simulate-remove", "--snapshot", str(path), "--block", str(RAM // SZ_2M), "--force",
                        "--policy", "v6.16"])
    assert forced.exit_code == 3 and "with --force, as if the refusing check were absent" in forced.output
    bad = run(main, ["simulate-remove", "--snapshot", str(path), "--range", f"{RAM + 4096:x}+2M"])
    assert bad.exit_code == 2 and "unaligned hotplug range" in bad.output
    again = Snapshot.load(str(path))
    assert again.era.leaf_split_notifier is True and again.blocks[0].altmap_free == MEMMAP_PAGES


def test_6_1_refuses_to_remove_memmap_on_memory_memory_in_other_sizes():
    """v5.15..v6.5 try_remove_memory(): memory added with its own memmap goes
    one block at a time, else "Refuse to remove %#llx - %#llx,wrong granularity"
    (after offlining, so the blocks offline first)."""
    snap = _mom_snapshot(leaf_split=False)
    snap.era.block_memmap, snap.era.altmap_per_block = "nr_vmemmap_pages", False
    res = simulate(snap, Proposal(RAM, RAM + 2 * SZ_2M), Mainline616(snap.era))
    msg = f"Refuse to remove {RAM:#x} - {RAM + 2 * SZ_2M:#x},wrong granularity"
    assert [r.message for r in res.refusals if r.fatal] == [msg] and res.kernel_log == [msg]
    assert [b.outcome for b in res.blocks] == ["offlined", "offlined"]
    one = simulate(snap, Proposal(RAM, RAM + SZ_2M), Mainline616(snap.era))
    assert one.simulated and not one.refusals


@pytest.mark.parametrize("edit,why", [
    (lambda h: h["kernel"].__setitem__("system_ram", [[1, "x"]]), "system_ram"),
    (lambda h: h.__setitem__("isolation", {"12": {"pages": -1}}), "pages"),
    (lambda h: h.__setitem__("isolation", {"x": {}}), "scan"),
    (lambda h: h.__setitem__("isolation", {"12": {"pages": 1, "first_unmovable": [1]}}), "first_unmovable"),
    (lambda h: h.__setitem__("isolation", {"12": {"pages": 1, "doubtful": {"a": [1, ["p"]]}}}), "doubtful"),
])
def test_a_hostile_snapshot_is_one_line(tmp_path, edit, why):
    path = tmp_path / "mom.npz"
    _mom_snapshot().save(str(path))
    with np.load(str(path)) as z:
        arrays = dict(z)
    header = json.loads(bytes(arrays["header"]).decode())
    edit(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez_compressed(str(bad), **arrays)
    with pytest.raises(MMInspectError, match=why):
        Snapshot.load(str(bad))
