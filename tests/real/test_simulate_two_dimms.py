"""Removing one of two DIMMs that share upper tables, simulated and real.

The recipe's ``hotadd2`` state has two 512 MiB pc-dimms side by side (dimm0
at the base of the hot-plug area, dimm1 right above); ``hotremove1`` is the
same guest after device_del of dimm1 only. On 4K kernels both DIMMs' linear
map hangs off one PMD table (and their memmap off one vmemmap PMD table),
so the real removal must free dimm1's own tables and keep the shared ones:
``free_empty_tables()`` finds entries of dimm0 still live there.

The simulation of exactly dimm1's range on the hotadd2 dump must free the
same table pages the real removal freed, keep the shared tables and say
why, leave every table it touched with the entries the real kernel left,
predict the guest's NR_PAGETABLE change and its dmesg.
"""

import json
import re
import socket
import threading

import numpy as np
import pytest
from click.testing import CliRunner

import vmcores
from mminspect.cli import main
from mminspect.hotremove import Proposal, diff_snapshots, select_policy, simulate
from mminspect.hotremove.simulate import _Sim
from tests.real.test_simulate_real import _guest_nr_change, _printed_during, _snapshots

KERNELS = list(vmcores.kernel_ids())


@pytest.fixture(params=KERNELS)
def pair(request):
    got = _snapshots(request.param, ("hotadd2", "hotremove1"))
    if isinstance(got, str):
        pytest.skip(got)
    return got


def _dimms(dumps):
    """(the DIMM that stays, the one removed), from the recipe's meta.json."""
    plugged = {d["id"]: d for d in dumps["hotadd2"].meta["memory"]["dimms"]}
    removed = dumps["hotremove1"].meta["memory"]["removed_dimm"]
    stays = [d for i, d in plugged.items() if i != removed["id"]]
    assert len(plugged) == 2 and removed["id"] in plugged and len(stays) == 1
    return stays[0], removed


def _removed(dumps) -> Proposal:
    _, gone = _dimms(dumps)
    return Proposal(gone["addr"], gone["addr"] + gone["size"])


def _run(snap, proposal):
    """simulate(), plus the replayed table state (to compare entries)."""
    pol = select_policy(snap.era)
    result = simulate(snap, proposal, pol)
    sim = _Sim(snap, proposal)
    pol.remove(sim)
    return result, sim.state


def _any_sim(snap) -> _Sim:
    """A simulation context for its address helpers (the proposal is unused,
    but must be a valid range since Proposal checks its bounds)."""
    bsize = snap.kernel["block_size"]
    return _Sim(snap, Proposal(0, bsize))


def _linear(snap, pa: int) -> int:
    return _any_sim(snap).phys_to_virt(pa)


def _span(snap, t) -> int:
    """Bytes of VA one table of ``t``'s level covers."""
    r = _any_sim(snap).regime
    return r.entries_per_table << r.shift(t.level)


def _shared_tables(snap, stays, gone):
    """Non-root linear-map tables whose span covers some of both DIMMs."""
    out = []
    for t in snap.tables.values():
        if t.region != "linear map" or not t.parents:
            continue
        lo, hi = t.va, t.va + _span(snap, t)
        if all(lo < _linear(snap, d["addr"] + d["size"]) and _linear(snap, d["addr"]) < hi
               for d in (stays, gone)):
            out.append(t)
    return out


def test_the_state_is_two_dimms_then_one(pair):
    """The recipe did what the scenario says: two adjacent DIMMs online and
    Movable, then the second one gone and the first one still online."""
    dumps, snaps = pair
    stays, gone = _dimms(dumps)
    assert stays["size"] == gone["size"] == 512 << 20
    assert {stays["addr"] + stays["size"], gone["addr"] + gone["size"]} & {stays["addr"], gone["addr"]}
    blocks = {b.id: b for b in snaps["hotadd2"].blocks}
    for d in (stays, gone):
        assert all(blocks[n].state == "online" and not blocks[n].early for n in d["blocks"])
    after = {b.id for b in snaps["hotremove1"].blocks}
    assert set(stays["blocks"]) <= after and not set(gone["blocks"]) & after
    # The removed DIMM shares at least one linear-map table with the other.
    assert _shared_tables(snaps["hotadd2"], stays, gone)


def test_freed_tables_match_the_real_removal_of_one_dimm(pair):
    dumps, snaps = pair
    before, after = snaps["hotadd2"], snaps["hotremove1"]
    result, state = _run(before, _removed(dumps))
    assert result.simulated and not [r for r in result.refusals if r.fatal]
    assert not result.warnings
    real = diff_snapshots(before, after)
    assert {e.phys for e in result.freed} == set(real["freed"])
    page_size = before.kernel["regime"]["page_size"]
    assert result.data_freed == result.proposal.size // page_size * before.kernel["struct_page_size"]
    # Every table the replay wrote and the kernel kept holds the entries the
    # kernel left there: the replay cleared what the kernel cleared, no more.
    # (Tables the guest changed for other reasons, vmalloc and the agent's
    # own, are outside the removed ranges and untouched by the replay.)
    freed = {e.phys for e in result.freed}
    touched = [p for p in state._dirty if p not in freed]
    assert touched
    for p in touched:
        assert p in after.tables and after.tables[p].level == before.tables[p].level, hex(p)
        assert np.array_equal(state.entries(p), after.entries[p]), hex(p)


