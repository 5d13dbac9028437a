"""
Replaying the kernel's hot-remove page-table code
-------------------------------------------------

:class:`TableState` is a copy-on-write view of captured table pages.
:func:`unmap_hotplug_range` and :func:`free_empty_tables` replay
arch/arm64/mm/mmu.c (v5.7 and later) on it, entry for entry: the leaf pass
clears descriptors (and frees the mapped pages when ``free_mapped``), then the
table pass frees every table whose whole span, aligned to its parent level,
lies in ``[floor, ceiling)`` (``pgtable_range_aligned()``, unsigned
arithmetic included) and whose entries are all ``none``. The root is never
freed, which is also how the kernel honours a top level folded at run time
(``pgtable_l5_enabled()``/``pgtable_l4_enabled()``).
:func:`remove_pagetable_rfc2017` replays the 2017 RFC's recursive removal
instead: no floor or ceiling, a child freed as soon as it is empty.

The engine only records what happened (:class:`Event`); policies decide what
each freed page means (dtor or not, which messages).
"""

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import numpy as np

from mminspect.arch.arm64 import PTE_CONT, Regime
from mminspect.bits import U64

__all__ = (
    "Event",
    "TableState",
    "free_empty_tables",
    "pgtable_range_aligned",
    "remove_pagetable_rfc2017",
    "unmap_hotplug_range",
)



def pgtable_range_aligned(start: int, end: int, floor: int, ceiling: int, mask: int) -> bool:
    """arch/arm64/mm/mmu.c ``pgtable_range_aligned()``, in u64 arithmetic."""
    start &= mask
    if start < floor:
        return False
    if ceiling:
        ceiling &= mask
        if not ceiling:
            return False
    if ((end - 1) & U64) > ((ceiling - 1) & U64):
        return False
    return True


@dataclass(frozen=True)
class Event:
    """One thing the replayed code did.

    kind: ``free_table`` (a table page freed), ``keep_table`` (a table left
    empty or partly used, with the reason), ``free_data`` (mapped pages freed
    by the leaf pass), ``warn`` (a WARN_ON the kernel would hit).
    """

    kind: str
    routine: str
    phys: int = 0
    level: int = 0
    va: int = 0
    size: int = 0
    parent: Optional[Tuple[int, int]] = None
    detail: str = ""


@dataclass
class TableState:
    """The simulation's working copy of the captured tables' contents
    (phys -> entries), with copy-on-write updates: not a record about tables
    (:class:`~mminspect.hotremove.snapshot_file.TableFacts`) but their
    descriptors as a removal changes them."""

    regime: Regime
    root_phys: int
    tables: Dict[int, np.ndarray]
    _dirty: Dict[int, np.ndarray] = field(default_factory=dict)
    _clean: Dict[int, Optional[np.ndarray]] = field(default_factory=dict)
    events: List[Event] = field(default_factory=list)

    def entries(self, phys: int) -> Optional[np.ndarray]:
        t = self._dirty.get(phys)
        if t is None:
            t = self._clean.get(phys)
            if t is None:
                # Uniform tables are generated on access: keep what was made.
                t = self._clean[phys] = self.tables.get(phys)
        return t

    def writable(self, phys: int) -> np.ndarray:
        t = self._dirty.get(phys)
        if t is None or not t.flags.writeable:
            t = self._dirty[phys] = self.entries(phys).copy()
            self._clean.pop(phys, None)
        return t

    def clear(self, phys: int, count: int) -> None:
        """Set every entry of a table to none (one shared read-only array,
        not a copy per table: a 64 GiB removal clears 32,768 PTE tables)."""
        self._dirty[phys] = _none(count)
        self._clean.pop(phys, None)

    def live(self, phys: int) -> bool:
        """Some entry of the table is not none."""
        t = self._dirty.get(phys)
        if t is not None and not t.flags.writeable:
            return False  # cleared
        t = self.entries(phys)
        return t is not None and bool(t.any())

    def all_valid(self, phys: int) -> bool:
        """Every entry of an untouched table is valid, told from a uniform
        table's first descriptor without generating its entries (entry *i*
        is ``first + i * step`` with an even step: bit 0 is the same in all)."""
        if phys in self._dirty:
            return False
        uniform = getattr(self.tables, "uniform", None)
        got = uniform(phys) if uniform is not None else None
        if got is not None:
            return bool(got[0] & 1) and not got[1] & 1
        t = self.entries(phys)
        return t is not None and bool((t & np.uint64(1)).all())

    def child(self, desc: int) -> int:
        return self.regime.desc_to_phys(desc)

    def is_leaf(self, desc: int, level: int) -> bool:
        typ = desc & 3
        if level == 3:
            return typ == 3
        return typ == 1 and level in self.regime.block_levels()

    def warn(self, routine: str, phys: int, level: int, va: int, what: str) -> None:
        self.events.append(Event("warn", routine, phys, level, va, 0, None, what))


