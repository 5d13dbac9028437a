"""
Physical memory facts for the classifier and the audit
------------------------------------------------------

- :func:`read_memblock`: the regions of ``memblock.reserved`` (or
  ``.memory``); arm64 keeps memblock after boot (``ARCH_KEEP_MEMBLOCK``), so a
  dump can test "this table page was a memblock allocation" directly.
- :class:`MemoryMap`: present memory sections (``SECTION_IS_EARLY`` for boot
  memory), memory blocks with their zone and the altmap reserve of
  ``memmap_on_memory`` blocks, with vectorised queries over many physical
  ranges at once (:meth:`MemoryMap.kinds`, :meth:`MemoryMap.block_of`).
- :func:`node_stat`: a node stat item (``NR_PAGETABLE``) exactly as the
  kernel would report it after ``vm.stat_refresh``: per node the global
  ``pglist_data.vm_stat[item]`` plus every possible CPU's
  ``per_cpu_nodestats->vm_node_stat_diff[item]``.

Layout comes from DWARF through the target (``offsetof``/``sizeof``), never
from a drgn Object per page; memory blocks are read through drgn's helpers
when the target has a Program (a few dozen objects), else derived from the
sections.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from mminspect.bits import U64
from mminspect.errors import MMInspectError
from mminspect.sparse import Section, memory_block_size, read_sections
from mminspect.target.base import TargetFault

__all__ = (
    "Block",
    "MemoryMap",
    "NodeCount",
    "read_memblock",
    "node_stat",
)


#: Values of :meth:`MemoryMap.kinds`.
MAPS_NONE = 0  #: no present section in the range
MAPS_BOOT = 1  #: only boot memory (SECTION_IS_EARLY)
MAPS_HOT = 2  #: only hot-added memory
MAPS_MIXED = 3  #: both
MAPS_NAMES = {MAPS_NONE: "none", MAPS_BOOT: "boot", MAPS_HOT: "hot-added", MAPS_MIXED: "boot+hot-added"}


def _u64(data: bytes, off: int = 0) -> int:
    return int.from_bytes(data[off : off + 8], "little")


def read_memblock(kernel, which: str = "reserved") -> Optional[np.ndarray]:
    """``memblock.<which>`` regions as an ``n x 3`` uint64 array (base, size,
    flags), sorted by base; None without the DWARF to find them."""
    t = kernel.target
    addr = t.symbol("memblock")
    off_type = t.offsetof("struct memblock", which)
    off_cnt = t.offsetof("struct memblock_type", "cnt")
    off_regions = t.offsetof("struct memblock_type", "regions")
    rsize = t.sizeof("struct memblock_region")
    off_base = t.offsetof("struct memblock_region", "base")
    off_size = t.offsetof("struct memblock_region", "size")
    off_flags = t.offsetof("struct memblock_region", "flags")
    if None in (addr, off_type, off_cnt, off_regions, rsize, off_base, off_size, off_flags):
        return None
    try:
        hdr = t.read_virt(addr + off_type, max(off_cnt, off_regions) + 8)
        cnt = _u64(hdr, off_cnt)
        regions = _u64(hdr, off_regions)
        if cnt > 1 << 20:
            return None
        raw = t.read_virt(regions, cnt * rsize) if cnt else b""
    except TargetFault:
        return None
    out = np.zeros((cnt, 3), dtype=np.uint64)
    for i in range(cnt):
        rec = raw[i * rsize : (i + 1) * rsize]
        out[i] = (_u64(rec, off_base), _u64(rec, off_size), int.from_bytes(rec[off_flags : off_flags + 4], "little"))
    return out[np.argsort(out[:, 0], kind="stable")] if cnt else out


def in_regions(regions: Optional[np.ndarray], pa: np.ndarray) -> np.ndarray:
    """Which ``pa`` lie inside one of ``regions`` (sorted base, size rows)."""
    pa = np.asarray(pa, dtype=np.uint64)
    if regions is None or not len(regions):
        return np.zeros(len(pa), dtype=bool)
    k = np.searchsorted(regions[:, 0], pa, side="right") - 1
    ok = k >= 0
    kk = np.maximum(k, 0)
    return ok & (pa < regions[kk, 0] + regions[kk, 1])


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
        hook = getattr(kernel.target, "memory_blocks", None)
        section_bits = int(kernel.vmcoreinfo.get("NUMBER(SECTION_SIZE_BITS)", 27))
        if hook is not None:  # recording and bundle targets
            blocks = hook(bsize, sections, section_bits, kernel.regime.page_shift)
        else:
            blocks = drgn_blocks(kernel.target, bsize, sections, section_bits, kernel.regime.page_shift)
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
    prog = getattr(target, "prog", None)
    if prog is None or not target.has_debug_info:
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
            alt_start, alt_pages = 0, 0
            try:
                alt_pages = mem.nr_vmemmap_pages.value_()  # v5.15 .. v6.4
                alt_start = start >> shift
            except AttributeError:
                try:
                    alt = mem.altmap  # v6.5+: struct vmem_altmap *
                    if alt:
                        alt_start = alt.base_pfn.value_()
                        alt_pages = alt.reserve.value_() + alt.alloc.value_()
                except AttributeError:
                    pass
            out.append(Block(bid, start, bsize, state, zone, mem.nid.value_(), early_by_block.get(bid, False),
                             alt_start, alt_pages))
    except Exception:  # unusual layouts: fall back to sections
        return None
    return sorted(out, key=lambda b: b.start)


# -- node stats ----------------------------------------------------------------


@dataclass(frozen=True)
class NodeCount:
    """One node's value of a node stat item."""

    nid: int
    global_value: int  #: pglist_data.vm_stat[item]
    percpu_delta: int  #: sum of per_cpu_nodestats->vm_node_stat_diff[item]

    @property
    def exact(self) -> int:
        return self.global_value + self.percpu_delta


