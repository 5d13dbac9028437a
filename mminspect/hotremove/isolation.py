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
the kernel may still move them (6.1's hugetlb folios, told apart only by
their compound destructor, are not identified here). :func:`scan_block` reads the struct pages in
bulk through :class:`mminspect.pages.StructPages` (the audit's path).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.mm.memmap import CORE_SCAN_BYTES, MAX_READ, StructPages
from mminspect.target.base import core_file_of

__all__ = ("IsolationScan", "scan_block", "scan_blocks")

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
    #: The first PFN of the first scan chunk with struct pages missing from
    #: the dump (None: none missing): an unmovable page found after it may
    #: not be the one the kernel stops at.
    unreadable_from: Optional[int] = None

    def as_dict(self) -> Dict[str, object]:
        return {"pages": self.pages, "unreadable": self.unreadable,
                "first_unmovable": list(self.first_unmovable) if self.first_unmovable else None,
                "unmovable": self.unmovable, "doubtful": {k: [n, p] for k, (n, p) in self.doubtful.items()},
                "unreadable_from": self.unreadable_from}

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "IsolationScan":
        first = d.get("first_unmovable")
        return cls(d["pages"], d.get("unreadable", 0), tuple(first) if first else None,
                   dict(d.get("unmovable", {})), {k: (v[0], list(v[1])) for k, v in d.get("doubtful", {}).items()},
                   d.get("unreadable_from"))


#: include/linux/mm.h GUP_PIN_COUNTING_BIAS (1U << 10).
_GUP_PIN_COUNTING_BIAS = 1 << 10


def _doubt(out: "IsolationScan", kind: str, pfns: np.ndarray) -> None:
    if not len(pfns):
        return
    n, first = out.doubtful.get(kind, (0, []))
    out.doubtful[kind] = (n + len(pfns), (first + [int(p) for p in pfns[:4]])[:4])


def _bit(kernel, name: str) -> Optional[int]:
    return kernel.target.constant(name)


#: What stops isolation, by code (0: nothing).
KINDS = ("", "reserved", "slab", "page table", "compound, not on the LRU",
         "kernel allocation (referenced, not on the LRU, not movable)")


class _Bits:
    """The page-flag bits the test needs, from the kernel's DWARF."""

    def __init__(self, kernel) -> None:
        self.lru, self.head = _bit(kernel, "PG_lru"), _bit(kernel, "PG_head")
        self.movable_ops = _bit(kernel, "PG_movable_ops")
        # v6.12+ (4ffca5a96678 "mm: support only one page_type per page"):
        # hugetlb is a page type of the folio head; before, a compound destructor.
        self.pgty_hugetlb = _bit(kernel, "PGTY_hugetlb")


def _classify(facts: np.ndarray, movable: bool, bits: _Bits, out: IsolationScan) -> None:
    ok = facts["ok"]
    flags = facts["flags"]

    def flag(bit):
        if bit is None:
            return np.zeros(len(facts), dtype=bool)
        return (flags >> np.uint64(bit)) & np.uint64(1) == np.uint64(1)

    lru = flag(bits.lru)
    kinds = np.zeros(len(facts), dtype=np.int8)
    kinds[ok & facts["reserved"]] = 1
    if not movable:
        head = flag(bits.head)
        movable_ops = (flag(bits.movable_ops) if bits.movable_ops is not None else
                       (facts["mapping"] & np.uint64(_PAGE_MAPPING_FLAGS)) == np.uint64(_PAGE_MAPPING_MOVABLE))
        rest = ok & ~facts["reserved"] & ~facts["tail"]
        referenced = rest & (facts["refcount"] != 0) & ~lru & ~movable_ops
        kinds[referenced & ~facts["slab"] & ~facts["table"] & ~head] = 5
        kinds[referenced & head & ~facts["slab"]] = 4
        kinds[referenced & facts["table"]] = 3
        kinds[referenced & facts["slab"]] = 2
        # hugetlb heads pass has_unmovable_pages() on arm64
        # (hugepage_migration_supported()), but migrate only if a free huge
        # page can be had elsewhere.
        if bits.pgty_hugetlb is not None:
            hugetlb = rest & head & ((facts["page_type"] >> np.uint32(24)) == np.uint32(bits.pgty_hugetlb))
            kinds[hugetlb] = 0
            _doubt(out, "hugetlb folio (migrates only into a free huge page elsewhere)", facts["pfn"][hugetlb])
    # Pass isolation, may fail migration: pages pinned with FOLL_PIN
    # (refcount >= GUP_PIN_COUNTING_BIAS, folio_maybe_dma_pinned() for a small
    # folio), which do_migrate_range() cannot move while pinned.
    pinned = ok & ~facts["reserved"] & lru & (facts["refcount"] >= _GUP_PIN_COUNTING_BIAS)
    _doubt(out, "pinned page (FOLL_PIN: refcount >= 1024)", facts["pfn"][pinned])
    hit = np.flatnonzero(kinds)
    if not len(hit):
        return
    for code, n in zip(*np.unique(kinds[hit], return_counts=True)):
        out.unmovable[KINDS[code]] = out.unmovable.get(KINDS[code], 0) + int(n)
    if out.first_unmovable is None:
        out.first_unmovable = (int(facts["pfn"][hit[0]]), KINDS[kinds[hit[0]]])


def scan_blocks(kernel, requests: Sequence[Tuple[int, int, bool]]) -> Optional[List[IsolationScan]]:
    """Scan each ``(lo_pfn, hi_pfn, movable)`` range as ``has_unmovable_pages()``
    would for a block in ZONE_MOVABLE (``movable``) or not, in one bulk pass
    over their struct pages. None when the struct pages cannot be decoded
    (no page layout)."""
    try:
        sp = StructPages(kernel)
    except Exception:  # no VMCOREINFO page layout: cannot scan
        return None
    if sp.layout.pg_reserved is None:
        return None
    bits = _Bits(kernel)
    lay = sp.layout
    reserved = np.uint64(1 << lay.pg_reserved)

    def in_use(raw: np.ndarray) -> np.ndarray:
        # A free page (no reference, not PG_reserved) never stops isolation
        # nor migration: decode only the others (most of a hot-added block
        # is free).
        refcount = raw.view("<u4")[:, lay.off_refcount // 4]
        return np.flatnonzero((refcount != 0) | ((raw[:, lay.off_flags // 8] & reserved) != 0))

    order = sorted(range(len(requests)), key=lambda i: requests[i][0])
    los = np.array([requests[i][0] for i in order], dtype=np.uint64)
    outs = [IsolationScan(hi - lo) for lo, hi, _ in requests]
    pfn_ranges = [requests[i][:2] for i in order]
    starts = iter(s for lo, hi in pfn_ranges for s in range(lo, hi, _chunk(sp)))
    for facts, _, bad in sp.scan(pfn_ranges, chunk_pages=_chunk(sp), want=in_use):
        first = next(starts)  # the chunk's first PFN (chunks come in order)
        k = order[int(np.searchsorted(los, np.uint64(first), side="right")) - 1]
        outs[k].unreadable += bad
        if bad and outs[k].unreadable_from is None:
            outs[k].unreadable_from = first
        if len(facts):
            _classify(facts, requests[k][2], bits, outs[k])
    return outs


def _chunk(sp) -> int:
    """Pages per scan chunk: what StructPages.scan() would take by default."""
    return max(1, (MAX_READ if core_file_of(sp.target) is None else CORE_SCAN_BYTES) // sp.layout.size)


def scan_block(kernel, lo_pfn: int, hi_pfn: int, movable: bool) -> Optional[IsolationScan]:
    """:func:`scan_blocks` of one range."""
    got = scan_blocks(kernel, [(lo_pfn, hi_pfn, movable)])
    return got[0] if got is not None else None
