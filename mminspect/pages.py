"""
struct page / struct ptdesc facts, read in batches
--------------------------------------------------

A page-table page's ``struct page`` (``struct ptdesc`` since v6.6, same
offsets: 6.12 ``TABLE_MATCH`` asserts pin them) says who allocated it and
what its constructor left: page flags (``PG_reserved`` for memblock and
kernel-image pages, ``PG_slab`` before v6.10), the page type (the Table type
is set by the pgtable ctor and cleared by the dtor), the refcount, the
``ptl`` word (an inline spinlock, or a pointer to one when
``ALLOC_SPLIT_PTLOCKS``), ``pmd_huge_pte``, ``memcg_data`` and the ``lru``
words (self-linked on pages that never saw the buddy lists, ``LIST_POISON``
on pages that left them).

Everything is decided by feature, never by version number:

- offsets from DWARF (``struct ptdesc`` or ``struct page``), then VMCOREINFO
  (``OFFSET(page.*)``), then the fixed arm64 layout;
- flag bits from ``enum pageflags`` (DWARF), then VMCOREINFO ``NUMBER(PG_*)``;
- the page-type encoding from ``enum pagetype`` (``PGTY_table``; or
  ``PG_table``/``PAGE_TYPE_BASE`` while it was an enum of bits), then from
  VMCOREINFO ``PAGE_BUDDY_MAPCOUNT_VALUE``, whose value differs in each
  scheme; only where a scheme used ``#define``\\s are values hard-coded,
  each with the kernel change that defines it;
- the ptl: inline when ``sizeof(spinlock_t) <= sizeof(long)``, and the
  ``DEBUG_SPINLOCK`` fields (``magic``, ``owner_cpu``, ``owner``) when
  ``struct raw_spinlock`` has them.

:class:`StructPages` reads the ``struct page``\\s of many PFNs in a few large
reads of the vmemmap (sorted PFNs, contiguous runs read whole, gaps of up to
``GAP_BYTES`` read through) and decodes them with numpy into
:data:`FACTS_DTYPE` rows; :meth:`StructPages.scan` walks a whole memmap the
same way. :class:`PtlObjects` reads the lock objects an allocated ptl points
to. Nothing here touches a drgn Object per page.
"""

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.sortedarrays import unique
from mminspect.target.base import Target, TargetFault

__all__ = (
    "FACTS_DTYPE",
    "LIST_POISON1",
    "LIST_POISON2",
    "LOCK_DTYPE",
    "PageLayout",
    "PtlObjects",
    "SPINLOCK_MAGIC",
    "SPINLOCK_OWNER_INIT",
    "StructPages",
    "TypeScheme",
)

_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1

#: include/linux/poison.h: ``LIST_POISON1``/``2`` are ``0x100``/``0x122`` plus
#: ``POISON_POINTER_DELTA``, which is ``CONFIG_ILLEGAL_POINTER_VALUE``:
#: 0xdead000000000000 on arm64 (arch/arm64/Kconfig). ``list_del()`` leaves
#: them in ``lru`` when a page leaves the pcp or buddy lists; then
#: prep_new_page() -> clear_page_pfmemalloc() sets ``lru.next = NULL``
#: (include/linux/mm.h, 6.1 and 6.12), so an allocated page keeps only
#: LIST_POISON2 at offset 16 (kernel-model.md 3.5 expects POISON1 at 8 too:
#: the kernel says otherwise, and so do the dumps).
LIST_POISON1 = 0xDEAD000000000100
LIST_POISON2 = 0xDEAD000000000122
#: include/linux/spinlock_types_raw.h ``#define SPINLOCK_MAGIC 0xdead4ead``
#: (a macro: not in DWARF) and ``SPINLOCK_OWNER_INIT ((void *)-1L)``.
SPINLOCK_MAGIC = 0xDEAD4EAD
SPINLOCK_OWNER_INIT = _U64

#: Largest single read of the memmap (1 MiB reads run at memory speed in drgn).
MAX_READ = 1 << 20
#: Neighbouring runs of wanted struct pages closer than this are read as one.
GAP_BYTES = 16 << 10
#: Threads of a memmap scan that reads the dump file itself (two to four).
SCAN_THREADS = max(2, min(4, os.cpu_count() or 2))
#: Memmap per chunk of such a scan. It maps the file rather than copying it
#: out; at 1 TiB, 16 MiB maps scan in 1.3 s where 4 MiB ones take 1.85 s.
CORE_SCAN_BYTES = 16 << 20

#: One decoded struct page. ``ok`` is False when the struct page could not be
#: read (then every other field is 0). ``w1``/``w2`` are the words at offsets
#: 8 and 16 (``lru.next``/``lru.prev``, ``compound_head``, ``pmd_huge_pte``).
FACTS_DTYPE = np.dtype(
    [
        ("pfn", np.uint64),
        ("va", np.uint64),  # VA of the struct page
        ("ok", np.bool_),
        ("flags", np.uint64),
        ("w1", np.uint64),
        ("w2", np.uint64),
        ("mapping", np.uint64),
        ("index", np.uint64),
        ("ptl", np.uint64),  # the word at page->ptl (inline lock value or pointer)
        ("page_type", np.uint32),
        ("refcount", np.int32),
        ("memcg", np.uint64),
        ("reserved", np.bool_),
        ("slab", np.bool_),
        ("table", np.bool_),  # carries the page-table type: a pgtable ctor ran
        ("buddy", np.bool_),  # free page in the buddy allocator
        ("has_type", np.bool_),  # any page type at all
        ("tail", np.bool_),  # compound tail page (compound_head bit 0)
        ("self_linked", np.bool_),  # lru.next == lru.prev == &page->lru
        ("poisoned", np.bool_),  # lru holds LIST_POISON1/2
    ]
)


