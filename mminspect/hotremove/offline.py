"""
Offlining a DIMM's memory blocks, as an ACPI eject does
-------------------------------------------------------

An ACPI eject (drivers/acpi/scan.c ``acpi_scan_try_to_offline()``, the same
in 6.1 and 7.2) offlines every memory block of the device before anything is
removed, in two passes over the blocks (``acpi_bus_offline()``):

1. every block is tried (``device_offline()`` -> ``memory_block_offline()``
   -> ``offline_pages()``), errors ignored;
2. the blocks that failed are tried again, and the first that fails again
   stops the eject: ``dev_warn(errdev, "Offline failed.\\n")`` (printed as
   ``memory memoryN: Offline failed.``), every block offlined so far is
   onlined again, and the eject ends -EBUSY (``_OST`` busy: QEMU keeps the
   DIMM). Nothing is removed.

Each try prints what the memory notifiers print, so a refused block appears
once per pass. :func:`eject` replays this on a snapshot: per block the PFN
range ``offline_pages()`` gets (after the block's own memmap, see
:mod:`~mminspect.hotremove.altmap`), the notifier checks
(:mod:`~mminspect.hotremove.notifiers`), and the lines the kernel prints.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from mminspect.hotremove.altmap import offline_start
from mminspect.hotremove.notifiers import Check, memory_notifier

__all__ = ("BlockOutcome", "Ejection", "eject")


def _holes(sim, rng: Tuple[int, int]) -> Optional[Check]:
    """offline_pages()' first test: every page of the range is System RAM
    ("memory holes": -EINVAL, pr_debug only). None when the snapshot does
    not know System RAM (then the isolation scan and the notifiers decide)."""
    ram = sim.snapshot.kernel.get("system_ram")
    if ram is None:
        return None
    lo, hi = rng
    covered = sum(max(0, min(hi, b + n) - max(lo, b)) for b, n in ram)
    if covered != hi - lo:
        return Check("memory-holes", "refuse", "",
                     f"{(hi - lo - covered) >> 20} MiB of [{lo:#x}-{hi - 1:#x}] is not System RAM: "
                     "offline_pages() returns -EINVAL (\"memory holes\"), printing nothing")
    return None


def _isolation(sim, block, lo_pfn: int, hi_pfn: int) -> Tuple[Check, List[str]]:
    """The isolation step of offline_pages() for one block: a check (refused
    at the first unmovable page, or unknown without struct pages) and the
    warnings about pages that may not migrate."""
    scan = sim.snapshot.isolation_scan(block, lo_pfn, hi_pfn)
    if scan is None:
        return Check("unmovable-page", "unknown", "",
                     "the block's struct pages are not in this snapshot (or cannot be decoded)"), []
    warnings = [f"{n} {kind} (pfn {', '.join(hex(p) for p in pfns)}{', ...' if n > len(pfns) else ''})"
                for kind, (n, pfns) in scan.doubtful.items()]
    if scan.unreadable:
        warnings.append(f"{scan.unreadable} struct pages unreadable in the dump")
    if scan.first_unmovable is not None:
        pfn, kind = scan.first_unmovable
        counts = ", ".join(f"{n} {k}" for k, n in sorted(scan.unmovable.items()))
        # set_migratetype_isolate(): dump_page(unmovable, "unmovable page"),
        # whose first line ends "pfn:%#lx".
        if scan.unreadable_from is not None and scan.unreadable_from <= pfn:
            # Some struct page before it is not in the dump (a capture holds
            # only the pages mminspect read): the refusal is certain, which
            # page the kernel dumps is not.
            where = (f"the first unmovable page the dump holds is pfn {pfn:#x} ({kind}; in all {counts}); "
                     f"struct pages from pfn {scan.unreadable_from:#x} on are missing from the dump, so the "
                     "kernel may stop at an earlier one")
        else:
            where = f"has_unmovable_pages() stops at pfn {pfn:#x} ({kind}; in all {counts})"
        return Check("unmovable-page", "refuse", "page dumped because: unmovable page",
                     f"{where} in zone {block.zone or 'unknown'}: start_isolate_page_range() fails, -EBUSY"), warnings
    if scan.unreadable:
        held = (f"none of the range's {scan.pages} struct pages is in the dump" if scan.unreadable >= scan.pages
                else f"{scan.unreadable} of the range's {scan.pages} struct pages are not in the dump; "
                     "the others hold no unmovable page")
        return Check("unmovable-page", "unknown", "", held), warnings[:-1]
    return Check("unmovable-page", "pass", "",
                 f"no unmovable page among {scan.pages} struct pages (zone {block.zone or 'unknown'})"), warnings


@dataclass
class BlockOutcome:
    """What offlining does to one memory block of the proposal."""

    id: int
    start: int
    end: int
    state: str  #: before the attempt
    zone: Optional[str]
    #: The physical range offline_pages() gets: [start + own memmap, end).
    offline_range: Tuple[int, int]
    #: Pages of the block's own memmap (memmap_on_memory), skipped by offlining.
    memmap_pages: int
    #: "offlined", "offlined, if unchecked pass", "refused", "already offline",
    #: "offlined, then onlined again"
    outcome: str = "offlined"
    checks: List[Check] = field(default_factory=list)
    #: Why offlining may still fail (struct pages that cannot migrate).
    warnings: List[str] = field(default_factory=list)

    @property
    def refusal(self) -> Optional[Check]:
        return next((c for c in self.checks if c.result == "refuse"), None)


@dataclass
class Ejection:
    """The offline phase of a removal."""

    blocks: List[BlockOutcome]
    #: What the kernel prints, in order (notifier warnings, "Offline failed.").
    log: List[str]
    #: The block whose second failure stopped the eject, if one did.
    failed_block: Optional[int] = None

    @property
    def refused(self) -> bool:
        return self.failed_block is not None

    def unknown(self) -> List[Tuple[int, Check]]:
        return [(b.id, c) for b in self.blocks for c in b.checks if c.result == "unknown"]


def eject(sim, refuses_boot_memory: bool = True) -> Ejection:
    """Replay the offline phase of an ACPI eject of ``sim.proposal``."""
    snap = sim.snapshot
    bsize = snap.kernel["block_size"]
    by_id = {b.id: b for b in snap.blocks}
    shift = sim.page_shift
    outcomes: List[BlockOutcome] = []
    log: List[str] = []
    ids = range(sim.proposal.start // bsize, sim.proposal.end // bsize)
    # The isolation scans of every online block, in one bulk pass.
    snap.prefetch_scans([(by_id[i], offline_start(by_id[i], shift), (by_id[i].start + by_id[i].size) >> shift)
                         for i in ids if by_id[i].state == "online"])
    for bid in ids:
        b = by_id[bid]
        lo = offline_start(b, shift) << shift
        o = BlockOutcome(b.id, b.start, b.start + b.size, b.state, b.zone, (lo, b.start + b.size),
                         b.altmap_free)
        outcomes.append(o)
        if b.state == "offline":
            o.outcome = "already offline"  # device_offline() returns 1: nothing runs
            continue
        if b.zone is None and b.nid is not None:
            # memory_block_offline(): "if (!mem->zone) return -EINVAL;" (a
            # block spanning zones), before offline_pages(); nothing printed.
            o.checks = [Check("zone", "refuse", "", f"memory{b.id} spans more than one zone (mem->zone is NULL): "
                              "memory_block_offline() returns -EINVAL")]
            o.outcome = "refused"
            continue
        holes = _holes(sim, o.offline_range)
        if holes is not None:
            o.checks.append(holes)
            if holes.result == "refuse":
                o.outcome = "refused"
                continue
        iso = _isolation(sim, b, lo >> shift, o.offline_range[1] >> shift)
        o.checks.append(iso[0])
        o.warnings += iso[1]
        if iso[0].result == "refuse":
            o.outcome = "refused"
            log.append(iso[0].message)
            continue  # isolation fails before any notifier runs
        o.checks += memory_notifier(sim, lo >> shift, (o.offline_range[1] - lo) >> shift, refuses_boot_memory)
        if o.refusal is not None:
            o.outcome = "refused"
            if o.refusal.message:
                log.append(o.refusal.message)  # first pass
    for o in outcomes:
        if o.outcome == "offlined" and any(c.result == "unknown" for c in o.checks):
            o.outcome = "offlined, if unchecked pass"
    failed = next((o for o in outcomes if o.outcome == "refused"), None)
    if failed is not None:
        if failed.refusal.message:
            log.append(failed.refusal.message)  # second pass: the first failure again stops it
        log.append(f"memory memory{failed.id}: Offline failed.")
        for o in outcomes:
            if o.outcome.startswith("offlined"):
                o.outcome = "offlined, then onlined again"
    return Ejection(outcomes, log, failed.id if failed is not None else None)
