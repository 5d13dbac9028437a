"""The whole removal path against real guests that tried to take memory away.

The recipe's removal runs (vmcores/removal.py) leave, per attempt, the dump
of the state before and the dump after, with the guest's own account in
``truth/removal.json``: the method (ACPI eject of a DIMM, or sysfs offline
of blocks), what QEMU saw (DEVICE_DELETED), and the lines the guest printed.
The simulation runs on the state before and must:

- print what the guest printed, word for word: every line of the kind it
  predicts (memory-notifier refusals, "memory memoryN: Offline failed.", the
  isolation failure's "page dumped because: unmovable page", try_remove_memory()'s
  "Refuse to remove ...") in the guest's order;
- refuse exactly when the guest refused (the DIMM stayed, the sysfs write failed);
- for a removal that happened, still free exactly the tables the kernel freed
  and predict the NR_PAGETABLE change.
"""

import json
import re

import pytest

import mminspect
import vmcores
from mminspect.hotremove import Proposal, capture_snapshot, diff_snapshots, select_policy, simulate
from tests.real.conftest import get_dump
from tests.real.test_simulate_real import _guest_nr_change

#: The kinds of line the simulation predicts.
PREDICTED = re.compile(
    r"^(Boot memory \[[0-9a-f]+ [0-9a-f]+\] offlining attempted"
    r"|\[[0-9a-f]+ [0-9a-f]+\] splits a leaf entry in (linear map|vmemmap)"
    r"|memory memory\d+: Offline failed\."
    r"|page dumped because: unmovable page"
    r"|Refuse to remove .*wrong granularity)$")

REMOVAL_SCENARIOS = [s for s in vmcores.ALL_SCENARIOS if s not in vmcores.SCENARIOS]
CASES = [(k, s) for k in vmcores.kernel_ids() for s in REMOVAL_SCENARIOS]
def _record(dump):
    path = dump.dir / "truth" / "removal.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{s}" for k, s in CASES])
def attempt(request):
    kernel_id, scenario = request.param
    after = get_dump(kernel_id, scenario)
    if isinstance(after, str):
        pytest.skip(after)
    rec = _record(after)
    if rec is None:
        pytest.skip(f"{kernel_id}/{scenario} records no removal attempt (no truth/removal.json)")
    before = get_dump(kernel_id, rec["before"])
    if isinstance(before, str):
        pytest.skip(before)
    snap = capture_snapshot(mminspect.open(prog=before.program()))
    return kernel_id, rec, before, after, snap


def _predicted(lines):
    return [m for m in lines if PREDICTED.match(m)]


def _proposals(rec, snap):
    """(attempt record, Proposal) for each attempt, as the kernel saw it."""
    bsize = snap.kernel["block_size"]
    present = {b.id for b in snap.blocks}
    for a in rec["attempts"]:
        if rec["method"] == "acpi-eject":
            d = rec["dimm"]
            yield a, Proposal(d["addr"], d["addr"] + d["size"])
        elif a["block"] in present:
            yield a, Proposal(a["block"] * bsize, (a["block"] + 1) * bsize)


def test_the_kernel_log_is_predicted_word_for_word(attempt):
    _, rec, _, _, snap = attempt
    checked = 0
    for a, prop in _proposals(rec, snap):
        result = simulate(snap, prop, select_policy(snap.era))
        if rec["method"] == "acpi-eject":
            predicted = result.kernel_log
        else:  # one sysfs write: one try of one block, no second pass
            b = result.blocks[0]
            predicted = [b.refusal.message] if b.refusal is not None and b.refusal.message else []
        assert _predicted(a["messages"]) == predicted, (a["command"], a["messages"][-8:], result.unchecked)
        checked += 1
    assert checked, "no attempt on a present block"


def test_refused_exactly_when_the_guest_refused(attempt):
    _, rec, _, _, snap = attempt
    for a, prop in _proposals(rec, snap):
        result = simulate(snap, prop, select_policy(snap.era))
        refused = any(r.fatal for r in result.refusals)
        if rec["method"] == "acpi-eject":
            assert refused == (not a["device_deleted"]), (a["command"], result.refusals)
        else:
            assert refused == (a["exit"] != 0), (a["command"], a["stderr"], result.refusals)
        # Nothing the dump could not decide was counted as a pass.
        assert not result.unchecked, result.unchecked


def test_a_removal_that_happened_is_still_simulated_exactly(attempt):
    kernel_id, rec, before, after, snap = attempt
    if rec["method"] != "acpi-eject" or not rec["attempts"][-1]["device_deleted"]:
        pytest.skip(f"{kernel_id}/{rec['scenario']}: nothing was removed")
    _, prop = next(_proposals(rec, snap))
    result = simulate(snap, prop, select_policy(snap.era))
    after_snap = capture_snapshot(mminspect.open(prog=after.program()))
    real = diff_snapshots(snap, after_snap)
    assert {e.phys for e in result.freed} == set(real["freed"])
    dumps = {"a": before, "b": after}
    assert result.delta_nr_pagetable == _guest_nr_change(dumps, {"a": snap, "b": after_snap}, "a", "b")
