"""
Page-type encodings
-------------------

How ``page_type`` says a page is a page table (or slab, or free buddy
memory) changed twice, and :func:`detect_type_scheme` decides which encoding
a kernel uses by feature, never by version number: ``enum pagetype``
(``PGTY_table``; or ``PG_table``/``PAGE_TYPE_BASE`` while it was an enum of
bits) from DWARF, then VMCOREINFO ``PAGE_BUDDY_MAPCOUNT_VALUE``, whose value
differs in each scheme. Only where a scheme used ``#define``\\s are values
hard-coded, each with the kernel change that defines it.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from mminspect.bits import U32
from mminspect.target.base import Target

__all__ = ("TypeScheme", "detect_type_scheme")


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
        return U32 & ~self.table

    def describe(self, page_type: int) -> str:
        """A short name for one page_type value ('table', 'none', 'slab' ...)."""
        pt = np.array([page_type], dtype=np.uint32)
        if page_type == U32:
            return "none"
        for name, value in (("table", self.table), ("slab", self.slab), ("buddy", self.buddy)):
            if value is not None and bool(self._is(pt, value)[0]):
                return name
        if not bool(self.has_type(pt)[0]):
            return f"mapcount {np.int32(np.uint32(page_type))}"
        return f"other type {page_type:#010x}"


def detect_type_scheme(target: Target, info: Dict[str, str]) -> TypeScheme:
    buddy_value = info.get("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)")
    buddy_u32 = (int(buddy_value, 0) & U32) if buddy_value is not None else None
    slab_value = info.get("NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)")
    slab_u32 = (int(slab_value, 0) & U32) if slab_value is not None else None

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
            "inverted", base & U32, pg_table, pg_slab, target.constant("PG_buddy"),
            f"DWARF: enum pagetype PG_table = {pg_table:#x} under PAGE_TYPE_BASE {base & U32:#x} (inverted)",
        )
    if buddy_u32 == U32 & ~0x80:
        # v4.18 .. v6.9: #defines in include/linux/page-flags.h, not in DWARF:
        # PAGE_TYPE_BASE 0xf0000000 from "mm: Split page_type out from _mapcount"
        # and PG_table 0x200 from "mm: Mark pages in use for page tables" (Matthew
        # Wilcox, 2018, <20180430202247.25220-4-willy@infradead.org>); 6.1 has
        # them at page-flags.h:943-948. PG_slab became a page type (0x1000) only
        # in v6.10, where PAGE_SLAB_MAPCOUNT_VALUE joined VMCOREINFO.
        slab = (~slab_u32 & U32) if slab_u32 is not None else None
        return TypeScheme(
            "inverted", 0xF0000000, 0x200, slab, 0x80,
            "VMCOREINFO: PAGE_BUDDY_MAPCOUNT_VALUE == ~0x80: #define PAGE_TYPE_BASE 0xf0000000, "
            "PG_table 0x200 (include/linux/page-flags.h, v4.18 'mm: Mark pages in use for page tables')",
        )
    if buddy_u32 == U32 & ~0x40000000:
        # v6.10/6.11 "mm: allow reuse of the lower 16 bit of the page type with an
        # actual type" (David Hildenbrand, <20240527141454.113132-3-david@redhat.com>):
        # base 0x80000000, PG_buddy 0x40000000, PG_table 0x10000000, PG_slab 0x02000000.
        slab = (~slab_u32 & U32 & ~0x80000000) if slab_u32 is not None else None
        return TypeScheme(
            "inverted", 0x80000000, 0x10000000, slab, 0x40000000,
            "VMCOREINFO: PAGE_BUDDY_MAPCOUNT_VALUE == ~0x40000000: PAGE_TYPE_BASE 0x80000000, "
            "PG_table 0x10000000 (<20240527141454.113132-3-david@redhat.com>, no DWARF)",
        )
    return TypeScheme("unknown", 0, None, None, None,
                      "no PGTY_table/PG_table in DWARF and no known PAGE_BUDDY_MAPCOUNT_VALUE: "
                      "cannot tell typed pages")
