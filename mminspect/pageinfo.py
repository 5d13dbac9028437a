"""
What a physical page is, from its struct page and the memory map
----------------------------------------------------------------

:func:`page_info` answers, for a few PFNs at once, what crash's ``kmem -p``
and ``vtop``'s page line answer and a little more: whether the PFN is RAM
(a present memory section) and below ``max_pfn``, its section and memory
block (boot memory by ``SECTION_IS_EARLY``, or hot-added; the block's state,
zone and node), the zone whose span holds it, the page flags by name, the
page type, refcount, ``mapping`` (anonymous, KSM, movable or a file's
``address_space``), the memcg and, for slab pages, the cache's name.

It reuses the batched struct page reader (:class:`~mminspect.pages.
StructPages`) and memory map (:class:`~mminspect.memory.MemoryMap`) of the
kernel's classifier; flag names come from DWARF ``enum pageflags``, else
VMCOREINFO ``NUMBER(PG_*)``.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.classify import classifier_for
from mminspect.errors import MMInspectError
from mminspect.target.base import TargetFault, core_file_of, program_of
from mminspect.walk import CLS_LEAF, walk

__all__ = ("PageInfo", "max_pfn", "page_flag_names", "page_info", "struct_page_facts")



@dataclass
class PageInfo:
    """What one physical page is (see the module docstring)."""

    pfn: int
    phys: int
    ram: bool  #: in a present memory section
    section: Optional[int] = None
    memory: Optional[str] = None  #: "boot" (SECTION_IS_EARLY) or "hot-added"
    block: Optional[int] = None
    block_state: Optional[str] = None
    zone: Optional[str] = None
    nid: Optional[int] = None
    readable: bool = False  #: the struct page could be read
    page: int = 0  #: VA of the struct page
    flags: int = 0
    flag_names: Tuple[str, ...] = ()
    page_type: str = ""
    refcount: int = 0
    mapcount: Optional[int] = None
    mapping: int = 0
    mapping_kind: str = ""
    index: int = 0
    memcg: int = 0
    compound_head: Optional[int] = None  #: PFN of the head, for a tail page
    slab_cache: Optional[str] = None
    table: bool = False  #: typed as a page table (a pgtable ctor ran)
    reserved: bool = False
    buddy: bool = False
    #: CONFIG_PAGE_OWNER's state: None (not built in), "off" (page_owner=on
    #: not given at boot: nothing recorded), "on" (recorded in page_ext; not decoded here)
    page_owner: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        d = dict(self.__dict__)
        d["flag_names"] = list(self.flag_names)
        return d


def _cache(kernel) -> Dict[str, object]:
    c = kernel.__dict__.get("_pageinfo_cache")
    if c is None:
        c = kernel.__dict__["_pageinfo_cache"] = {}
    return c


def page_flag_names(kernel) -> Dict[int, str]:
    """Bit -> name of every page flag (``enum pageflags`` below
    ``__NR_PAGEFLAGS``; the first name of aliased bits)."""
    cache = _cache(kernel)
    if "flags" in cache:
        return cache["flags"]
    out: Dict[int, str] = {}
    prog = program_of(kernel.target, debug_info=False)
    if prog is not None and kernel.target.has_debug_info:
        try:
            enum = prog.type("enum pageflags")
            limit = next((v for n, v in enum.enumerators if n == "__NR_PAGEFLAGS"), 64)
            for name, value in enum.enumerators:
                if value < limit and value not in out and name.startswith("PG_"):
                    out[value] = name[3:]
        except LookupError:
            pass
    if not out:
        for key, value in kernel.vmcoreinfo.items():
            if key.startswith("NUMBER(PG_") and key.endswith(")"):
                try:
                    out.setdefault(int(value), key[10:-1])
                except ValueError:
                    pass
    cache["flags"] = out
    return out


def max_pfn(kernel) -> Optional[int]:
    """The kernel's ``max_pfn`` (DWARF), else the end of the last present section."""
    cache = _cache(kernel)
    if "max_pfn" not in cache:
        value = None
        addr = kernel.target.symbol("max_pfn")
        if addr is not None:
            try:
                value = int.from_bytes(kernel.target.read_virt(addr, 8), "little") or None
            except TargetFault:
                value = None
        if value is None:
            mem = classifier_for(kernel).memory
            if mem is not None and mem.sections:
                s = mem.sections[-1]
                value = (s.start + s.size) >> kernel.regime.page_shift
        cache["max_pfn"] = value
    return cache["max_pfn"]


def _page_owner(kernel) -> Optional[str]:
    """Whether the kernel records page owners: the ``page_owner_inited``
    static key (mm/page_owner.c) is enabled only with ``page_owner=on``."""
    cache = _cache(kernel)
    if "page_owner" not in cache:
        addr = kernel.target.symbol("page_owner_inited")
        state = None
        if addr is not None:
            try:  # struct static_key_false { struct static_key key; }: atomic_t enabled first
                state = "on" if int.from_bytes(kernel.target.read_virt(addr, 4), "little") else "off"
            except TargetFault:
                state = None
        cache["page_owner"] = state
    return cache["page_owner"]


