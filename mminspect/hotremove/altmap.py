"""
Memory blocks that carry their own memmap (memmap_on_memory)
------------------------------------------------------------

With ``memory_hotplug.memmap_on_memory=1`` (and ``MHP_MEMMAP_ON_MEMORY`` from
the ACPI driver), a hot-added block's ``struct page`` array lives in the
block's own first pages, handed out by a ``struct vmem_altmap``:

- v5.15..v6.5: only for a hot-add of exactly one block
  (``mhp_supports_memmap_on_memory(size)``: ``size ==
  memory_block_size_bytes()``); the block records ``nr_vmemmap_pages``, and
  ``try_remove_memory()`` refuses any other removal size of such memory with
  ``pr_warn("Refuse to remove %#llx - %#llx," "wrong granularity\\n")``.
- v6.6+: ``memory_block.altmap``; since "mm/memory_hotplug: split
  memmap_on_memory requests across memblocks" each block of a larger hot-add
  has its own altmap and ``remove_memory_blocks_and_altmaps()`` removes the
  range block by block (``arch_remove_memory(block, altmap)``); a range whose
  blocks mix altmap and none is refused by ``memory_blocks_have_altmaps()``
  (``WARN_ON_ONCE(num_memblocks != num_altmaps)``, -EINVAL).

Either way ``memory_block_offline()`` offlines ``[start + nr_vmemmap_pages,
end)`` (v6.6+: ``altmap->free`` pages skipped), and at removal
``vmemmap_free()`` gives the memmap back with ``vmem_altmap_free()``
(``altmap->alloc -= nr``), not to the buddy allocator. :func:`memmap_homes`
says, per section, where its memmap lives in this dump (the vmemmap leaf's
physical page, read from the captured tables) and where the kernel sends it.
"""

from dataclasses import dataclass
from typing import List, Optional

from mminspect.hotremove.notifiers import Check

__all__ = ("MemmapHome", "granularity_check", "memmap_homes", "offline_start")


@dataclass(frozen=True)
class MemmapHome:
    """Where one section's ``struct page`` array lives and where it goes."""

    section: int  #: section number
    block: Optional[int]
    vmemmap: int  #: pfn_to_page() of the section's first PFN
    phys: Optional[int]  #: the physical page behind it (None: not mapped in the snapshot)
    lives: str  #: "altmap", "boot memory", "buddy", "unknown"
    goes: str  #: what removal does with it


def offline_start(block, page_shift: int) -> int:
    """The first PFN ``memory_block_offline()`` offlines: after the block's
    own memmap pages, if any."""
    return (block.start >> page_shift) + block.altmap_free


def _translate(st, va: int) -> Optional[int]:
    """The physical address ``va`` maps to in the captured init_mm tables."""
    r = st.regime
    phys = st.root_phys
    for level in range(r.top_level, 4):
        t = st.entries(phys)
        if t is None:
            return None
        d = int(t[(va >> r.shift(level)) & (len(t) - 1)])
        if not d & 1:
            return None
        if level == 3 or st.is_leaf(d, level):
            return r.desc_to_phys(d) + (va & ((1 << r.shift(level)) - 1))
        phys = st.child(d)
    return None


def memmap_homes(sim) -> List[MemmapHome]:
    """Per section of the proposal: where its memmap lives and where
    ``vmemmap_free()`` sends it."""
    snap = sim.snapshot
    blocks = {b.id: b for b in snap.blocks}
    bsize = snap.kernel["block_size"]
    early = sim.early_sections
    out = []
    for start, _ in sim.proposal.sections(sim.section_size):
        pfn = start >> sim.page_shift
        va = sim.pfn_to_page(pfn)
        pa = _translate(sim.pristine, va)
        b = blocks.get(start // bsize)
        alt = b is not None and b.altmap_pages
        in_alt = (alt and pa is not None
                  and b.altmap_start << sim.page_shift <= pa < (b.altmap_start + b.altmap_pages) << sim.page_shift)
        if in_alt:
            lives = f"altmap: the first {b.altmap_pages} pages of memory{b.id} itself"
            goes = "vmem_altmap_free() (altmap->alloc -= pages): it leaves with the block, not to the buddy allocator"
        elif pa is None:
            lives, goes = "unknown", "unknown: this section's vmemmap is not mapped in the snapshot"
        elif start in early:
            # sparse_init_nid(): a boot section's memmap is a memblock allocation.
            lives = f"memblock (sparse buffer) at {pa:#x}"
            goes = "free_map_bootmem() -> vmemmap_free(): free_pages() of PG_reserved pages"
        else:
            # section_activate() -> populate_section_memmap() without an altmap:
            # vmemmap_alloc_block() takes pages from the buddy allocator.
            lives = f"buddy pages at {pa:#x}"
            goes = ("vmem_altmap_free(), though the pages are not the altmap's" if alt else
                    "free_pages() to the buddy allocator")
        out.append(MemmapHome(start // sim.section_size, b.id if b else None, va, pa, lives, goes))
    return out


def granularity_check(sim) -> Optional[Check]:
    """``try_remove_memory()``'s refusal of a removal that does not match how
    the memory's memmap was added (after every block is offline)."""
    snap = sim.snapshot
    era = snap.era
    bsize = snap.kernel["block_size"]
    p = sim.proposal
    blocks = [b for b in snap.blocks if p.start <= b.start < p.end]
    with_alt = [b for b in blocks if b.altmap_free]
    if not with_alt:
        return None
    if era.block_memmap == "nr_vmemmap_pages":
        if p.size != bsize:
            # pr_warn("Refuse to remove %#llx - %#llx," "wrong granularity\n", start, start + size)
            return Check("altmap-granularity", "refuse",
                         f"Refuse to remove {p.start:#x} - {p.end:#x},wrong granularity",
                         f"memory{with_alt[0].id} has its own memmap ({with_alt[0].altmap_free} pages) and "
                         "v5.15..v6.5 removes such memory one block at a time")
        return None
    if era.block_memmap == "altmap" and len(with_alt) != len(blocks):
        return Check("altmap-granularity", "refuse",
                     "WARNING: ... at mm/memory_hotplug.c memory_blocks_have_altmaps "
                     "(WARN_ON_ONCE(num_memblocks != num_altmaps))",
                     f"{len(with_alt)} of {len(blocks)} blocks have an altmap: try_remove_memory() returns -EINVAL")
    return None
