"""The removal scenarios' recorded truth agrees with itself and with the dumps.

Each removal run of the recipe (``vmcores.removal``) leaves pairs of dumps: the
state a user would simulate a removal on, and the state after the guest was
asked to do it, with ``truth/removal.json`` (what was asked, what QEMU and the
guest answered, each block's sysfs state before and after) and, for hot-adds,
``truth/hotadd.json``. Here those records are checked against the dumps as
mminspect's memory-block reader sees them (the kernel's ``memory_blocks``
xarray through drgn), and against the guest's own dmesg and command line; the
simulation-vs-guest comparison is ``test_removal_path.py``'s.
"""

import re

import pytest

import mminspect
import vmcores
from mminspect.memory import MemoryMap
from vmcores import removal

#: (run, after scenario) for every attempt the runs record.
AFTERS = [(run.name, s) for run in removal.RUNS.values() for s in run.scenarios
          if s.split("-")[1].startswith(("eject", "offline"))]
CASES = [(k, *p) for k in vmcores.kernel_ids() for p in AFTERS]
HOTADDS = [(k, s) for k in vmcores.kernel_ids() for s in removal.SCENARIOS if "-hotadd" in s]


def _dump(kernel_id, scenario):
    from tests.real.conftest import get_dump

    d = get_dump(kernel_id, scenario)
    if isinstance(d, str):
        pytest.skip(d)
    return d


def _blocks(dump) -> dict:
    """{block id: Block} as mminspect reads the dump."""
    mm = MemoryMap.read(mminspect.open(prog=dump.program()))
    assert "memory_blocks xarray" in mm.evidence["blocks"], mm.evidence
    return {b.id: b for b in mm.blocks}


def test_cases_cover_every_attempt():
    assert {a for _, a in AFTERS} == {s for s in removal.SCENARIOS if re.search(r"-(eject|offline)", s)}
    assert ("mom", "mom-eject8") in AFTERS and ("bootmem", "bootmem-offline") in AFTERS


@pytest.mark.parametrize("kernel_id,run,after", CASES, ids=[f"{k}-{a}" for k, _, a in CASES])
def test_removal_record_matches_the_dumps(kernel_id, run, after):
    d1 = _dump(kernel_id, after)
    rec = d1.truth / "removal.json"
    assert rec.exists(), f"{d1.dir}: no truth/removal.json"
    r = vmcores.cache.read_json(rec)
    before = r["before"]
    # The state before is an earlier scenario of the same run: the one just
    # before, or (a block offlined and onlined again in between) one earlier.
    order = removal.RUNS[run].scenarios
    assert (r["format"], r["scenario"]) == (removal.FORMAT, after)
    assert before in order and order.index(before) < order.index(after), before
    d0 = _dump(kernel_id, before)
    assert r["method"] in ("acpi-eject", "sysfs-offline") and r["attempts"]
    # Both dumps come from one boot, with the run's command line.
    assert d0.meta["run"] == d1.meta["run"] == run
    assert d0.meta["kernel_cmdline"] == d1.meta["kernel_cmdline"]
    for word in removal.RUNS[run].append.split():
        assert word in d1.truth_text("cmdline").split(), (word, d1.truth_text("cmdline"))
    assert d0.truth_text("dmesg")[:2000] == d1.truth_text("dmesg")[:2000], "not the same boot"

    # Every line the guest printed during the attempt is in the after dump's
    # dmesg and not in the before dump's.
    printed = [line for a in r["attempts"] for line in a["dmesg"]]
    after_log, before_log = d1.truth_text("dmesg").splitlines(), set(d0.truth_text("dmesg").splitlines())
    for line in printed:
        assert line in after_log and line not in before_log, line

    # The blocks listed exist in the before dump, in the state recorded.
    b0, b1 = _blocks(d0), _blocks(d1)
    for n, states in r["blocks"].items():
        n = int(n)
        assert n in b0, f"block {n} is not in the {before} dump"
        assert states["before"]["state"] == b0[n].state, (n, states["before"], b0[n])
        # ... and the after dump shows what the guest's sysfs said afterwards.
        if states["after"] is None:
            assert n not in b1, f"block {n} recorded gone, but the {after} dump has it"
        else:
            assert n in b1 and states["after"]["state"] == b1[n].state, (n, states["after"], b1.get(n))

    if r["method"] == "acpi-eject":
        a = r["attempts"][-1]
        dimm = r["dimm"]
        assert sorted(int(n) for n in r["blocks"]) == dimm["blocks"]
        statuses = [o["status"] for o in a["acpi_ost"]]
        assert statuses and statuses[0] == removal.OST_IN_PROGRESS, statuses
        if r["outcome"] == "removed":
            assert a["device_deleted"] and all(s["after"] is None for s in r["blocks"].values())
            assert d1.meta["memory"]["removed_dimm"]["id"] == dimm["id"]
            assert dimm["id"] not in {x["id"] for x in d1.meta["memory"]["dimms"]}
        else:
            assert r["outcome"] == "refused" and not a["device_deleted"], r["outcome"]
            assert statuses[-1] not in (0, removal.OST_IN_PROGRESS)
            # Refused: every block back online, the DIMM still plugged, and
            # the guest said which block failed.
            assert all(s["after"]["state"] == "online" for s in r["blocks"].values())
            assert dimm["id"] in {x["id"] for x in d1.meta["memory"]["dimms"]}
            failed = [m for m in a["messages"] if m.endswith(": Offline failed.")]
            assert len(failed) == 1 and re.fullmatch(r"memory memory(\d+): Offline failed\.", failed[0])
            assert int(failed[0].split("memory")[2].split(":")[0]) in dimm["blocks"]
    else:
        for a in r["attempts"]:
            state = r["blocks"][str(a["block"])]["after"]["state"]
            assert (a["exit"] == 0) == (state == "offline"), (a["block"], a["exit"], state)
            if a["exit"]:
                assert a["stderr"].startswith("sh: write error: "), a["stderr"]


@pytest.mark.parametrize("kernel_id,scenario", HOTADDS, ids=[f"{k}-{s}" for k, s in HOTADDS])
def test_hotadd_record_matches_the_dump(kernel_id, scenario):
    """The DIMM's blocks are online in the dump, and the memmap the guest kept
    out of MemTotal is the altmap the dump's memory blocks carry."""
    d = _dump(kernel_id, scenario)
    h = vmcores.cache.read_json(d.truth / "hotadd.json")
    dimm = h["dimm"]
    assert d.meta["memory"]["dimm"]["id"] == dimm["id"]
    kernel = mminspect.open(prog=d.program())
    blocks = {b.id: b for b in MemoryMap.read(kernel).blocks}
    page = 1 << kernel.regime.page_shift
    altmap = 0
    for n in dimm["blocks"]:
        assert blocks[n].state == "online" and h["blocks"][str(n)]["state"] == "online"
        assert blocks[n].start == n * dimm["block_size"] and not blocks[n].early
        zone = {"movable": "Movable", "kernel": "Normal"}[h["online"]]
        assert blocks[n].zone == zone and h["blocks"][str(n)]["valid_zones"] == zone
        if blocks[n].altmap_pages:
            assert blocks[n].altmap_start == blocks[n].start // page  # the block's first pages
        altmap += blocks[n].altmap_pages
    shortfall = (h["memtotal_kb"]["dimm"] - h["memtotal_kb"]["delta"]) * 1024 // page
    assert shortfall == altmap, (h["memtotal_kb"], altmap)
    if "memmap_on_memory" not in d.meta["kernel_cmdline"]:
        assert altmap == 0