def _zones(kernel) -> List[Tuple[int, int, str, int]]:
    """(start pfn, end pfn, zone name, nid) of every populated zone (drgn)."""
    cache = _cache(kernel)
    if "zones" in cache:
        return cache["zones"]
    out: List[Tuple[int, int, str, int]] = []
    prog = program_of(kernel.target, debug_info=False)
    if prog is not None and kernel.target.has_debug_info:
        try:
            from drgn.helpers.linux.mm import for_each_online_pgdat  # type: ignore[attr-defined]
        except ImportError:
            for_each_online_pgdat = None
        try:
            pgdats = list(for_each_online_pgdat(prog)) if for_each_online_pgdat else [prog["contig_page_data"]]
        except Exception:
            try:
                pgdats = [prog["contig_page_data"]]
            except Exception:
                pgdats = []
        for pg in pgdats:
            try:
                for z in pg.node_zones:
                    start = z.zone_start_pfn.value_()
                    span = z.spanned_pages.value_()
                    if span:
                        out.append((start, start + span, z.name.string_().decode(), pg.node_id.value_()))
            except Exception:
                continue
    cache["zones"] = out
    return out


def _slab_cache_name(kernel, cache_ptr: int) -> Optional[str]:
    t = kernel.target
    off = t.offsetof("struct kmem_cache", "name")
    if not cache_ptr or off is None:
        return None
    try:
        name_ptr = int.from_bytes(t.read_virt(cache_ptr + off, 8), "little")
        return t.read_virt(name_ptr, 64).split(b"\0", 1)[0].decode("ascii", "replace")
    except TargetFault:
        return None


