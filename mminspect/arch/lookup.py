"""
Scalar descriptor walks
-----------------------

For a target that must translate before a :class:`~mminspect.kernel.Kernel`
exists (the gdb target placing a KASLR kernel from TTBR1_EL1, with QEMU's
physical reads), the MMU's own walk of one address, as
arch/arm64/mm/ptdump.c and the architecture describe it: :func:`translate`
follows one VA down from a root table, :func:`find_mappings` lists the VAs of
the upper half of TTBR1's range that map one PA. ``read(address, size)``
returns the bytes of physical memory, or None where they cannot be read.
The batched walker of whole trees is :mod:`mminspect.walk`.
"""

from typing import Callable, List, Optional

from mminspect.arch.arm64 import Regime
from mminspect.bits import U64

__all__ = ("find_mappings", "translate")

Read = Callable[[int, int], Optional[bytes]]


def _leaf_or_table(r: Regime, level: int, desc: int) -> Optional[str]:
    """``table``, ``leaf`` or None (invalid) for one descriptor at ``level``."""
    if not desc & 1:
        return None
    if level < 3:
        return "table" if desc & 2 else "leaf"
    return "leaf" if desc & 2 else None


def translate(read: Read, r: Regime, root: int, va: int) -> Optional[int]:
    """The PA ``va`` maps to through the TTBR1 tables at ``root``, or None."""
    if (va >> r.vabits_actual) != (U64 >> r.vabits_actual):
        return None
    table = root
    for level in range(r.top_level, 4):
        shift = r.shift(level)
        entries = r.root_entries() if level == r.top_level else r.entries_per_table
        index = (va >> shift) & (entries - 1)
        raw = read(table + 8 * index, 8)
        if raw is None:
            return None
        desc = int.from_bytes(raw, "little")
        kind = _leaf_or_table(r, level, desc)
        if kind is None:
            return None
        if kind == "table":
            table = r.desc_to_phys(desc)
            continue
        return r.desc_to_phys(desc) + (va & ((1 << shift) - 1))
    return None


def find_mappings(read: Read, r: Regime, root: int, pa: int) -> List[int]:
    """Kernel VAs in the upper half of TTBR1's range (where the image,
    modules, vmalloc and vmemmap live) that map ``pa``, through the tables
    at ``root``."""
    found: List[int] = []
    upper = (U64 << (r.vabits_actual - 1)) & U64
    frontier = [(root, r.ttbr1_va(0), r.root_entries())]
    for level in range(r.top_level, 4):
        shift = r.shift(level)
        nxt = []
        for table, base, entries in frontier:
            raw = read(table, 8 * entries)
            if raw is None:
                continue
            for index in range(entries):
                va = (base + (index << shift)) & U64
                if va + (1 << shift) - 1 < upper:
                    continue
                desc = int.from_bytes(raw[8 * index : 8 * index + 8], "little")
                kind = _leaf_or_table(r, level, desc)
                if kind == "table":
                    nxt.append((r.desc_to_phys(desc), va, r.entries_per_table))
                elif kind == "leaf":
                    out = r.desc_to_phys(desc)
                    if out <= pa < out + (1 << shift):
                        found.append(va + (pa - out))
        frontier = nxt
    return found