@dataclass(frozen=True)
class TypeScheme:
    """How ``page_type`` encodes a type: ``name`` is ``pgty`` (v6.12+: the
    type in the top byte, ``UINT_MAX`` for none) or ``inverted`` (v4.18 ..
    v6.11: a type is a *cleared* bit under ``base``). ``table``, ``slab``,
    ``buddy``: the enumerator (pgty) or the bit (inverted); None when the
    kernel has no such type."""

    name: str
    base: int
    table: Optional[int]
    slab: Optional[int]
    buddy: Optional[int]
    evidence: str

    def test(self, value: Optional[int]) -> Optional[Tuple[int, int]]:
        """``(mask, match)``: a ``page_type`` has the type ``value`` (an
        enumerator or bit of this scheme) when ``page_type & mask == match``;
        None when the kernel has no such type."""
        if value is None:
            return None
        if self.name == "pgty":
            return 0xFF000000, value << 24
        return self.base | value, self.base

    def _is(self, page_type: np.ndarray, value: Optional[int]) -> np.ndarray:
        pt = page_type.astype(np.uint32)
        test = self.test(value)
        if test is None:
            return np.zeros(pt.shape, dtype=bool)
        return (pt & np.uint32(test[0])) == np.uint32(test[1])

    def is_table(self, page_type: np.ndarray) -> np.ndarray:
        return self._is(page_type, self.table)

    def is_slab(self, page_type: np.ndarray) -> np.ndarray:
        return self._is(page_type, self.slab)

    def is_buddy(self, page_type: np.ndarray) -> np.ndarray:
        return self._is(page_type, self.buddy)

    def has_type(self, page_type: np.ndarray) -> np.ndarray:
        pt = page_type.astype(np.uint32)
        if self.name == "pgty":
            # page_type_has_type(): (int)t < (PGTY_mapcount_underflow << 24)
            return pt < np.uint32(0xFF000000)
        # page_has_type(): (int)page_type < PAGE_MAPCOUNT_RESERVE. The reserve is
        # -128 under the 0xf0000000 base, and ~0x0000ffff under 0x80000000.
        reserve = -128 if self.base == 0xF0000000 else -0x10000
        return pt.view(np.int32) < reserve

    def table_value(self) -> Optional[int]:
        """The ``page_type`` of a page that has only the Table type."""
        if self.table is None:
            return None
        if self.name == "pgty":
            return self.table << 24
        return _U32 & ~self.table

    def describe(self, page_type: int) -> str:
        """A short name for one page_type value ('table', 'none', 'slab' ...)."""
        pt = np.array([page_type], dtype=np.uint32)
        if page_type == _U32:
            return "none"
        for name, value in (("table", self.table), ("slab", self.slab), ("buddy", self.buddy)):
            if value is not None and bool(self._is(pt, value)[0]):
                return name
        if not bool(self.has_type(pt)[0]):
            return f"mapcount {np.int32(np.uint32(page_type))}"
        return f"other type {page_type:#010x}"


