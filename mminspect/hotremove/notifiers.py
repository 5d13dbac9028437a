"""
Memory-notifier refusals on the offline path
--------------------------------------------

``offline_pages()`` (mm/memory_hotplug.c) sends ``MEM_GOING_OFFLINE`` for the
PFN range it offlines, ``{start_pfn, nr_pages}``; a notifier that answers
``NOTIFY_BAD`` stops the offline, and with it an ACPI eject. arm64 registers
one (arch/arm64/mm/mmu.c), whose checks depend on the dump:

- **boot memory** (bbd6ec605c0f "arm64/mm: Enable memory hot remove", v5.7):
  per section from ``start_pfn`` in steps of ``PAGES_PER_SECTION``, an early
  section (``SECTION_IS_EARLY``) is refused with ``pr_warn("Boot memory [%lx
  %lx] offlining attempted\\n")``, printing ``PFN_PHYS(pfn)`` and one section
  size on.
- **a split kernel leaf** ("arm64/mm: Reject memory removal that splits a
  kernel leaf mapping", Anshuman Khandual, posted 2026-02-03 with Fixes:
  bbd6ec605c0f and Cc: stable; in Debian's 7.2): ``can_unmap_without_split()``
  asks ``addr_splits_kernel_leaf()`` of both edges of the range in the linear
  map, then in vmemmap (``pfn_to_page(pfn)`` and ``pfn_to_page(pfn +
  nr_pages)``), and refuses with ``pr_warn("[%lx %lx] splits a leaf entry in
  linear map\\n")`` or ``... in vmemmap`` and the range's physical bounds. The
  patch says a rejection "should never" be seen in practice, because ACPI and
  virtio remove whole devices; but a ``memmap_on_memory`` block offlines from
  after its own memmap pages, and on 4K pages that memmap is one PMD-mapped
  vmemmap leaf: the offlined range's first ``struct page`` sits 32 KiB into
  it, so every such block is refused.

:func:`memory_notifier` replays them on the captured tables in the kernel's
order. A check whose presence or inputs the dump cannot show is returned as
"unknown", with why, never as a pass.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

from mminspect.arch.arm64 import PTE_CONT

__all__ = ("Check", "addr_splits_kernel_leaf", "memory_notifier")


@dataclass(frozen=True)
class Check:
    """One notifier check on one offline range: ``result`` is "refuse",
    "pass" or "unknown"; ``message`` is what the kernel prints when it
    refuses (word for word); ``why`` the evidence or the reason it is unknown."""

    rule: str
    result: str
    message: str = ""
    why: str = ""


def addr_splits_kernel_leaf(st, addr: int) -> Optional[bool]:
    """arch/arm64/mm/mmu.c ``addr_splits_kernel_leaf()`` on a
    :class:`~mminspect.hotremove.engine.TableState`: whether ``addr`` lies
    strictly inside a leaf (a PUD or PMD block, a contiguous PMD or PTE run,
    or a page) of init_mm. An address aligned to a level's span stops the
    walk there (it cannot split what starts at it); so does an entry that is
    not present. None when a table the walk needs is not in the snapshot."""
    r = st.regime
    phys = st.root_phys
    for level in range(r.top_level, 4):
        span = 1 << r.shift(level)
        if level <= 1 and addr % span == 0:
            return False  # PGDIR_SIZE / P4D_SIZE / PUD_SIZE aligned
        if level == 2 and addr % (span * r.cont_entries(2)) == 0:
            return False  # CONT_PMD_SIZE aligned
        if level == 3 and addr % (span * r.cont_entries(3)) == 0:
            return False  # CONT_PTE_SIZE aligned
        table = st.entries(phys)
        if table is None:
            return None
        desc = int(table[(addr >> r.shift(level)) & (len(table) - 1)])
        if not desc & 1:
            return False  # !p?d_present()
        if level == 3:
            return bool(desc & PTE_CONT) or addr % span != 0
        if level == 2:
            if desc & PTE_CONT:
                return True  # pmd_cont()
            if addr % span == 0:
                return False
        if st.is_leaf(desc, level):
            return level >= 1  # pud_leaf() / pmd_leaf(); no leaf test above the PUD
        if desc & 3 != 3:
            return False
        phys = st.child(desc)
    return False


def _boot_memory(sim, start_pfn: int, nr_pages: int) -> Optional[Check]:
    snap = sim.snapshot
    per_section = sim.section_size >> sim.page_shift
    for pfn in range(start_pfn, start_pfn + nr_pages, per_section):
        if (pfn - pfn % per_section) << sim.page_shift in sim.early_sections:
            start = pfn << sim.page_shift
            return Check("boot-memory", "refuse",
                         f"Boot memory [{start:x} {start + sim.section_size:x}] offlining attempted",
                         snap.era.evidence.get("bootmem_notifier", ""))
    return None


def _leaf_split(sim, start_pfn: int, nr_pages: int) -> Check:
    era = sim.snapshot.era
    phys_start = start_pfn << sim.page_shift
    phys_end = phys_start + (nr_pages << sim.page_shift)
    edges = (
        ("linear map", sim.phys_to_virt(phys_start), sim.phys_to_virt(phys_end)),
        ("vmemmap", sim.pfn_to_page(start_pfn), sim.pfn_to_page(start_pfn + nr_pages)),
    )
    would: Optional[Tuple[str, int]] = None
    missing: List[str] = []
    for where, lo, hi in edges:
        got = [addr_splits_kernel_leaf(sim.pristine, a) for a in (lo, hi)]
        if True in got:
            va = lo if got[0] else hi
            would = (where, va)
            break
        missing += [f"{where} {a:#x}" for a, g in zip((lo, hi), got) if g is None]
    message = f"[{phys_start:x} {phys_end:x}] splits a leaf entry in {would[0]}" if would else ""
    if era.leaf_split_notifier is None:
        what = (f"if it has the check, it refuses: {message} ({would[0]} edge {would[1]:#x} is inside a leaf)"
                if would else "its edges split no leaf, so the check would pass if present")
        return Check("leaf-split", "unknown", "",
                     f"cannot tell whether this kernel has arm64's leaf-split check "
                     f"({era.evidence.get('leaf_split_notifier', 'no era fact in this snapshot')}); {what}")
    if not era.leaf_split_notifier:
        return Check("leaf-split", "pass", "", era.evidence.get("leaf_split_notifier", ""))
    if would:
        return Check("leaf-split", "refuse", message,
                     f"{would[0]} edge {would[1]:#x} lies inside a leaf mapping; "
                     + era.evidence.get("leaf_split_notifier", ""))
    if missing:
        return Check("leaf-split", "unknown", "",
                     f"the tables that map {', '.join(missing)} are not in the snapshot")
    return Check("leaf-split", "pass", "", "both edges fall on leaf boundaries in the linear map and vmemmap")


def memory_notifier(sim, start_pfn: int, nr_pages: int, refuses_boot_memory: bool = True) -> List[Check]:
    """arm64's ``MEM_GOING_OFFLINE`` checks for ``{start_pfn, nr_pages}`` in
    the kernel's order: each check's outcome, up to the first refusal."""
    era = sim.snapshot.era
    out: List[Check] = []
    if not refuses_boot_memory:
        return out  # a policy of a kernel with no arm64 memory notifier (the 2017 RFC)
    if era.bootmem_notifier:
        boot = _boot_memory(sim, start_pfn, nr_pages)
        if boot is not None:
            return [boot]
    out.append(_leaf_split(sim, start_pfn, nr_pages))
    return out