@lru_cache(maxsize=None)
def _none(count: int) -> np.ndarray:
    t = np.zeros(count, dtype=np.uint64)
    t.flags.writeable = False
    return t


def _addr_end(addr: int, end: int, span: int) -> int:
    # p?d_addr_end(): the next boundary, or end if it comes first.
    boundary = ((addr + span) & ~(span - 1)) & U64
    return boundary if (boundary - 1) & U64 < (end - 1) & U64 else end


def _entries(st: TableState, phys: int, level: int, addr: int, end: int, routine: str):
    """Walk the entries of one table covering ``[addr, end)`` as the kernel's
    ``do { next = p?d_addr_end(addr, end); ... } while (addr = next, addr < end)``
    loops do: yields (index, descriptor, addr, next), reading the current state."""
    r = st.regime
    if st.entries(phys) is None:
        st.warn(routine, phys, level, addr, "table not in the snapshot")
        return
    span = 1 << r.shift(level)
    n = len(st.entries(phys))
    while True:
        nxt = _addr_end(addr, end, span)
        i = (addr >> r.shift(level)) & (n - 1)
        yield i, int(st.entries(phys)[i]), addr, nxt
        addr = nxt
        if addr == end or addr == 0:
            break


def unmap_hotplug_range(st: TableState, addr: int, end: int, free_mapped: bool,
                        routine: str = "unmap_hotplug_range") -> None:
    """The leaf pass: clear every leaf in ``[addr, end)``; with ``free_mapped``
    the mapped pages are freed (vmemmap), without they stay (linear map)."""
    _unmap(st, st.root_phys, st.regime.top_level, addr, end, free_mapped, routine)


def _pte_slice(st: TableState, phys: int, addr: int, end: int, routine: str):
    """The last-level entries of one table covering ``[addr, end)``: (start
    index, the entries), or None when the table is not in the snapshot. The
    PTE loops run on these slices as numpy operations, not per entry."""
    t = st.entries(phys)
    if t is None:
        st.warn(routine, phys, 3, addr, "table not in the snapshot")
        return None
    shift = st.regime.shift(3)
    i0 = (addr >> shift) & (len(t) - 1)
    count = (((end - addr) & U64) + (1 << shift) - 1) >> shift
    return i0, t[i0 : i0 + count]


def _clear_ptes(st, phys, addr, end, free_mapped, routine) -> None:
    # unmap_hotplug_pte_range() / remove_pte_table(): every non-none PTE is
    # cleared (after WARN_ON(!pte_present)); with free_mapped its page goes.
    r = st.regime
    span = 1 << r.shift(2)  # of a whole PTE table
    if not free_mapped and not addr & (span - 1) and ((end - addr) & U64) == span and st.all_valid(phys):
        st.clear(phys, r.entries_per_table)  # the whole table, every entry valid: all cleared
        return
    got = _pte_slice(st, phys, addr, end, routine)
    if got is None:
        return
    i0, seg = got
    nz = np.nonzero(seg)[0]
    if not len(nz):
        return
    vals = seg[nz]
    shift = r.shift(3)
    for k in np.nonzero((vals & np.uint64(1)) == 0)[0][:8].tolist():
        st.warn(routine, phys, 3, addr + (int(nz[k]) << shift), "WARN_ON(!pte_present)")
    st.writable(phys)[i0 + nz] = 0
    if free_mapped:
        if np.any(vals & np.uint64(PTE_CONT)):
            st.warn(routine, phys, 3, addr, "WARN_ON(pte_cont)")
        st.events.append(Event("free_data", routine, r.desc_to_phys(int(vals[0])), 3,
                               addr + (int(nz[0]) << shift), len(nz) << shift))