def test_shared_upper_tables_stay_with_the_reason(pair):
    """The tables dimm1 shares with dimm0 are kept, because dimm0's entries
    are still live there, exactly as many as the real kernel left."""
    dumps, snaps = pair
    before, after = snaps["hotadd2"], snaps["hotremove1"]
    stays, gone = _dimms(dumps)
    result, _ = _run(before, _removed(dumps))
    kept = {e.phys: e for e in result.kept}
    shared = _shared_tables(before, stays, gone)
    assert shared
    for t in shared:
        assert t.phys in after.tables and after.tables[t.phys].level == t.level
        ev = kept.get(t.phys)
        assert ev is not None, f"shared {t.level_name} table {t.phys:#x} not reported as kept"
        live = int(np.count_nonzero(after.entries[t.phys]))
        assert ev.detail == f"{live} entries still live", (hex(t.phys), ev.detail, live)
    # Every kept table has one of the kernel's two reasons, and none of the
    # kept tables is gone in the real after-state.
    for ev in result.kept:
        assert re.fullmatch(r"\d+ entries still live|empty, but its span is not inside \[floor, ceiling\)",
                            ev.detail), ev.detail
        assert ev.phys in after.tables
        assert before.tables[ev.phys].level == after.tables[ev.phys].level


def _judged(pair):
    """The simulated removal of the removed DIMM, where the dump has the
    struct page facts to judge it."""
    dumps, snaps = pair
    if any(t.typed is None for t in snaps["hotadd2"].tables.values()):
        pytest.skip("no struct page facts (classification not available)")
    return _run(snaps["hotadd2"], _removed(dumps))[0]


def test_nr_pagetable_change_matches_the_guest(pair):
    dumps, snaps = pair
    result = _judged(pair)
    assert result.delta_nr_pagetable == _guest_nr_change(dumps, snaps, "hotadd2", "hotremove1")
    # Where the tables carry a ctor and the dtor runs (v6.16+ with the fix),
    # every freed table leaves the counter; before that none does.
    assert result.delta_nr_pagetable in (0, -len(result.freed))


def test_findings_match_what_the_guest_printed(pair):
    dumps, _ = pair
    result = _judged(pair)
    printed = _printed_during(dumps["hotadd2"], dumps["hotremove1"])
    predicted = [f for f in result.findings if f.severity in ("warning", "error", "critical")]
    assert bool(printed) == bool(predicted), (printed, predicted[:3])


def test_removing_the_other_dimm_or_both_differs(pair):
    """Not a constant answer: removing dimm0 instead frees dimm0's own tables
    (disjoint from dimm1's), and removing both also frees what they share
    whenever the shared tables hold nothing else."""
    dumps, snaps = pair
    before = snaps["hotadd2"]
    stays, gone = _dimms(dumps)
    one, _ = _run(before, _removed(dumps))
    other, _ = _run(before, Proposal(stays["addr"], stays["addr"] + stays["size"]))
    lo = min(stays["addr"], gone["addr"])
    both, _ = _run(before, Proposal(lo, lo + stays["size"] + gone["size"]))
    a, b, ab = ({e.phys for e in r.freed} for r in (one, other, both))
    assert not a & b and a | b <= ab
    if a:
        assert a != b
    # A shared table spanning no more than the two DIMMs (the linear map's
    # 1 GiB PMD table on 4K) goes with both, never with one.
    for t in _shared_tables(before, stays, gone):
        inside = _linear(before, lo) <= t.va and t.va + _span(before, t) <= _linear(before, lo + 2 * stays["size"])
        assert (t.phys in ab) == inside and t.phys not in a | b, hex(t.phys)


# --------------------------------------------------------------------------- CLI proposals


class _FakeQMP:
    """A QMP socket that answers query-memory-devices as the paused guest's
    QEMU did (the answer the recipe recorded in meta.json)."""

    def __init__(self, path, devices):
        self.path, self.devices = str(path), devices
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        # A thread left running would make mminspect.forked refuse to fork in
        # later tests: close() stops and joins it (a close() alone does not
        # wake a thread blocked in accept()).
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn, conn.makefile("rw") as f:
                f.write(json.dumps({"QMP": {"version": {}, "capabilities": []}}) + "\n")
                f.flush()
                for line in f:
                    cmd = json.loads(line)["execute"]
                    ret = self.devices if cmd == "query-memory-devices" else {}
                    f.write(json.dumps({"return": ret}) + "\n")
                    f.flush()

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture
def saved(pair, tmp_path):
    dumps, snaps = pair
    path = tmp_path / "hotadd2.npz"
    snaps["hotadd2"].save(str(path))
    return dumps, snaps, path


def _cli(*args):
    r = CliRunner().invoke(main, ["simulate-remove", *args, "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_dimm_and_block_proposals_resolve_to_the_removed_range(saved, tmp_path):
    dumps, snaps, path = saved
    stays, gone = _dimms(dumps)
    want = _cli("--snapshot", str(path), "--range", f"{gone['addr']:x}+{gone['size'] >> 20}M")
    assert want["simulated"]
    qmp = _FakeQMP(tmp_path / "qmp.sock", dumps["hotadd2"].meta["memory"]["memory_devices"])
    try:
        by_dimm = _cli("--snapshot", str(path), "--qemu", qmp.path, "--dimm", gone["id"])
        by_other = _cli("--snapshot", str(path), "--qemu", qmp.path, "--dimm", stays["id"])
    finally:
        qmp.close()
    lo, hi = gone["blocks"][0], gone["blocks"][-1]
    by_range = _cli("--snapshot", str(path), "--block", f"{lo}..{hi}")
    by_each = _cli("--snapshot", str(path), *[a for n in gone["blocks"] for a in ("--block", str(n))])
    for got in (by_dimm, by_range, by_each):
        assert got["proposal"] == want["proposal"]
        assert got["freed"] == want["freed"] and got["kept"] == want["kept"]
    assert by_other["proposal"] != want["proposal"]
    assert {t["phys"] for t in want["freed"]} == set(diff_snapshots(snaps["hotadd2"], snaps["hotremove1"])["freed"])
