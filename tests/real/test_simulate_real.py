"""Simulated hot-removes against real ones.

Each kernel that hot-added a DIMM and removed it again left three dumps. The
simulation runs on the hot-add dump with the policy mminspect picks for that
kernel, and must free exactly the table pages that the real kernel freed
(tables of the hot-add dump that are gone, or have become other tables, in
the hot-remove dump), and predict the NR_PAGETABLE change the guest's own
/proc/vmstat shows, up to the typed tables allocated in between.
"""

import functools
import re

import pytest

import mminspect
import vmcores
from mminspect.classify import scan_typed
from mminspect.hotremove import Proposal, capture_snapshot, diff_snapshots, get_policy, select_policy, simulate

KERNELS = [k for k in vmcores.kernel_ids()]


def _nr_pagetable(dump) -> int:
    text = (dump.truth / "vmstat_refreshed").read_text()
    return int(text.split("nr_page_table_pages ")[1].split()[0])


@functools.cache
def _snapshots(kernel_id, scenarios=("hotadd", "hotremove")):
    """({scenario: Dump}, {scenario: Snapshot}) of the kernel's before/after
    dumps, or the reason why there are none (a str)."""
    from tests.real.conftest import get_dump

    dumps = {sc: get_dump(kernel_id, sc) for sc in scenarios}
    for sc, d in dumps.items():
        if isinstance(d, str):
            return d
    snaps = {}
    for sc, d in dumps.items():
        snaps[sc] = capture_snapshot(mminspect.open(prog=d.program()))
    return dumps, snaps


@pytest.fixture(params=KERNELS)
def pair(request):
    got = _snapshots(request.param)
    if isinstance(got, str):
        pytest.skip(got)
    return got


def _proposal(snap):
    added = [b.id for b in snap.blocks if not b.early]
    assert added, "the hot-add dump shows no hot-added memory block"
    return Proposal.from_blocks(added, snap.kernel["block_size"])


def test_freed_tables_match_the_real_hot_remove(pair):
    dumps, snaps = pair
    before, after = snaps["hotadd"], snaps["hotremove"]
    result = simulate(before, _proposal(before), select_policy(before.era))
    assert result.simulated and not [r for r in result.refusals if r.fatal]
    real = diff_snapshots(before, after)
    assert {e.phys for e in result.freed} == set(real["freed"])
    # Page-granular linear maps (rodata=full) free hundreds of PTE tables,
    # block-mapped ones may free none; either way vmemmap_free() frees the
    # DIMM's whole memmap: one struct page per page.
    page_size = before.kernel["regime"]["page_size"]
    assert result.data_freed == result.proposal.size // page_size * before.kernel["struct_page_size"]
    assert not result.warnings


def test_nr_pagetable_change_matches_the_guest(pair):
    dumps, snaps = pair
    before, after = snaps["hotadd"], snaps["hotremove"]
    if any(t.typed is None for t in before.tables.values()):
        pytest.skip("no struct page facts (classification not available)")
    result = simulate(before, _proposal(before), select_policy(before.era))
    assert result.delta_nr_pagetable == _guest_nr_change(dumps, snaps, "hotadd", "hotremove")


def _guest_nr_change(dumps, snaps, a, b) -> int:
    """The guest's nr_page_table_pages change from dump ``a`` to ``b``, less
    what else changed it in between: typed init_mm tables allocated (vmalloc),
    and the typed tables outside init_mm (the agent's processes come and go:
    a shell that exits between the dumps takes its page tables with it).
    What is left is what the removal alone did."""
    real = diff_snapshots(snaps[a], snaps[b])
    allocated_typed = sum(1 for p in real["allocated"] if snaps[b].tables[p].typed)
    others = _typed_outside_init_mm(dumps[b], snaps[b]) - _typed_outside_init_mm(dumps[a], snaps[a])
    return _nr_pagetable(dumps[b]) - _nr_pagetable(dumps[a]) - allocated_typed - others


def _typed_outside_init_mm(dump, snap) -> int:
    """Pages typed as page tables in the dump's memmap that are not init_mm
    tables: every other mm's, efi_mm's, and frees still waiting for RCU."""
    typed = len(scan_typed(mminspect.open(prog=dump.program()))[0])
    return typed - sum(1 for t in snap.tables.values() if t.typed)


def test_boot_memory_is_refused_like_the_kernel(pair):
    """Every boot block is refused, by the first check of offline_pages()
    that stops it: holes (the guest's own /proc/iomem must show the block is
    not all System RAM), the isolation scan when it holds an unmovable page
    (the 6.1 guest printed "unmovable page" for memory8), else arm64's
    boot-memory notifier with its exact message."""
    dumps, snaps = pair
    snap = snaps["hotadd"]
    ram = dumps["hotadd"].system_ram()
    for boot in [b for b in snap.blocks if b.early]:
        result = simulate(snap, Proposal(boot.start, boot.start + boot.size), select_policy(snap.era))
        assert not result.simulated
        last = [r for r in result.refusals if r.fatal][-1]
        covered = sum(max(0, min(boot.start + boot.size, e) - max(boot.start, s)) for s, e in ram)
        assert (last.rule == "memory-holes") == (covered != boot.size), (boot.id, last)
        assert last.rule in ("boot-memory", "unmovable-page", "memory-holes"), last
        if last.rule == "boot-memory":
            assert last.message == f"Boot memory [{boot.start:x} {boot.start + boot.size:x}] offlining attempted"


def _printed_during(before, after) -> list:
    """Kernel warnings the guest printed between two dumps."""
    old, new = before.truth_text("dmesg"), after.truth_text("dmesg")
    during = new[len(old):] if new.startswith(old) else new
    return re.findall(r"(WARNING:.*|BUG:.*|Bad page state.*)", during)


def test_findings_match_what_the_guest_printed(pair):
    """No finding where the real kernel printed nothing; a finding for every
    warning it printed during the removal."""
    dumps, snaps = pair
    before = snaps["hotadd"]
    if any(t.typed is None for t in before.tables.values()):
        pytest.skip("no struct page facts (classification not available)")
    result = simulate(before, _proposal(before), select_policy(before.era))
    printed = _printed_during(dumps["hotadd"], dumps["hotremove"])
    predicted = [f for f in result.findings if f.severity in ("warning", "error", "critical")]
    assert bool(printed) == bool(predicted), (printed, predicted[:3])


def test_rfc2017_on_6_1_flags_every_hot_add_table_page_by_page():
    """The 2017 RFC's free_pagetable(page, order, direct=true) runs the dtor
    on every non-reserved linear-map table it frees; on 6.1 those tables came
    from __pgd_pgtable_alloc with no ctor: each one is a dtor without ctor."""
    got = _snapshots("debian-6.1-cloud-arm64")
    if isinstance(got, str):
        pytest.skip(got)
    dumps, snaps = got
    before = snaps["hotadd"]
    result = simulate(before, _proposal(before), get_policy("rfc2017", before.era))
    flagged = {f.phys for f in result.findings if f.rule == "dtor without ctor"}
    expected = {e.phys for e in result.freed
                if e.routine == "remove_pagetable(direct)"
                and before.tables[e.phys].typed is False and not before.tables[e.phys].reserved}
    assert flagged == expected
    # ... and they are exactly the tables the real (mainline) removal freed.
    assert flagged == set(diff_snapshots(before, snaps["hotremove"])["freed"])
    assert result.delta_nr_pagetable == -len(flagged) and result.drift == -len(flagged)
