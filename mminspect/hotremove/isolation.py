"""
Can a block's pages be isolated and migrated? (the struct-page scan)
--------------------------------------------------------------------

``offline_pages()`` first isolates the range, pageblock by pageblock
(``start_isolate_page_range()`` -> ``set_migratetype_isolate()`` ->
``has_unmovable_pages()``, mm/page_isolation.c; the same test in 6.1 and, as
``page_is_unmovable()``, in 7.2), before any memory notifier runs. The first
unmovable page in PFN order stops it: ``dump_page(page, "unmovable page")``
and -EBUSY. A page is unmovable when it is

- ``PG_reserved`` (memblock, the kernel image, holes), in any zone;
- outside ZONE_MOVABLE: a compound head that is neither on the LRU nor
  hugetlb, or a page with a reference that is neither free, on the LRU, nor
  movable (slab, page tables, other kernel allocations).

Pages that pass isolation can still fail migration later (pinned LRU pages
outside ZONE_MOVABLE, hugetlb that cannot be replaced): those are warnings,
the kernel may still move them. :func:`scan_block` reads the struct pages in
bulk through :class:`mminspect.pages.StructPages` (the audit's path).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from mminspect.pages import StructPages

__all__ = ("IsolationScan", "scan_block")

#: include/linux/page-flags.h: PAGE_MAPPING_MOVABLE in page->mapping's low bits
#: (__PageMovable(), before v6.16's PG_movable_ops).
_PAGE_MAPPING_MOVABLE = 0x2
_PAGE_MAPPING_FLAGS = 0x3


@dataclass
class IsolationScan:
    """What the struct pages of one offline range say."""

    pages: int
    unreadable: int = 0
    #: The page has_unmovable_pages() stops at: (pfn, what it is), or None.
    first_unmovable: Optional[Tuple[int, str]] = None
    #: Counts by kind of page that stops isolation.
    unmovable: Dict[str, int] = field(default_factory=dict)
    #: Pages that pass isolation but may not migrate: kind -> (count, first pfns).
    doubtful: Dict[str, Tuple[int, List[int]]] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        return {"pages": self.pages, "unreadable": self.unreadable,
                "first_unmovable": list(self.first_unmovable) if self.first_unmovable else None,
                "unmovable": self.unmovable, "doubtful": {k: [n, p] for k, (n, p) in self.doubtful.items()}}

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "IsolationScan":
        first = d.get("first_unmovable")
        return cls(d["pages"], d.get("unreadable", 0), tuple(first) if first else None,
                   dict(d.get("unmovable", {})), {k: (v[0], list(v[1])) for k, v in d.get("doubtful", {}).items()})


def _bit(kernel, name: str) -> Optional[int]:
    return kernel.target.constant(name)


def scan_block(kernel, lo_pfn: int, hi_pfn: int, movable: bool) -> Optional[IsolationScan]:
    """Scan ``[lo_pfn, hi_pfn)`` as ``has_unmovable_pages()`` would for a
    block in ZONE_MOVABLE (``movable``) or not. None when the struct pages
    cannot be decoded (no page layout)."""
    try:
        sp = StructPages(kernel)
    except Exception:  # no VMCOREINFO page layout: cannot scan
        return None
    if sp.layout.pg_reserved is None:
        return None
    pg_lru, pg_head = _bit(kernel, "PG_lru"), _bit(kernel, "PG_head")
    pg_movable_ops = _bit(kernel, "PG_movable_ops")
    out = IsolationScan(hi_pfn - lo_pfn)
    for facts, _, bad in sp.scan([(lo_pfn, hi_pfn)]):
        out.unreadable += bad
        ok = facts["ok"]
        flags = facts["flags"]

        def flag(bit):
            if bit is None:
                return np.zeros(len(facts), dtype=bool)
            return (flags >> np.uint64(bit)) & np.uint64(1) == np.uint64(1)

        lru = flag(pg_lru)
        head = flag(pg_head)
        movable_ops = (flag(pg_movable_ops) if pg_movable_ops is not None else
                       (facts["mapping"] & np.uint64(_PAGE_MAPPING_FLAGS)) == np.uint64(_PAGE_MAPPING_MOVABLE))
        kinds = np.full(len(facts), "", dtype=object)
        kinds[ok & facts["reserved"]] = "reserved"
        if not movable:
            rest = ok & ~facts["reserved"] & ~facts["tail"]
            referenced = rest & (facts["refcount"] != 0) & ~lru & ~movable_ops
            kinds[referenced & facts["slab"]] = "slab"
            kinds[referenced & facts["table"]] = "page table"
            kinds[referenced & head & ~facts["slab"]] = "compound, not on the LRU"
            other = referenced & ~facts["slab"] & ~facts["table"] & ~head
            kinds[other] = "kernel allocation (referenced, not on the LRU, not movable)"
            # Pass isolation, may fail migration: pinned LRU pages.
            pinned = rest & lru & (facts["refcount"] > 2)
            if pinned.any():
                n, first = out.doubtful.get("LRU page with extra references (pinned?)", (0, []))
                pfns = facts["pfn"][pinned]
                out.doubtful["LRU page with extra references (pinned?)"] = (
                    n + int(pinned.sum()), (first + [int(p) for p in pfns[:4]])[:4])
        hit = np.flatnonzero(kinds != "")
        for k in set(kinds[hit].tolist()):
            out.unmovable[k] = out.unmovable.get(k, 0) + int((kinds[hit] == k).sum())
        if out.first_unmovable is None and len(hit):
            out.first_unmovable = (int(facts["pfn"][hit[0]]), str(kinds[hit[0]]))
    return out
