"""
struct page / struct ptdesc: where each fact lives, and decoding it
-------------------------------------------------------------------

A page-table page's ``struct page`` (``struct ptdesc`` since v6.6, same
offsets: 6.12 ``TABLE_MATCH`` asserts pin them) says who allocated it and
what its constructor left: page flags (``PG_reserved`` for memblock and
kernel-image pages, ``PG_slab`` before v6.10), the page type (the Table type
is set by the pgtable ctor and cleared by the dtor), the refcount, the
``ptl`` word (an inline spinlock, or a pointer to one when
``ALLOC_SPLIT_PTLOCKS``), ``pmd_huge_pte``, ``memcg_data`` and the ``lru``
words (self-linked on pages that never saw the buddy lists, ``LIST_POISON``
on pages that left them).

:meth:`PageLayout.detect` decides everything by feature, never by version:

- offsets from DWARF (``struct ptdesc`` or ``struct page``), then VMCOREINFO
  (``OFFSET(page.*)``), then the fixed arm64 layout;
- flag bits from ``enum pageflags`` (DWARF), then VMCOREINFO ``NUMBER(PG_*)``;
- the page-type encoding (:mod:`mminspect.mm.pagetype`);
- the ptl: inline when ``sizeof(spinlock_t) <= sizeof(long)``, and the
  ``DEBUG_SPINLOCK`` fields (``magic``, ``owner_cpu``, ``owner``) when
  ``struct raw_spinlock`` has them.

:meth:`PageLayout.decode` turns raw struct pages into :data:`FACTS_DTYPE`
rows with numpy.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mminspect.bits import U32
from mminspect.mm.pagetype import TypeScheme, detect_type_scheme
from mminspect.target.base import Target

__all__ = ("FACTS_DTYPE", "LIST_POISON1", "LIST_POISON2", "PageLayout")

#: include/linux/poison.h: ``LIST_POISON1``/``2`` are ``0x100``/``0x122`` plus
#: ``POISON_POINTER_DELTA``, which is ``CONFIG_ILLEGAL_POINTER_VALUE``:
#: 0xdead000000000000 on arm64 (arch/arm64/Kconfig). ``list_del()`` leaves
#: them in ``lru`` when a page leaves the pcp or buddy lists; then
#: prep_new_page() -> clear_page_pfmemalloc() sets ``lru.next = NULL``
#: (include/linux/mm.h, 6.1 and 6.12), so an allocated page keeps only
#: LIST_POISON2 at offset 16, not LIST_POISON1 at 8 (the dumps agree).
LIST_POISON1 = 0xDEAD000000000100
LIST_POISON2 = 0xDEAD000000000122

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

        lay._detect_flags(target, info)
        lay.scheme = detect_type_scheme(target, info)
        ev["page_type"] = lay.scheme.evidence
        lay._detect_ptl(target)
        return lay

    def _detect_flags(self, target: Target, info: Dict[str, str]) -> None:
        """Page flags by name: enum pageflags (DWARF), else VMCOREINFO."""
        lay, ev = self, self.evidence
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

    def _detect_ptl(self, target: Target) -> None:
        """The ptl: inline, or a pointer when sizeof(spinlock_t) > sizeof(long)."""
        lay, ev = self, self.evidence
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
        out["page_type"] = ((pt_word >> shift) & np.uint64(U32)).astype(np.uint32)
        rc_word = w(self.off_refcount & ~7)
        rshift = np.uint64((self.off_refcount & 7) * 8)
        out["refcount"] = ((rc_word >> rshift) & np.uint64(U32)).astype(np.uint32).view(np.int32)
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
