"""
Memory hot-remove simulation
----------------------------

Capture a :class:`~mminspect.hotremove.snapshot.Snapshot`, propose a removal
(:class:`~mminspect.hotremove.proposal.Proposal`), pick the policy of the
kernel's era (:func:`~mminspect.hotremove.policy.select_policy`) and
:func:`~mminspect.hotremove.simulate.simulate` it. The simulation first
replays the offline path as an ACPI eject runs it
(:mod:`~mminspect.hotremove.offline`: per block the holes, the isolation scan
of :mod:`~mminspect.hotremove.isolation`, the memory-notifier refusals of
:mod:`~mminspect.hotremove.notifiers`, memmap_on_memory blocks from
:mod:`~mminspect.hotremove.altmap`), then the page-table teardown.

>>> from mminspect.hotremove import Proposal, capture_snapshot, select_policy, simulate
>>> snap = capture_snapshot(kernel)
>>> res = simulate(snap, Proposal(0x80000000, 0xc0000000), select_policy(snap.era))
>>> res.delta_nr_pagetable, [f.rule for f in res.findings]
(0, [])
"""

from mminspect.hotremove.policy import Era, Policy, available_policies, get_policy, select_policy
from mminspect.hotremove.proposal import Proposal, Refusal, check_proposal
from mminspect.hotremove.simulate import Finding, Result, Unchecked, simulate
from mminspect.hotremove.snapshot import Snapshot, TableFacts, capture_snapshot, diff_snapshots

__all__ = (
    "Era",
    "Finding",
    "Policy",
    "Proposal",
    "Refusal",
    "Result",
    "Snapshot",
    "TableFacts",
    "Unchecked",
    "available_policies",
    "capture_snapshot",
    "check_proposal",
    "diff_snapshots",
    "get_policy",
    "select_policy",
    "simulate",
)
