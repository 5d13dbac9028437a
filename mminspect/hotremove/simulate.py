"""
Simulating a hot-remove
-----------------------

:func:`simulate` replays a policy (one kernel era's freeing code) on a copy
of a :class:`~mminspect.hotremove.snapshot.Snapshot` for a
:class:`~mminspect.hotremove.proposal.Proposal`, then judges every table page
the replay freed against what its ``struct page`` showed at capture time,
with the outcome rules of the dumped kernel's era (kernel-model §7.1):

- a dtor on a page whose ctor never ran (NR_PAGETABLE drifts down; on
  inverted-type kernels with DEBUG_VM, ``VM_BUG_ON_PAGE(!PageTable(page))``;
  with ALLOC_SPLIT_PTLOCKS, a free of a ptl never allocated);
- a ctor'd page freed without a dtor (NR_PAGETABLE leaks; before v6.17 the
  still-typed page trips "Bad page state ... nonzero mapcount"; an allocated
  ptl leaks);
- a memblock (PG_reserved) page freed to the buddy allocator, a
  kernel-image table freed, a table freed while another live entry still
  references it, a table freed with its ptlock held, efi_mm tables touched.

Each :class:`Finding` names the rule, the table page with its origin and
ptlock, and the sentence a reviewer would write.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from mminspect.arch.arm64 import Regime
from mminspect.bits import U64
from mminspect.findings import Finding, SEVERITIES, worst
from mminspect.hotremove.altmap import MemmapHome, granularity_check, memmap_homes
from mminspect.hotremove.engine import Event, TableState
from mminspect.hotremove.offline import BlockOutcome, eject
from mminspect.hotremove.policy import Policy
from mminspect.hotremove.proposal import Proposal, Refusal, check_proposal
from mminspect.kernel.addr import LinearMap, Vmemmap

__all__ = ("Finding", "Result", "SEVERITIES", "Unchecked", "simulate")



@dataclass(frozen=True)
class Unchecked:
    """A kernel check this dump cannot decide: never counted as passed."""

    rule: str
    block: Optional[int]
    why: str


@dataclass
class Result:
    proposal: Proposal
    policy: str
    refusals: List[Refusal]
    simulated: bool
    #: Per memory block: the range offlined, the checks, the outcome.
    blocks: List[BlockOutcome] = field(default_factory=list)
    #: What the kernel prints during the attempt, in order.
    kernel_log: List[str] = field(default_factory=list)
    #: Checks the dump cannot decide, with why.
    unchecked: List[Unchecked] = field(default_factory=list)
    #: Per section: where its memmap lives and where removal sends it.
    memmap: List[MemmapHome] = field(default_factory=list)
    #: Memmap bytes vmemmap_free() hands back to an altmap (vmem_altmap_free).
    data_to_altmap: int = 0
    freed: List[Event] = field(default_factory=list)
    kept: List[Event] = field(default_factory=list)
    warnings: List[Event] = field(default_factory=list)
    data_freed: int = 0
    findings: List[Finding] = field(default_factory=list)
    #: Change of the NR_PAGETABLE counter (what /proc/vmstat will show).
    delta_nr_pagetable: int = 0
    #: Change of the number of pages typed as page tables.
    delta_typed_pages: int = 0

    @property
    def drift(self) -> int:
        """How far the counter moves away from the typed-page count."""
        return self.delta_nr_pagetable - self.delta_typed_pages

    def worst(self) -> Optional[str]:
        return worst(f.severity for f in self.findings)


class _Sim:
    """What a policy sees while it runs: the state and address helpers."""

    def __init__(self, snapshot, proposal: Proposal) -> None:
        k = snapshot.kernel
        self.snapshot = snapshot
        self.proposal = proposal
        self.layout = k["layout"]
        self.page_shift = k["regime"]["page_size"].bit_length() - 1
        self.section_size = k["section_size"]
        self.struct_page_size = k["struct_page_size"]
        self.phys_offset = k["phys_offset"]
        #: __va() and pfn_to_page() as the kernel computes them (mminspect.kernel.addr)
        self.linear_map = LinearMap(self.layout["page_offset"], self.layout["page_end"], self.phys_offset,
                                    k.get("kimage_voffset", 0))
        self.vmemmap = Vmemmap(self.layout["vmemmap_start"], self.phys_offset, self.page_shift,
                               self.struct_page_size)
        reg = k["regime"]
        self.regime = Regime(self.page_shift, reg["va_bits"], reg["vabits_actual"], reg["pa_bits"])
        self.state = TableState(self.regime, snapshot.root_phys, snapshot.entries)
        #: The captured tables as the checks before removal see them.
        self.pristine = TableState(self.regime, snapshot.root_phys, snapshot.entries)
        self.by_block = {b.id: b for b in snapshot.blocks}
        #: Physical starts of the early (boot) sections.
        self.early_sections = {s.start for s in snapshot.sections if s.early}
        self.block_size = k["block_size"]

    def removal_pieces(self):
        """The ranges ``arch_remove_memory()`` runs on, in order: block by
        block when every block has its own altmap and the kernel removes them
        one at a time (remove_memory_blocks_and_altmaps()), else the whole
        proposal at once."""
        p = self.proposal
        ids = range(p.start // self.block_size, p.end // self.block_size)
        if self.snapshot.era.altmap_per_block and all(self.by_block[i].altmap_pages for i in ids):
            return [Proposal(i * self.block_size, (i + 1) * self.block_size) for i in ids]
        return [p]

    def altmap_of(self, vmemmap_va: int):
        """The block whose altmap receives the memmap page at ``vmemmap_va``
        (vmemmap_free() with that block's altmap), or None."""
        pfn = ((vmemmap_va - self.layout["vmemmap_start"]) & U64) // self.struct_page_size
        pa = (pfn << self.page_shift) + self.phys_offset
        b = self.by_block.get(pa // self.block_size)
        return b if b is not None and b.altmap_pages else None

    def pfn_to_page(self, pfn: int) -> int:
        return self.vmemmap.pfn_to_page(pfn)

    def phys_to_virt(self, pa: int) -> int:
        return self.linear_map.phys_to_virt(pa)


def simulate(snapshot, proposal: Proposal, policy: Policy, force: bool = False) -> Result:
    """Replay ``policy`` for ``proposal`` on ``snapshot``; see the module docstring."""
    refusals = check_proposal(proposal, snapshot, policy)
    sim = _Sim(snapshot, proposal)
    ejection = eject(sim, policy.refuses_boot_memory)
    for b in ejection.blocks:
        r = b.refusal
        if r is not None:
            refusals.append(Refusal(r.rule, r.message, True, b.id, b.offline_range, r.why))
    unchecked = [Unchecked(c.rule, bid, c.why) for bid, c in ejection.unknown()]
    if not ejection.refused:
        # After every block is offline: try_remove_memory()'s own refusal.
        g = granularity_check(sim)
        if g is not None:
            refusals.append(Refusal(g.rule, g.message, True, None, (proposal.start, proposal.end), g.why))
            ejection.log.append(g.message)
    fatal = [r for r in refusals if r.fatal]
    result = Result(proposal, policy.describe(), refusals, simulated=not fatal or force,
                    blocks=ejection.blocks, kernel_log=ejection.log, unchecked=unchecked,
                    memmap=memmap_homes(sim))
    if fatal and not force:
        return result
    policy.remove(sim)
    kept: Dict[int, Event] = {}
    for ev in sim.state.events:
        if ev.kind == "free_table":
            result.freed.append(ev)
            kept.pop(ev.phys, None)
        elif ev.kind == "keep_table":
            kept[ev.phys] = ev  # the last decision about a table is the one that stands
        elif ev.kind == "warn":
            result.warnings.append(ev)
        elif ev.kind == "free_data":
            if ev.routine == "vmemmap_free" and sim.altmap_of(ev.va) is not None:
                result.data_to_altmap += ev.size  # free_hotplug_page_range() -> vmem_altmap_free()
            else:
                result.data_freed += ev.size
    result.kept = sorted(kept.values(), key=lambda e: (e.level, e.va))
    _judge(snapshot, sim, policy, result)
    return result


def _call(routine: str) -> str:
    return routine if "(" in routine else routine + "()"


def _judge(snapshot, sim: _Sim, policy: Policy, result: Result) -> None:
    era = snapshot.era
    freed = {ev.phys for ev in result.freed}
    prefetch = getattr(snapshot.tables, "prefetch", None)
    if prefetch is not None:
        prefetch(freed)
    for ev in result.freed:
        t = snapshot.tables.get(ev.phys)
        if t is None:
            continue
        dtor = policy.dtor_on_free(ev.routine, t)

        def add(severity, rule, sentence, *messages):
            result.findings.append(Finding(severity, rule, t.phys, t.level_name, sentence, origin=t.origin,
                                           ptlock=t.ptlock, routine=ev.routine, messages=tuple(messages)))

        if dtor:
            result.delta_nr_pagetable -= 1
        if t.typed:
            result.delta_typed_pages -= 1
        # Tables the kernel must never free.
        if t.image_symbol or t.origin == "kernel-image":
            add("critical", "kernel-image table freed",
                f"{_call(ev.routine)} frees {t.image_symbol or 'a kernel-image table'} at {t.phys:#x}: "
                "live kernel data handed to the page allocator.",
                "WARNING: ... free_hotplug_page_range (WARN_ON(PageReserved(page)))")
        if "efi_mm" in t.roots:
            add("critical", "efi_mm table touched",
                f"{t.level_name} table {t.phys:#x} is also in efi_mm, which has no teardown path.")
        others = [(p, i) for p, i in t.parents if (p, i) != ev.parent and p not in freed]
        if others:
            p, i = others[0]
            add("critical", "shared table freed",
                f"{t.level_name} table {t.phys:#x} is freed while entry {i} of table {p:#x} still "
                "points to it: use after free by the MMU and every walker.")
        if t.ptl_held:
            add("critical", "ptlock held",
                f"{t.level_name} table {t.phys:#x} is freed with its split ptlock held.",
                "WARNING: held lock freed!" if era.alloc_split else "")
        # Reserved pages through the buddy allocator.
        if t.reserved and not policy.frees_reserved_pages:
            msgs = ["WARNING: ... at arch/arm64/mm/mmu.c free_hotplug_page_range (WARN_ON(PageReserved(page)))"]
            if era.check_pages:
                msgs.append("BUG: Bad page state in process ... page dumped because: "
                            "PAGE_FLAGS_CHECK_AT_FREE flag(s) set")
            add("error", "memblock page freed to buddy",
                f"{t.level_name} table {t.phys:#x} came from memblock (PG_reserved) but "
                f"{_call(ev.routine)} frees it with free_pages(): "
                + ("the page is leaked as a bad page." if era.check_pages else
                   "it joins the buddy allocator and managed_pages drifts."),
                *msgs)
        # ctor/dtor balance.
        if dtor and t.typed is False:
            msgs = []
            if era.page_type == "inverted" and era.debug_vm:
                msgs.append("kernel BUG at include/linux/page-flags.h: VM_BUG_ON_PAGE(!PageTable(page))")
            if era.alloc_split and not (era.ptlock_free_null_safe and not t.ptl_pointer):
                msgs.append("kmem_cache_free(page_ptl_cachep) of a ptl that was never allocated")
            add("error", "dtor without ctor",
                f"{_call(ev.routine)} runs the pgtable dtor on {t.level_name} table {t.phys:#x} "
                f"({t.origin}), whose ctor never ran: NR_PAGETABLE drops below the real count by one.",
                *msgs)
        elif not dtor and t.typed:
            msgs = []
            if not era.free_clears_type and era.check_pages:
                msgs.append("BUG: Bad page state in process ... page_type: "
                            + ("f2(table)" if era.page_type == "pgty" else "0xfffffdff(table)")
                            + " ... page dumped because: nonzero mapcount")
            leak = "; its ptl object leaks too" if era.alloc_split and t.ptl_pointer else ""
            add("error", "ctor without dtor",
                f"{_call(ev.routine)} frees {t.level_name} table {t.phys:#x} ({t.origin}) without the "
                f"pgtable dtor its ctor needs: NR_PAGETABLE stays one page too high{leak}.",
                *msgs)
        elif t.typed is None:
            add("warning", "ctor unknown",
                f"cannot tell whether {t.level_name} table {t.phys:#x} was ctor'd (no struct page facts).")