def _detect_scheme(target: Target, info: Dict[str, str]) -> TypeScheme:
    buddy_value = info.get("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)")
    buddy_u32 = (int(buddy_value, 0) & _U32) if buddy_value is not None else None
    slab_value = info.get("NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)")
    slab_u32 = (int(slab_value, 0) & _U32) if slab_value is not None else None

    pgty_table = target.constant("PGTY_table")
    if pgty_table is not None:
        return TypeScheme(
            "pgty", 0, pgty_table, target.constant("PGTY_slab"), target.constant("PGTY_buddy"),
            f"DWARF: enum pagetype PGTY_table = {pgty_table:#x} (top byte of page_type)",
        )
    if buddy_u32 is not None and buddy_u32 >> 24 >= 0xF0 and buddy_u32 & 0xFFFFFF == 0:
        # v6.12 4ffca5a96678 "mm: support only one page_type per page": the type
        # is an enum value in the top byte, PAGE_BUDDY_MAPCOUNT_VALUE is
        # PGTY_buddy << 24. Without DWARF the enum's values are taken from
        # include/linux/page-flags.h of that change (PGTY_table = 0xf2,
        # PGTY_slab = 0xf5).
        return TypeScheme(
            "pgty", 0, 0xF2, (slab_u32 >> 24) if slab_u32 is not None else 0xF5, buddy_u32 >> 24,
            "VMCOREINFO: PAGE_BUDDY_MAPCOUNT_VALUE is PGTY_buddy << 24; PGTY_table = 0xf2 "
            "as defined by 4ffca5a96678 (no DWARF)",
        )
    pg_table = target.constant("PG_table")
    base = target.constant("PAGE_TYPE_BASE")
    if pg_table is not None and base is not None:
        # enum pagetype of bits ("mm: convert page type macros to enum", v6.10).
        pg_slab = target.constant("PG_slab") if slab_u32 is not None else None
        return TypeScheme(
            "inverted", base & _U32, pg_table, pg_slab, target.constant("PG_buddy"),
            f"DWARF: enum pagetype PG_table = {pg_table:#x} under PAGE_TYPE_BASE {base & _U32:#x} (inverted)",
        )
    if buddy_u32 == _U32 & ~0x80:
        # v4.18 .. v6.9: #defines in include/linux/page-flags.h, not in DWARF:
        # PAGE_TYPE_BASE 0xf0000000 from "mm: Split page_type out from _mapcount"
        # and PG_table 0x200 from "mm: Mark pages in use for page tables" (Matthew
        # Wilcox, 2018, <20180430202247.25220-4-willy@infradead.org>); 6.1 has
        # them at page-flags.h:943-948. PG_slab became a page type (0x1000) only
        # in v6.10, where PAGE_SLAB_MAPCOUNT_VALUE joined VMCOREINFO.
        slab = (~slab_u32 & _U32) if slab_u32 is not None else None
        return TypeScheme(
            "inverted", 0xF0000000, 0x200, slab, 0x80,
            "VMCOREINFO: PAGE_BUDDY_MAPCOUNT_VALUE == ~0x80: #define PAGE_TYPE_BASE 0xf0000000, "
            "PG_table 0x200 (include/linux/page-flags.h, v4.18 'mm: Mark pages in use for page tables')",
        )
    if buddy_u32 == _U32 & ~0x40000000:
        # v6.10/6.11 "mm: allow reuse of the lower 16 bit of the page type with an
        # actual type" (David Hildenbrand, <20240527141454.113132-3-david@redhat.com>):
        # base 0x80000000, PG_buddy 0x40000000, PG_table 0x10000000, PG_slab 0x02000000.
        slab = (~slab_u32 & _U32 & ~0x80000000) if slab_u32 is not None else None
        return TypeScheme(
            "inverted", 0x80000000, 0x10000000, slab, 0x40000000,
            "VMCOREINFO: PAGE_BUDDY_MAPCOUNT_VALUE == ~0x40000000: PAGE_TYPE_BASE 0x80000000, "
            "PG_table 0x10000000 (<20240527141454.113132-3-david@redhat.com>, no DWARF)",
        )
    return TypeScheme("unknown", 0, None, None, None,
                      "no PGTY_table/PG_table in DWARF and no known PAGE_BUDDY_MAPCOUNT_VALUE: "
                      "cannot tell typed pages")


