"""
Memory sections and blocks
--------------------------

:class:`MemoryMap`: present memory sections (``SECTION_IS_EARLY`` for boot
memory), memory blocks with their zone and the altmap reserve of
``memmap_on_memory`` blocks, with vectorised queries over many physical
ranges at once (:meth:`MemoryMap.kinds`, :meth:`MemoryMap.block_of`).
Memory blocks are read through drgn's helpers when the target has a Program
with debug info (a few dozen objects), from the target itself when it
answers for them (a recording, a bundle), else derived from the sections.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from mminspect.mm.memblock import in_regions
from mminspect.sparse import Section, memory_block_size, read_sections
from mminspect.target.base import HasMemoryBlocks, program_of

__all__ = ("Block", "MAPS_BOOT", "MAPS_HOT", "MAPS_MIXED", "MAPS_NAMES", "MAPS_NONE", "MemoryMap", "drgn_blocks")

#: Values of :meth:`MemoryMap.kinds`.
#: Values of :meth:`MemoryMap.kinds`.
MAPS_NONE = 0  #: no present section in the range
MAPS_BOOT = 1  #: only boot memory (SECTION_IS_EARLY)
MAPS_HOT = 2  #: only hot-added memory
MAPS_MIXED = 3  #: both
MAPS_NAMES = {MAPS_NONE: "none", MAPS_BOOT: "boot", MAPS_HOT: "hot-added", MAPS_MIXED: "boot+hot-added"}


@dataclass(frozen=True)
class Block:
    """One memory block (sysfs ``memoryN``)."""

    id: int
    start: int
    size: int
    state: str
    zone: Optional[str]
    nid: Optional[int]
    early: bool
    #: memmap_on_memory: the block's first pages hold its own memmap (altmap).
    altmap_start: int = 0
    altmap_pages: int = 0
    #: The pages memory_block_offline() skips: the block's own memmap
    #: (v5.15..v6.5 ``mem->nr_vmemmap_pages``; v6.6+ ``mem->altmap->free``).
    #: Offlining covers ``[start + altmap_free pages, end)``.
    altmap_free: int = 0

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


@dataclass
class MemoryMap:
    """Sections and blocks, with vectorised queries."""

    sections: List[Section]
    blocks: List[Block]
    block_size: int
    section_size: int
    evidence: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.sections
        self._sec_start = np.array([x.start for x in s], dtype=np.uint64)
        self._sec_end = np.array([x.start + x.size for x in s], dtype=np.uint64)
        early = np.array([x.early for x in s], dtype=np.int64)
        self._early_cum = np.concatenate(([0], np.cumsum(early)))
        self._blk_start = np.array([b.start for b in self.blocks], dtype=np.uint64)
        alt = [(b.altmap_start, b.altmap_start + b.altmap_pages) for b in self.blocks if b.altmap_pages]
        self.altmaps = np.array(sorted(alt), dtype=np.uint64).reshape(-1, 2)

    @classmethod
    def read(cls, kernel) -> "MemoryMap":
        """Read sections (VMCOREINFO) and memory blocks (drgn when possible).

        :raises MMInspectError: when mem_section cannot be read
        """
        sections = read_sections(kernel)
        bsize = memory_block_size(kernel, sections)
        ssize = sections[0].size if sections else 1 << int(kernel.vmcoreinfo.get("NUMBER(SECTION_SIZE_BITS)", 27))
        ev = {"sections": f"{len(sections)} present sections from VMCOREINFO mem_section"}
        t = kernel.target
        section_bits = int(kernel.vmcoreinfo.get("NUMBER(SECTION_SIZE_BITS)", 27))
        if isinstance(t, HasMemoryBlocks):  # recording and bundle targets
            blocks = t.memory_blocks(bsize, sections, section_bits, kernel.regime.page_shift)
        else:
            blocks = drgn_blocks(t, bsize, sections, section_bits, kernel.regime.page_shift)
        if blocks is None:
            by_block: Dict[int, List[Section]] = {}
            for sec in sections:
                by_block.setdefault(sec.start // bsize, []).append(sec)
            blocks = [
                Block(bid, bid * bsize, bsize, "online" if all(x.online for x in secs) else "offline", None, None,
                      any(x.early for x in secs))
                for bid, secs in sorted(by_block.items())
            ]
            ev["blocks"] = "derived from sections (no drgn Program: zones and altmaps unknown)"
        else:
            ev["blocks"] = f"{len(blocks)} memory blocks from the kernel's memory_blocks xarray"
        return cls(sections, blocks, bsize, ssize, ev)

    # -- queries ---------------------------------------------------------------
    def kinds(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """For each physical range ``[lo, hi)``: MAPS_NONE/BOOT/HOT/MIXED by
        the present sections it overlaps (SECTION_IS_EARLY = boot)."""
        lo = np.asarray(lo, dtype=np.uint64)
        hi = np.asarray(hi, dtype=np.uint64)
        if not len(self.sections):
            return np.zeros(len(lo), dtype=np.int8)
        first = np.searchsorted(self._sec_end, lo, side="right")  # first section ending after lo
        last = np.searchsorted(self._sec_start, hi, side="left")  # sections starting before hi
        n = np.maximum(last - first, 0)
        early = self._early_cum[np.maximum(last, first)] - self._early_cum[first]
        out = np.zeros(len(lo), dtype=np.int8)
        out |= np.where(early > 0, MAPS_BOOT, 0).astype(np.int8)
        out |= np.where(n - early > 0, MAPS_HOT, 0).astype(np.int8)
        return out

    def block_of(self, pa: np.ndarray) -> np.ndarray:
        """Index into :attr:`blocks` of the block holding each PA (-1: none)."""
        pa = np.asarray(pa, dtype=np.uint64)
        if not len(self.blocks):
            return np.full(len(pa), -1, dtype=np.int64)
        k = np.searchsorted(self._blk_start, pa, side="right") - 1
        kk = np.maximum(k, 0)
        size = np.uint64(self.block_size)
        inside = (k >= 0) & (pa < self._blk_start[kk] + size)
        return np.where(inside, k, -1)

    def in_altmap(self, pfns: np.ndarray) -> np.ndarray:
        """PFNs inside a memory block's altmap reserve (its own memmap)."""
        return in_regions(
            np.stack((self.altmaps[:, 0], self.altmaps[:, 1] - self.altmaps[:, 0]), axis=1)
            if len(self.altmaps) else None,
            pfns,
        )

    def pfn_ranges(self, page_shift: int) -> List[Tuple[int, int]]:
        """``[start, end)`` PFN ranges of the present sections, merged."""
        out: List[Tuple[int, int]] = []
        for s in self.sections:
            lo, hi = s.start >> page_shift, (s.start + s.size) >> page_shift
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        return out


