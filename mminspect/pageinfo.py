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

from mminspect.errors import MMInspectError
from mminspect.target.base import TargetFault

__all__ = ("PageInfo", "max_pfn", "page_flag_names", "page_info")

_U64 = (1 << 64) - 1


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
    prog = getattr(kernel.target, "prog", None)
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
            from mminspect.classify import classifier_for

            mem = classifier_for(kernel).memory
            if mem is not None and mem.sections:
                s = mem.sections[-1]
                value = (s.start + s.size) >> kernel.regime.page_shift
        cache["max_pfn"] = value
    return cache["max_pfn"]


def _zones(kernel) -> List[Tuple[int, int, str, int]]:
    """(start pfn, end pfn, zone name, nid) of every populated zone (drgn)."""
    cache = _cache(kernel)
    if "zones" in cache:
        return cache["zones"]
    out: List[Tuple[int, int, str, int]] = []
    prog = getattr(kernel.target, "prog", None)
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


def page_info(kernel, pfns: Sequence[int]) -> List[PageInfo]:
    """
    What each physical page of ``pfns`` is, in the order given.

    >>> page_info(k, [0x40246])[0].flag_names
    ('referenced', 'uptodate', 'lru', ...)
    """
    from mminspect.classify import classifier_for

    c = classifier_for(kernel)
    shift = kernel.regime.page_shift
    pf = np.asarray([int(p) for p in pfns], dtype=np.uint64)
    out: List[PageInfo] = []
    mem = c.memory
    sec_by_start = {s.start: s for s in mem.sections} if mem is not None else {}
    ssize = mem.section_size if mem is not None else 0
    names = page_flag_names(kernel)
    nflags = (max(names) + 1) if names else 0
    facts = c.pages.facts(pf) if len(pf) else None
    heads = c.pages.heads(facts) if facts is not None and len(facts) else facts
    zones = _zones(kernel)
    L = c.layout
    off_slab_cache = kernel.target.offsetof("struct slab", "slab_cache")
    for p in pf.tolist():
        pa = p << shift
        info = PageInfo(pfn=p, phys=pa, ram=False)
        if mem is not None and ssize:
            sec = sec_by_start.get(pa - pa % ssize)
            if sec is not None:
                info.ram = True
                info.section = sec.nr
                info.memory = "boot" if sec.early else "hot-added"
            b = int(mem.block_of(np.array([pa], dtype=np.uint64))[0])
            if b >= 0:
                blk = mem.blocks[b]
                info.block, info.block_state, info.zone, info.nid = blk.id, blk.state, blk.zone, blk.nid
        span = [z for z in zones if z[0] <= p < z[1]]
        if span and info.zone is None:
            # Zone spans may overlap (ZONE_MOVABLE inside a node's range): name each.
            info.zone = "/".join(z[2] for z in span)
            info.nid = span[0][3]
        if facts is not None:
            k = int(np.searchsorted(facts["pfn"], np.uint64(p)))
            f, h = facts[k], heads[k]
            info.readable = bool(f["ok"])
            info.page = int(f["va"])
            if info.readable:
                flags = int(h["flags"])
                info.flags = int(f["flags"])
                info.flag_names = tuple(names[b] for b in sorted(names) if b < nflags and flags >> b & 1)
                info.page_type = L.scheme.describe(int(h["page_type"]))
                if info.page_type.startswith("mapcount"):
                    info.mapcount = int(np.int32(np.uint32(int(f["page_type"])))) + 1
                    info.page_type = "none"
                info.refcount = int(h["refcount"])
                info.mapping = int(h["mapping"])
                info.index = int(h["index"])
                info.memcg = int(h["memcg"]) & ~7
                info.table = bool(h["table"])
                info.reserved = bool(h["reserved"])
                info.buddy = bool(h["buddy"])
                if f["tail"]:
                    info.compound_head = int(c.pages.pfn_of_page_va(np.array([int(f["w1"]) - 1], np.uint64))[0])
                m = info.mapping
                if h["slab"]:
                    info.mapping_kind = "slab"
                    words = {8: h["w1"], 16: h["w2"], 24: h["mapping"], 32: h["index"], 40: h["ptl"]}
                    if off_slab_cache in words:
                        info.slab_cache = _slab_cache_name(kernel, int(words[off_slab_cache]))
                elif not m:
                    info.mapping_kind = ""
                elif m & 3 == 3:
                    info.mapping_kind = "ksm"
                elif m & 1:
                    info.mapping_kind = "anon"
                elif m & 2:
                    info.mapping_kind = "movable"
                else:
                    info.mapping_kind = "file"
            else:
                info.notes.append("struct page not in the dump")
        out.append(info)
    return out


def check_pfn(kernel, pfn: int) -> None:
    """Refuse a PFN past ``max_pfn`` in one line."""
    mp = max_pfn(kernel)
    if mp is not None and pfn >= mp:
        raise MMInspectError(f"pfn {pfn:#x} is past max_pfn {mp:#x} (physical {pfn << kernel.regime.page_shift:#x})")