@dataclass
class PageLayout:
    """Where each fact lives in a ``struct page``/``ptdesc`` of this kernel,
    with the evidence for every choice (:attr:`evidence`)."""

    size: int
    off_flags: int = 0
    off_lru: int = 8
    off_pmd_huge_pte: int = 16
    off_mapping: int = 24
    off_index: int = 32
    off_ptl: int = 40
    off_page_type: int = 48
    off_refcount: int = 52
    off_memcg: Optional[int] = 56
    #: ``enum pageflags`` bits (None when unknown).
    pg_reserved: Optional[int] = None
    pg_slab: Optional[int] = None  #: only while PG_slab was a page flag (< v6.10)
    scheme: TypeScheme = field(default_factory=lambda: TypeScheme("unknown", 0, None, None, None, ""))
    #: ALLOC_SPLIT_PTLOCKS: page->ptl is a pointer to a spinlock_t in page_ptl_cachep.
    ptl_alloc: bool = False
    spinlock_size: Optional[int] = None
    #: DEBUG_SPINLOCK fields in spinlock_t (None without DEBUG_SPINLOCK).
    off_magic: Optional[int] = None
    off_owner_cpu: Optional[int] = None
    off_owner: Optional[int] = None
    #: PREEMPT_RT: spinlock_t is an rt_mutex_base, held when ``lock.owner`` is set.
    off_rt_owner: Optional[int] = None
    evidence: Dict[str, str] = field(default_factory=dict)

    @property
    def words(self) -> int:
        return self.size // 8

    @property
    def debug_spinlock(self) -> bool:
        return self.off_magic is not None

    @property
    def rt_spinlock(self) -> bool:
        return self.off_rt_owner is not None

    @classmethod
    def detect(cls, target: Target, info: Optional[Dict[str, str]] = None) -> "PageLayout":
        info = info if info is not None else target.vmcoreinfo()
        ev: Dict[str, str] = {}
        size = int(info.get("SIZE(page)", 0) or 0)
        if size:
            ev["size"] = f"VMCOREINFO SIZE(page) = {size}"
        else:
            size = target.sizeof("struct page") or 64
            ev["size"] = f"sizeof(struct page) = {size}" + ("" if target.sizeof("struct page") else " (assumed)")
        lay = cls(size=size, evidence=ev)

        ptdesc = target.sizeof("struct ptdesc") is not None
        src = "struct ptdesc" if ptdesc else "struct page"

        def off(attr: str, members: Sequence[Tuple[str, str]], vmci: Optional[str]) -> None:
            for typ, member in members:
                o = target.offsetof(typ, member)
                if o is not None:
                    setattr(lay, attr, o)
                    ev[attr] = f"DWARF offsetof({typ}, {member}) = {o}"
                    return
            if vmci and vmci in info:
                setattr(lay, attr, int(info[vmci]))
                ev[attr] = f"VMCOREINFO {vmci} = {info[vmci]}"
                return
            if attr == "off_memcg" and target.has_debug_info:
                setattr(lay, attr, None)
                ev[attr] = "no memcg_data in DWARF: CONFIG_MEMCG off"
                return
            ev[attr] = f"arm64 layout: {getattr(lay, attr)} (not in DWARF or VMCOREINFO)"

        off("off_flags", [("struct ptdesc", "__page_flags"), ("struct page", "flags")], "OFFSET(page.flags)")
        off("off_lru", [("struct page", "lru")], "OFFSET(page.lru)")
        off("off_pmd_huge_pte", [("struct ptdesc", "pmd_huge_pte"), ("struct page", "pmd_huge_pte")], None)
        off("off_mapping", [("struct page", "mapping")], "OFFSET(page.mapping)")
        off("off_index", [("struct page", "index")], None)
        off("off_ptl", [("struct ptdesc", "ptl"), ("struct page", "ptl")], "OFFSET(page.private)")
        off("off_page_type", [("struct ptdesc", "__page_type"), ("struct page", "page_type")],
            "OFFSET(page._mapcount)")
        off("off_refcount", [("struct ptdesc", "__page_refcount"), ("struct page", "_refcount")],
            "OFFSET(page._refcount)")
        off("off_memcg", [("struct ptdesc", "pt_memcg_data"), ("struct page", "memcg_data")], None)
        ev["struct"] = f"{src} ({'v6.6+ ptdesc' if ptdesc else 'page-table union of struct page'})"

        # Page flags by name: enum pageflags (DWARF), else VMCOREINFO.
        for attr, name in (("pg_reserved", "PG_reserved"), ("pg_slab", "PG_slab")):
            v = target.constant(name)
            if v is not None and not (name == "PG_slab" and "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)" in info):
                setattr(lay, attr, v)
                ev[attr] = f"DWARF enum pageflags {name} = {v}"
            elif f"NUMBER({name})" in info:
                setattr(lay, attr, int(info[f"NUMBER({name})"]))
                ev[attr] = f"VMCOREINFO NUMBER({name}) = {info[f'NUMBER({name})']}"
        if lay.pg_reserved is None and "NUMBER(PG_private)" in info:
            # Without DWARF: PG_reserved sits right before PG_private in enum
            # pageflags in every kernel since v2.6.x (6.1: 12/13, 6.12 and 7.2: 13/14).
            lay.pg_reserved = int(info["NUMBER(PG_private)"]) - 1
            ev["pg_reserved"] = (f"no DWARF: PG_private - 1 = {lay.pg_reserved} (PG_reserved precedes "
                                 "PG_private in enum pageflags)")
        if lay.pg_slab is None:
            ev["pg_slab"] = "not a page flag here: slab is a page type"

        lay.scheme = _detect_scheme(target, info)
        ev["page_type"] = lay.scheme.evidence

        # The ptl: inline, or a pointer when sizeof(spinlock_t) > sizeof(long).
        sl = target.sizeof("spinlock_t")
        lay.spinlock_size = sl
        if sl is not None:
            lay.ptl_alloc = sl > 8
            ev["ptl"] = (f"sizeof(spinlock_t) = {sl} > sizeof(long): ALLOC_SPLIT_PTLOCKS, page->ptl is a pointer"
                         if lay.ptl_alloc else f"sizeof(spinlock_t) = {sl}: the ptl is inline in the page")
        elif target.symbol("page_ptl_cachep") is not None:
            lay.ptl_alloc = True
            ev["ptl"] = "symbol page_ptl_cachep (exists only with ALLOC_SPLIT_PTLOCKS): pointer"
        else:
            ev["ptl"] = "no DWARF for spinlock_t: assumed inline (qspinlock, no lock debugging)"
        for attr, member in (("off_magic", "magic"), ("off_owner_cpu", "owner_cpu"), ("off_owner", "owner")):
            o = target.offsetof("spinlock_t", f"rlock.{member}")
            if o is None:
                o = target.offsetof("struct raw_spinlock", member)
            setattr(lay, attr, o)
        ev["debug_spinlock"] = (
            f"DWARF: raw_spinlock has magic at +{lay.off_magic}, owner_cpu at +{lay.off_owner_cpu}, "
            f"owner at +{lay.off_owner} (DEBUG_SPINLOCK)" if lay.off_magic is not None
            else "raw_spinlock has no magic: no DEBUG_SPINLOCK")
        # PREEMPT_RT (include/linux/spinlock_types.h): spinlock_t wraps a
        # sleeping rt_mutex_base; its first word is the rt_mutex's wait_lock,
        # and the lock is held when rt_mutex_base.owner is set.
        lay.off_rt_owner = target.offsetof("spinlock_t", "lock.owner")
        if lay.off_rt_owner is not None:
            ev["rt_spinlock"] = (f"DWARF: spinlock_t is an rt_mutex_base (PREEMPT_RT): held when the owner "
                                 f"at +{lay.off_rt_owner} is set")
        return lay

    # -- decoding -------------------------------------------------------------
    def decode(self, raw: np.ndarray, pfns: np.ndarray, vas: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Decode ``raw`` (``n x words`` uint64, one struct page per row) into
        :data:`FACTS_DTYPE` rows."""
        n = len(pfns)
        out = np.zeros(n, dtype=FACTS_DTYPE)
        out["pfn"] = pfns
        out["va"] = vas
        out["ok"] = ok
        if not n:
            return out
        w = lambda off: raw[:, off // 8]  # noqa: E731
        flags = w(self.off_flags)
        out["flags"] = flags
        out["w1"] = w(self.off_lru)
        out["w2"] = w(self.off_lru + 8)
        out["mapping"] = w(self.off_mapping)
        out["index"] = w(self.off_index)
        out["ptl"] = w(self.off_ptl)
        pt_word = w(self.off_page_type & ~7)
        shift = np.uint64((self.off_page_type & 7) * 8)
        out["page_type"] = ((pt_word >> shift) & np.uint64(_U32)).astype(np.uint32)
        rc_word = w(self.off_refcount & ~7)
        rshift = np.uint64((self.off_refcount & 7) * 8)
        out["refcount"] = ((rc_word >> rshift) & np.uint64(_U32)).astype(np.uint32).view(np.int32)
        if self.off_memcg is not None:
            out["memcg"] = w(self.off_memcg)
        if self.pg_reserved is not None:
            out["reserved"] = (flags >> np.uint64(self.pg_reserved)) & np.uint64(1) == np.uint64(1)
        pt = out["page_type"]
        if self.pg_slab is not None:
            out["slab"] = (flags >> np.uint64(self.pg_slab)) & np.uint64(1) == np.uint64(1)
        else:
            out["slab"] = self.scheme.is_slab(pt)
        out["table"] = self.scheme.is_table(pt)
        out["buddy"] = self.scheme.is_buddy(pt)
        out["has_type"] = self.scheme.has_type(pt)
        out["tail"] = (out["w1"] & np.uint64(1)) == np.uint64(1)
        lru = vas + np.uint64(self.off_lru)
        out["self_linked"] = (out["w1"] == lru) & (out["w2"] == lru)
        out["poisoned"] = (out["w1"] == np.uint64(LIST_POISON1)) | (out["w2"] == np.uint64(LIST_POISON2))
        # Unreadable rows carry no facts.
        for name in ("reserved", "slab", "table", "buddy", "has_type", "tail", "self_linked", "poisoned"):
            out[name] &= ok
        return out

    def as_dict(self) -> Dict[str, object]:
        return {
            "size": self.size,
            "offsets": {k[4:]: v for k, v in self.__dict__.items() if k.startswith("off_")},
            "pg_reserved": self.pg_reserved,
            "pg_slab": self.pg_slab,
            "page_type_scheme": self.scheme.name,
            "table_value": self.scheme.table_value(),
            "ptl": "pointer (ALLOC_SPLIT_PTLOCKS)" if self.ptl_alloc else "inline",
            "debug_spinlock": self.debug_spinlock,
            "rt_spinlock": self.rt_spinlock,
            "evidence": dict(self.evidence),
        }


class StructPages:
    """
    Read and decode the ``struct page`` of many PFNs at once.

    >>> sp = StructPages(kernel)
    >>> facts = sp.facts(np.array([0x40246, 0x40247], dtype=np.uint64))
    >>> facts["table"], facts["reserved"]
    """

    def __init__(self, kernel, layout: Optional[PageLayout] = None) -> None:
        self.kernel = kernel
        self.target = kernel.target
        self.layout = layout or PageLayout.detect(kernel.target, kernel.vmcoreinfo)
        size = self.layout.size
        shift = kernel.regime.page_shift
        base_pfn = kernel.phys_offset >> shift  # memstart_addr is an s64
        #: vmemmap: struct page of pfn p is at ``vmemmap + p * size``
        self.vmemmap = (kernel.layout.vmemmap_start - base_pfn * size) & _U64
        self.bytes_read = 0
        self.reads = 0

    # -- addresses --------------------------------------------------------------
    def page_va(self, pfns: np.ndarray) -> np.ndarray:
        """VA of the struct pages of ``pfns`` (uint64, wrapping as the kernel's)."""
        return np.uint64(self.vmemmap) + pfns.astype(np.uint64) * np.uint64(self.layout.size)

    def pfn_of_page_va(self, vas: np.ndarray) -> np.ndarray:
        return (vas.astype(np.uint64) - np.uint64(self.vmemmap)) // np.uint64(self.layout.size)

    # -- reading ----------------------------------------------------------------
    def _vmemmap_runs(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The vmemmap's leaf mappings (start VA, end VA, PA), from one walk
        of the region: memmap reads then go to physical memory directly,
        about twice as fast as translating every page on each read."""
        runs = getattr(self, "_vruns", None)
        if runs is None:
            from mminspect.walk import walk

            try:
                w = walk(self.kernel, self.kernel.root("vmemmap"))
                leaf = w.runs[w.runs["cls"] == 1]
                runs = (leaf["va"].copy(), leaf["va"] + leaf["size"], leaf["pa"].copy())
            except Exception:  # no usable swapper: fall back to virtual reads
                runs = (np.empty(0, np.uint64),) * 3
            self._vruns = runs
        return runs

    def _pieces(self, va: int, size: int) -> Iterator[Tuple[int, int, Optional[int]]]:
        """The ``size`` bytes of memmap at ``va`` as ``(offset, length, PA)``
        pieces, one per vmemmap mapping; PA is None for a piece no mapping
        seen covers (then only the target can translate it, or fault)."""
        starts, ends, pas = self._vmemmap_runs()
        pos, left = va, size
        while left:
            k = int(np.searchsorted(starts, np.uint64(pos), side="right")) - 1
            if k >= 0 and pos < int(ends[k]):
                n = min(left, int(ends[k]) - pos)
                yield pos - va, n, int(pas[k]) + pos - int(starts[k])
            else:
                n = left
                yield pos - va, n, None
            pos += n
            left -= n

    def _read(self, va: int, size: int) -> bytes:
        self.reads += 1
        parts = [self.target.read_virt(va + off, n) if pa is None else self.target.read_phys(pa, n)
                 for off, n, pa in self._pieces(va, size)]
        self.bytes_read += size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_span(self, va: int, nbytes: int) -> Tuple[np.ndarray, np.ndarray]:
        """Read ``nbytes`` of memmap at ``va`` as uint64 words; unreadable
        pages of the memmap come back as zeros with their bytes marked bad."""
        buf = np.zeros(nbytes // 8, dtype=np.uint64)
        good = np.ones(nbytes // 8, dtype=bool)
        for off in range(0, nbytes, MAX_READ):
            n = min(MAX_READ, nbytes - off)
            try:
                buf[off // 8 : (off + n) // 8] = np.frombuffer(self._read(va + off, n), dtype="<u8")
                continue
            except TargetFault:
                pass
            # Find the readable pages of the memmap one by one.
            ps = self.kernel.regime.page_size
            pos = off
            while pos < off + n:
                step = min(ps - ((va + pos) % ps), off + n - pos)
                try:
                    buf[pos // 8 : (pos + step) // 8] = np.frombuffer(self._read(va + pos, step), dtype="<u8")
                except TargetFault:
                    good[pos // 8 : (pos + step) // 8] = False
                pos += step
        return buf, good

    def read_raw(self, pfns: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The raw struct pages of ``pfns`` (any order, duplicates allowed):
        ``(unique_pfns, vas, raw[n, words], ok[n])`` in PFN order."""
        pfns = unique(np.asarray(pfns, dtype=np.uint64))
        W = self.layout.words
        size = self.layout.size
        n = len(pfns)
        raw = np.zeros((n, W), dtype=np.uint64)
        ok = np.zeros(n, dtype=bool)
        vas = self.page_va(pfns)
        if not n:
            return pfns, vas, raw, ok
        # Runs: split where the next wanted struct page is more than GAP_BYTES on.
        gap = np.diff(vas.astype(np.int64)) if n > 1 else np.empty(0, np.int64)
        brk = np.nonzero((gap > GAP_BYTES) | (gap < 0))[0] + 1
        starts = np.concatenate(([0], brk))
        ends = np.concatenate((brk, [n]))
        # Keep single reads bounded: split long runs at MAX_READ.
        for s, e in zip(starts.tolist(), ends.tolist()):
            while s < e:
                lo = int(vas[s])
                limit = lo + MAX_READ
                e2 = s + int(np.searchsorted(vas[s:e], np.uint64(limit - size), side="right"))
                e2 = max(e2, s + 1)
                hi = int(vas[e2 - 1]) + size
                words, good = self._read_span(lo, hi - lo)
                idx = ((vas[s:e2] - np.uint64(lo)) // np.uint64(8)).astype(np.int64)
                rows = idx[:, None] + np.arange(W)[None, :]
                raw[s:e2] = words[rows]
                ok[s:e2] = good[rows].all(axis=1)
                s = e2
        return pfns, vas, raw, ok

    def facts(self, pfns: np.ndarray) -> np.ndarray:
        """Decoded struct pages of ``pfns`` (unique, sorted by PFN)."""
        upfns, vas, raw, ok = self.read_raw(pfns)
        return self.layout.decode(raw, upfns, vas, ok)

    def scan(self, pfn_ranges: Sequence[Tuple[int, int]], chunk_pages: Optional[int] = None,
             want: str = "all") -> Iterator[Tuple[np.ndarray, int, int]]:
        """Walk every struct page of ``[start, end)`` PFN ranges in chunks of
        ``chunk_pages`` (default: one MAX_READ of memmap, or CORE_SCAN_BYTES
        when mapped from the dump file). Yields ``(facts,
        pages, unreadable)`` per chunk, in PFN order, where ``facts`` holds
        every page (``want="all"``) or only those typed as page tables
        (``"table"``: only their rows are decoded, so a scan costs little
        more than the reads).

        When the target has its dump file at hand (``core_file``: an
        uncompressed ELF vmcore), chunks of physically mapped memmap are read
        from it by :data:`SCAN_THREADS` threads at once, outside the GIL; a
        chunk the file cannot give goes through the target."""
        core = getattr(self.target, "core_file", None)
        per = chunk_pages or max(1, (MAX_READ if core is None else CORE_SCAN_BYTES) // self.layout.size)
        chunks = [(s, min(hi, s + per)) for lo, hi in pfn_ranges for s in range(lo, hi, per)]
        if core is None:
            picked = (self._scan_target(s, e, want) for s, e in chunks)
        else:
            picked = self._scan_core(core, chunks, per, want)
        for s, e, rows, raw, ok, bad in picked:
            pfns = np.uint64(s) + rows.astype(np.uint64)
            yield self.layout.decode(raw, pfns, self.page_va(pfns), ok), e - s, bad

    def _table_rows(self, raw: np.ndarray, scratch: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
        """Rows of ``raw`` (one struct page per row) typed as page tables,
        tested on their ``page_type`` words as a strided uint32 view in one
        pass. ``scratch`` (a uint32 and a bool array at least as long as
        ``raw``) saves a scan that calls this per chunk two allocations: at
        4 MiB chunks they cost more than the test."""
        test = self.layout.scheme.test(self.layout.scheme.table)
        if test is None:
            return np.empty(0, dtype=np.intp)
        n = len(raw)
        word, hit = scratch or (np.empty(n, dtype=np.uint32), np.empty(n, dtype=bool))
        page_type = raw.view("<u4")[:, self.layout.off_page_type // 4]
        np.bitwise_and(page_type, np.uint32(test[0]), out=word[:n])
        np.equal(word[:n], np.uint32(test[1]), out=hit[:n])
        return np.flatnonzero(hit[:n])

    def _scan_target(self, s: int, e: int, want: str):
        """One chunk of a scan read through the target: ``(s, e, rows, raw,
        ok, unreadable)`` with the rows kept and their struct pages."""
        size = self.layout.size
        va = (self.vmemmap + s * size) & _U64
        try:
            words, good = np.frombuffer(self._read(va, (e - s) * size), dtype="<u8"), None
        except TargetFault:
            words, good = self._read_span(va, (e - s) * size)
        raw = words.reshape(e - s, self.layout.words)
        ok = np.ones(e - s, dtype=bool) if good is None else good.reshape(raw.shape).all(axis=1)
        bad = int(np.count_nonzero(~ok))
        if want == "all":
            return s, e, np.arange(e - s), raw, ok, bad
        rows = self._table_rows(raw)
        rows = rows[ok[rows]]
        return s, e, rows, raw[rows], ok[rows], bad

    def _scan_core(self, core, chunks: List[Tuple[int, int]], per: int, want: str):
        """The chunks of a scan read from the dump file in threads, each into
        its own buffer; yields what :meth:`_scan_target` yields, in order."""
        size, W = self.layout.size, self.layout.words
        self._vmemmap_runs()  # walked once, before the threads share it
        local = threading.local()

        def pick(s: int, e: int, raw: np.ndarray):
            rows = np.arange(e - s) if want == "all" else self._table_rows(raw, local.scratch)
            return s, e, rows, raw[rows], np.ones(len(rows), dtype=bool), 0

        def read(s: int, e: int):
            pieces = list(self._pieces((self.vmemmap + s * size) & _U64, (e - s) * size))
            if any(pa is None for _, _, pa in pieces):
                return None
            if not hasattr(local, "buf"):
                local.buf = np.empty(per * W, dtype="<u8")
                local.scratch = np.empty(per, dtype=np.uint32), np.empty(per, dtype=bool)
            nbytes = (e - s) * size
            for _, n, pa in pieces:
                core.prefetch(pa, n)  # read ahead in large requests, before the first touch
            try:
                return _read_chunk(s, e, pieces, nbytes)
            finally:
                for _, n, pa in pieces:
                    core.release(pa, n)  # drop behind, on scans larger than the page cache should hold

        def _read_chunk(s: int, e: int, pieces, nbytes: int):
            m = core.mapped(pieces[0][2], nbytes) if len(pieces) == 1 else None
            if m is not None:
                # Mapped: the page cache is read in place, not copied out first.
                raw = np.frombuffer(m, dtype="<u8", count=nbytes // 8, offset=len(m) - nbytes).reshape(e - s, W)
                got = pick(s, e, raw)  # raw[rows] is a copy: the map can go
                del raw
                m.close()
                return got
            raw = local.buf[: (e - s) * W].reshape(e - s, W)
            mem = raw.reshape(-1).view(np.uint8)
            try:
                for off, n, pa in pieces:
                    core.readinto(pa, mem[off : off + n])
            except TargetFault:
                return None
            return pick(s, e, raw)

        def result(s: int, e: int, fut: Future):
            got = fut.result()
            if got is None:
                return self._scan_target(s, e, want)
            self.reads += 1
            self.bytes_read += (e - s) * size
            return got

        core.start_scan(sum(e - s for s, e in chunks) * size)
        # Up to two chunks per thread in flight: the threads never wait for
        # the caller, and the results held stay small.
        with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="memmap-scan") as pool:
            pending: Deque[Tuple[int, int, Future]] = deque()
            try:
                for s, e in chunks:
                    pending.append((s, e, pool.submit(read, s, e)))
                    if len(pending) == 2 * SCAN_THREADS:
                        yield result(*pending.popleft())
                while pending:
                    yield result(*pending.popleft())
            finally:
                for _, _, fut in pending:
                    fut.cancel()

    def heads(self, facts: np.ndarray) -> np.ndarray:
        """For each row, the facts of its compound head (itself when not a
        tail): page types and PG_slab live on the head page."""
        out = facts.copy()
        t = np.nonzero(facts["tail"])[0]
        if len(t):
            head_pfns = self.pfn_of_page_va(facts["w1"][t] - np.uint64(1))
            hf = self.facts(head_pfns)
            pos = np.searchsorted(hf["pfn"], head_pfns)
            keep = facts[t][["pfn", "va", "tail", "w1"]]
            out[t] = hf[pos]
            for name in ("pfn", "va", "tail", "w1"):
                out[name][t] = keep[name]
        return out


#: One ptl object, read where an allocated page->ptl points.
LOCK_DTYPE = np.dtype(
    [
        ("ptr", np.uint64),
        ("ok", np.bool_),  # the object could be read
        ("val", np.uint32),  # the first word: qspinlock val (0 unlocked), or the rt_mutex's wait_lock
        ("held", np.bool_),  # qspinlock val != 0, or (PREEMPT_RT) an rt_mutex owner
        ("magic", np.uint32),
        ("owner_cpu", np.uint32),
        ("owner", np.uint64),
        ("slab", np.bool_),  # the pointer's page is a slab page
        ("cache", np.uint64),  # that slab's kmem_cache (0 when unknown)
    ]
)


class PtlObjects:
    """Read the spinlocks that ALLOC_SPLIT_PTLOCKS ``page->ptl`` pointers
    point to, with the slab page and cache each lies in."""

    def __init__(self, kernel, pages: StructPages) -> None:
        self.kernel = kernel
        self.pages = pages
        t = kernel.target
        self.layout = pages.layout
        self.off_slab_cache = t.offsetof("struct slab", "slab_cache")
        addr = t.symbol("page_ptl_cachep")
        self.ptl_cache: Optional[int] = None
        if addr is not None:
            try:
                self.ptl_cache = int.from_bytes(t.read_virt(addr, 8), "little")
            except TargetFault:
                self.ptl_cache = None

    def read(self, ptrs: np.ndarray) -> np.ndarray:
        """One :data:`LOCK_DTYPE` row per pointer (same order)."""
        k = self.kernel
        ptrs = np.asarray(ptrs, dtype=np.uint64)
        out = np.zeros(len(ptrs), dtype=LOCK_DTYPE)
        out["ptr"] = ptrs
        if not len(ptrs):
            return out
        size = self.layout.spinlock_size or 4
        lin_lo, lin_hi = np.uint64(k.layout.page_offset), np.uint64(k.layout.page_end)
        linear = (ptrs >= lin_lo) & (ptrs < lin_hi)
        pa = ptrs - lin_lo + np.uint64(k.phys_offset & _U64)
        # Objects, one read per page that holds some.
        ps = k.regime.page_size
        idx = np.nonzero(linear)[0]
        pages = {}
        for i in idx.tolist():
            p = int(pa[i])
            base = p - p % ps
            if base not in pages:
                try:
                    pages[base] = k.target.read_phys(base, ps)
                except TargetFault:
                    pages[base] = None
            data = pages[base]
            off = p - base
            if data is None or off + size > ps:
                continue
            obj = data[off : off + size]
            out["ok"][i] = True
            out["val"][i] = int.from_bytes(obj[0:4], "little")
            L = self.layout
            if L.off_magic is not None and L.off_magic + 4 <= size:
                out["magic"][i] = int.from_bytes(obj[L.off_magic : L.off_magic + 4], "little")
            if L.off_owner_cpu is not None and L.off_owner_cpu + 4 <= size:
                out["owner_cpu"][i] = int.from_bytes(obj[L.off_owner_cpu : L.off_owner_cpu + 4], "little")
            if L.off_owner is not None and L.off_owner + 8 <= size:
                out["owner"][i] = int.from_bytes(obj[L.off_owner : L.off_owner + 8], "little")
            if L.off_rt_owner is not None and L.off_rt_owner + 8 <= size:
                # bit 0 of rt_mutex_base.owner is RT_MUTEX_HAS_WAITERS
                owner = int.from_bytes(obj[L.off_rt_owner : L.off_rt_owner + 8], "little")
                out["owner"][i] = owner & ~1
                out["owner_cpu"][i] = 0xFFFFFFFF  # a sleeping lock's owner is a task, not a CPU
                out["held"][i] = owner != 0
            else:
                out["held"][i] = out["val"][i] != 0
        # The slab pages of the objects (head pages of compound slabs).
        if len(idx):
            pfns = pa[idx] >> np.uint64(k.regime.page_shift)
            facts = self.pages.heads(self.pages.facts(pfns))
            pos = np.searchsorted(facts["pfn"], pfns)
            # heads() keeps the row's PFN but the head's facts
            f = facts[pos]
            out["slab"][idx] = f["slab"]
            if self.off_slab_cache is not None:
                words = {8: f["w1"], 16: f["w2"], 24: f["mapping"], 32: f["index"], 40: f["ptl"]}
                if self.off_slab_cache in words:
                    out["cache"][idx] = np.where(f["slab"], words[self.off_slab_cache], 0)
        return out

    def owner_name(self, task: int) -> Optional[str]:
        """``comm[pid]`` of a task_struct pointer, when DWARF allows."""
        t = self.kernel.target
        off_comm = t.offsetof("struct task_struct", "comm")
        off_pid = t.offsetof("struct task_struct", "pid")
        if off_comm is None or not task or task == SPINLOCK_OWNER_INIT:
            return None
        try:
            comm = t.read_virt(task + off_comm, 16).split(b"\0", 1)[0].decode("ascii", "replace")
            pid = int.from_bytes(t.read_virt(task + off_pid, 4), "little") if off_pid is not None else None
        except TargetFault:
            return None
        return f"{comm}[{pid}]" if pid is not None else comm


def pfn_runs(pfns: np.ndarray) -> List[Tuple[int, int]]:
    """Sorted unique PFNs as ``[start, end)`` runs."""
    p = unique(np.asarray(pfns, dtype=np.uint64))
    if not len(p):
        return []
    brk = np.nonzero(np.diff(p) != np.uint64(1))[0] + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [len(p)]))
    return [(int(p[s]), int(p[e - 1]) + 1) for s, e in zip(starts.tolist(), ends.tolist())]