def drgn_blocks(target, bsize: int, sections: List[Section], section_bits: int,
                page_shift: int) -> Optional[List[Block]]:
    """Memory blocks from the kernel's ``memory_blocks`` xarray through drgn
    (state, zone, nid, altmap), or None without a drgn Program and DWARF."""
    prog = program_of(target)
    if prog is None:
        return None
    try:
        from drgn.helpers.linux.mm import decode_memory_block_state, for_each_memory_block
    except ImportError:
        return None
    early_by_block: Dict[int, bool] = {}
    for sec in sections:
        early_by_block[sec.start // bsize] = early_by_block.get(sec.start // bsize, False) or sec.early
    shift = page_shift
    out = []
    try:
        for mem in for_each_memory_block(prog):
            start = mem.start_section_nr.value_() << section_bits
            bid = start // bsize
            zone = mem.zone.name.string_().decode() if mem.zone else None
            state = decode_memory_block_state(mem).removeprefix("MEM_").lower()
            alt_start, alt_pages, alt_free = 0, 0, 0
            try:
                alt_pages = alt_free = mem.nr_vmemmap_pages.value_()  # v5.15 .. v6.5
                alt_start = start >> shift
            except AttributeError:
                try:
                    alt = mem.altmap  # v6.6+: struct vmem_altmap *
                    if alt:
                        alt_start = alt.base_pfn.value_()
                        alt_pages = alt.reserve.value_() + alt.alloc.value_()
                        alt_free = alt.free.value_()
                except AttributeError:
                    pass
            out.append(Block(bid, start, bsize, state, zone, mem.nid.value_(), early_by_block.get(bid, False),
                             alt_start, alt_pages, alt_free))
    except Exception:  # unusual layouts: fall back to sections
        return None
    return sorted(out, key=lambda b: b.start)