def _unmap(st, phys, level, addr, end, free_mapped, routine) -> None:
    r = st.regime
    if level == 3:
        _clear_ptes(st, phys, addr, end, free_mapped, routine)
        return
    name = r.level_name(level).lower()
    for i, d, a, nxt in _entries(st, phys, level, addr, end, routine):
        if not d:
            continue
        if not d & 1:
            st.warn(routine, phys, level, a, f"WARN_ON(!{name}_present)")
        elif st.is_leaf(d, level):
            st.writable(phys)[i] = 0
            if free_mapped:
                if d & PTE_CONT:
                    st.warn(routine, phys, level, a, f"WARN_ON({name}_cont)")
                st.events.append(Event("free_data", routine, r.desc_to_phys(d), level, a, 1 << r.shift(level)))
        elif level < 3 and d & 3 == 3:
            _unmap(st, st.child(d), level + 1, a, nxt, free_mapped, routine)
        else:
            st.warn(routine, phys, level, a, "descriptor is neither table nor leaf")


def free_empty_tables(st: TableState, addr: int, end: int, floor: int, ceiling: int,
                      routine: str = "free_empty_tables") -> None:
    """The table pass of mainline (v5.7+): free empty tables whose span lies
    in ``[floor, ceiling)``."""
    _free_empty(st, st.root_phys, st.regime.top_level, addr, end, floor, ceiling, None, routine)


def _free_empty(st, phys, level, addr, end, floor, ceiling, parent, routine) -> None:
    r = st.regime
    start = addr
    if level == 3 and st.live(phys):
        got = _pte_slice(st, phys, addr, end, routine)
        if got is not None and got[1].any():
            st.warn(routine, phys, level, addr, "WARN_ON(!pte_none(pte))")
    for i, d, a, nxt in (() if level == 3 else _entries(st, phys, level, addr, end, routine)):
        if d:
            if not d & 1 or d & 3 != 3:
                st.warn(routine, phys, level, a,
                        f"WARN_ON(!{r.level_name(level).lower()}_present || !table || sect)")
            else:
                _free_empty(st, st.child(d), level + 1, a, nxt, floor, ceiling, (phys, i), routine)
    if st.entries(phys) is None:
        return
    if parent is None:
        return  # the root (or a level folded into it) is never freed
    mask = ~((1 << r.shift(level - 1)) - 1) & U64
    if not pgtable_range_aligned(start, end, floor, ceiling, mask):
        if not st.live(phys):
            st.events.append(Event("keep_table", routine, phys, level, start, 0, parent,
                                   "empty, but its span is not inside [floor, ceiling)"))
        return
    if st.live(phys):
        st.events.append(Event("keep_table", routine, phys, level, start, 0, parent,
                               f"{int(np.count_nonzero(st.entries(phys)))} entries still live"))
        return
    pw = st.writable(parent[0])
    pw[parent[1]] = 0
    st.events.append(Event("free_table", routine, phys, level, start, 0, parent))


def remove_pagetable_rfc2017(st: TableState, addr: int, end: int, direct: bool) -> None:
    """The 2017 RFC's ``remove_pagetable(start, end, direct)``: clear leaves
    (freeing mapped pages when ``!direct``), and free each child table as soon
    as all its entries are none, with no floor or ceiling."""
    routine = "remove_pagetable(direct)" if direct else "remove_pagetable(vmemmap)"
    _rfc(st, st.root_phys, st.regime.top_level, addr, end, direct, routine)


def _rfc(st, phys, level, addr, end, direct, routine) -> None:
    r = st.regime
    if level == 3:
        _clear_ptes(st, phys, addr, end, not direct, routine)
        return
    for i, d, a, nxt in _entries(st, phys, level, addr, end, routine):
        if d and st.is_leaf(d, level):
            st.writable(phys)[i] = 0
            if not direct:
                st.events.append(Event("free_data", routine, r.desc_to_phys(d), level, a, 1 << r.shift(level)))
        elif d and level < 3 and d & 3 == 3:
            child = st.child(d)
            _rfc(st, child, level + 1, a, nxt, direct, routine)
            ct = st.entries(child)
            # free_p?d_table(): free the child if every entry is none; PUD
            # tables only when CONFIG_PGTABLE_LEVELS > 3 (never the root).
            if ct is not None and not ct.any():
                st.writable(phys)[i] = 0
                st.events.append(Event("free_table", routine, child, level + 1, a, 0, (phys, i)))