def _bitmap(data: bytes) -> List[int]:
    bits = []
    for i in range(0, len(data), 8):
        w = _u64(data, i)
        b = 0
        while w:
            if w & 1:
                bits.append(i * 8 + b)
            w >>= 1
            b += 1
    return bits


def possible_cpus(kernel) -> List[int]:
    """Possible CPUs from ``__cpu_possible_mask``.

    :raises MMInspectError: when it cannot be read"""
    t = kernel.target
    addr = t.symbol("__cpu_possible_mask")
    size = t.sizeof("struct cpumask") or 8
    if addr is None:
        raise MMInspectError(f"{t.name}: no __cpu_possible_mask symbol")
    try:
        return _bitmap(t.read_virt(addr, size))
    except TargetFault as e:
        raise MMInspectError(f"cannot read __cpu_possible_mask: {e}") from None


def online_pgdats(kernel) -> List[Tuple[int, int]]:
    """(nid, pglist_data address) of every online node.

    :raises MMInspectError: without the symbols to find them"""
    t = kernel.target
    nd = t.symbol("node_data")
    if nd is None:
        contig = t.symbol("contig_page_data")
        if contig is None:
            raise MMInspectError(f"{t.name}: neither node_data nor contig_page_data: cannot find the nodes")
        return [(0, contig)]
    states = t.symbol("node_states")
    n_online = t.constant("N_ONLINE")
    msize = t.sizeof("nodemask_t")
    nodes = [0]
    if states is not None and n_online is not None and msize:
        try:
            nodes = _bitmap(t.read_virt(states + n_online * msize, msize))
        except TargetFault:
            pass
    out = []
    for nid in nodes:
        try:
            p = _u64(t.read_virt(nd + 8 * nid, 8))
        except TargetFault:
            continue
        if p:
            out.append((nid, p))
    return out


def node_stat(kernel, item: str = "NR_PAGETABLE") -> List[NodeCount]:
    """``item`` of ``enum node_stat_item`` per online node, as the global
    counter plus the per-CPU differences not yet folded into it.

    :raises MMInspectError: without the DWARF that locates them
    """
    t = kernel.target
    idx = t.constant(item)
    off_vm_stat = t.offsetof("struct pglist_data", "vm_stat")
    off_pcp = t.offsetof("struct pglist_data", "per_cpu_nodestats")
    off_diff = t.offsetof("struct per_cpu_nodestat", "vm_node_stat_diff")
    pco = t.symbol("__per_cpu_offset")
    if None in (idx, off_vm_stat, off_pcp, off_diff, pco):
        raise MMInspectError(
            f"{t.name}: reading {item} needs the kernel's debug info (enum node_stat_item, pglist_data)"
        )
    cpus = possible_cpus(kernel)
    try:
        offsets = np.frombuffer(t.read_virt(pco, 8 * (max(cpus) + 1)), dtype="<u8")
    except TargetFault as e:
        raise MMInspectError(f"cannot read __per_cpu_offset: {e}") from None
    out = []
    for nid, pgdat in online_pgdats(kernel):
        try:
            g = int.from_bytes(t.read_virt(pgdat + off_vm_stat + 8 * idx, 8), "little", signed=True)
            pcp = _u64(t.read_virt(pgdat + off_pcp, 8))
            delta = 0
            for cpu in cpus:
                addr = (pcp + int(offsets[cpu])) & U64
                delta += int.from_bytes(t.read_virt(addr + off_diff + idx, 1), "little", signed=True)
        except TargetFault as e:
            raise MMInspectError(f"cannot read node {nid}'s {item}: {e}") from None
        out.append(NodeCount(nid, g, delta))
    return out


def global_node_stat(kernel, item: str = "NR_PAGETABLE") -> Optional[int]:
    """The global ``vm_node_stat[item]`` (the sum of the nodes' folded values)."""
    t = kernel.target
    idx = t.constant(item)
    addr = t.symbol("vm_node_stat")
    if idx is None or addr is None:
        return None
    try:
        return int.from_bytes(t.read_virt(addr + 8 * idx, 8), "little", signed=True)
    except TargetFault:
        return None