def _vmemmap_map(kernel) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vmemmap's leaf mappings (start VA, end VA, PA), from one walk of
    the vmemmap region, cached per kernel."""
    cache = _cache(kernel)
    if "vmemmap" not in cache:
        try:
            w = walk(kernel, kernel.root("vmemmap"))
            leaf = w.runs[w.runs["cls"] == CLS_LEAF]
            cache["vmemmap"] = (leaf["va"].copy(), leaf["va"] + leaf["size"], leaf["pa"].copy())
        except MMInspectError:
            cache["vmemmap"] = None
    return cache["vmemmap"]


def struct_page_facts(kernel, pages, pfns: np.ndarray) -> np.ndarray:
    """Decoded struct pages of scattered ``pfns`` (unique, sorted). From an
    ELF dump file, each struct page is one ``pread`` at the PA the vmemmap
    maps it to (10,000 scattered pages in tens of milliseconds); otherwise,
    and for any page that way cannot give, through ``pages.facts()``."""
    pfns = np.unique(np.asarray(pfns, dtype=np.uint64))
    core = core_file_of(kernel.target)
    vm = _vmemmap_map(kernel) if core is not None and len(pfns) else None
    if vm is None or not len(vm[0]):
        return pages.facts(pfns)
    starts, ends, pas = vm
    size = pages.layout.size
    vas = pages.page_va(pfns)
    k = np.searchsorted(starts, vas, side="right") - 1
    kk = np.maximum(k, 0)
    inside = (k >= 0) & (vas + np.uint64(size) <= ends[kk])
    pa = pas[kk] + (vas - starts[kk])
    raw = np.zeros((len(pfns), size // 8), dtype=np.uint64)
    ok = inside.copy()
    for i in np.nonzero(inside)[0].tolist():
        try:
            core.readinto(int(pa[i]), raw[i])
        except TargetFault:
            ok[i] = False
    facts = pages.layout.decode(raw, pfns, vas, ok)
    miss = ~ok
    if miss.any():  # not mapped by a vmemmap leaf, or not in the file: the reader's way
        facts[miss] = pages.facts(pfns[miss])
    return facts


def page_info(kernel, pfns: Sequence[int]) -> List[PageInfo]:
    """
    What each physical page of ``pfns`` is, in the order given. Columnar:
    every lookup (section, block, zone, struct page) is one numpy pass over
    all PFNs, and the strings (flag names, page type, slab cache) are made
    once per distinct value.

    >>> page_info(k, [0x40246])[0].flag_names
    ('referenced', 'uptodate', 'lru', ...)
    """
    c = classifier_for(kernel)
    shift = kernel.regime.page_shift
    pf = np.asarray([int(p) for p in pfns], dtype=np.uint64)
    n = len(pf)
    pa = pf << np.uint64(shift)
    mem = c.memory
    # sections and blocks
    sec_i = np.full(n, -1, np.int64)
    blk_i = np.full(n, -1, np.int64)
    if mem is not None and mem.sections:
        starts = np.array([x.start for x in mem.sections], np.uint64)
        ends = np.array([x.start + x.size for x in mem.sections], np.uint64)
        k = np.searchsorted(starts, pa, side="right") - 1
        kk = np.maximum(k, 0)
        sec_i = np.where((k >= 0) & (pa < ends[kk]), k, -1)
        blk_i = mem.block_of(pa)
    zones = _zones(kernel)
    zone_text: List[Optional[str]] = [None] * n
    zone_nid: List[Optional[int]] = [None] * n
    if zones:
        hits: List[List[int]] = [[] for _ in range(n)]
        for zi, (zs, ze, _, _) in enumerate(zones):
            for i in np.nonzero((pf >= np.uint64(zs)) & (pf < np.uint64(ze)))[0].tolist():
                hits[i].append(zi)
        for i, h in enumerate(hits):
            if h:
                # Zone spans may overlap (ZONE_MOVABLE inside a node's range): name each.
                zone_text[i] = "/".join(zones[z][2] for z in h)
                zone_nid[i] = zones[h[0]][3]
    # struct pages
    facts = heads = None
    pos = np.zeros(n, np.int64)
    if n:
        facts = struct_page_facts(kernel, c.pages, pf)
        heads = c.pages.heads(facts) if len(facts) else facts
        pos = np.searchsorted(facts["pfn"], pf)
    names = page_flag_names(kernel)
    L = c.layout
    off_slab_cache = kernel.target.offsetof("struct slab", "slab_cache")
    flag_cache: Dict[int, Tuple[str, ...]] = {}
    type_cache: Dict[int, str] = {}
    slab_cache: Dict[int, Optional[str]] = {}
    head_pfn = None
    if facts is not None and facts["tail"].any():
        head_pfn = c.pages.pfn_of_page_va(facts["w1"] - np.uint64(1))
    blocks = mem.blocks if mem is not None else []
    sections = mem.sections if mem is not None else []
    # One Python list per column, in the order of ``pfns`` (a row of a
    # structured array costs a tuple of every field; most are not read here).
    F: Dict[str, list] = {}
    if facts is not None:
        for name in ("ok", "va", "flags", "tail"):
            F[name] = facts[name][pos].tolist()
        for name in ("flags", "page_type", "refcount", "mapping", "index", "memcg", "table", "reserved",
                     "buddy", "slab", "w1", "w2", "ptl"):
            F["h_" + name] = heads[name][pos].tolist()
        F["raw_page_type"] = facts["page_type"][pos].tolist()
        if head_pfn is not None:
            F["head_pfn"] = head_pfn[pos].tolist()
    owner = _page_owner(kernel)
    out: List[PageInfo] = []
    for i, p in enumerate(pf.tolist()):
        info = PageInfo(pfn=p, phys=p << shift, ram=False, page_owner=owner)
        si = int(sec_i[i])
        if si >= 0:
            sec = sections[si]
            info.ram, info.section, info.memory = True, sec.nr, "boot" if sec.early else "hot-added"
        bi = int(blk_i[i])
        if bi >= 0:
            blk = blocks[bi]
            info.block, info.block_state, info.zone, info.nid = blk.id, blk.state, blk.zone, blk.nid
        if info.zone is None and zone_text[i] is not None:
            info.zone, info.nid = zone_text[i], zone_nid[i]
        if facts is not None:
            info.readable = F["ok"][i]
            info.page = F["va"][i]
            if not info.readable:
                info.notes.append("struct page not in the dump")
                out.append(info)
                continue
            flags = F["h_flags"][i]
            info.flags = flags  # the head's: flags and type live on the head page
            fn = flag_cache.get(flags)
            if fn is None:
                fn = flag_cache[flags] = tuple(names[b] for b in sorted(names) if flags >> b & 1)
            info.flag_names = fn
            pt = F["h_page_type"][i]
            tn = type_cache.get(pt)
            if tn is None:
                tn = type_cache[pt] = L.scheme.describe(pt)
            if tn.startswith("mapcount"):
                info.mapcount = int(np.int32(np.uint32(F["raw_page_type"][i]))) + 1
                tn = "none"
            info.page_type = tn
            info.refcount = F["h_refcount"][i]
            info.mapping = m = F["h_mapping"][i]
            info.index = F["h_index"][i]
            info.memcg = F["h_memcg"][i] & ~7
            info.table, info.reserved, info.buddy = F["h_table"][i], F["h_reserved"][i], F["h_buddy"][i]
            if F["tail"][i] and head_pfn is not None:
                info.compound_head = F["head_pfn"][i]
            if F["h_slab"][i]:
                info.mapping_kind = "slab"
                words = {8: "h_w1", 16: "h_w2", 24: "h_mapping", 32: "h_index", 40: "h_ptl"}
                if off_slab_cache in words:
                    ptr = F[words[off_slab_cache]][i]
                    if ptr not in slab_cache:
                        slab_cache[ptr] = _slab_cache_name(kernel, ptr)
                    info.slab_cache = slab_cache[ptr]
            elif m:
                info.mapping_kind = "ksm" if m & 3 == 3 else "anon" if m & 1 else "movable" if m & 2 else "file"
        out.append(info)
    return out
