"""
ptdump output
-------------

Render a :class:`~mminspect.walk.Walk` line for line in the format of the
kernel's /sys/kernel/debug/kernel_page_tables and efi_page_tables
(arch/arm64/mm/ptdump.c ``note_page()``), address markers included, so the
output can be diffed against a live system's debugfs. The kernel's DEBUG_WX
check (``ptdump_check_wx()``) lives in :mod:`mminspect.walk.wx` and is
re-exported here.

On a KASAN kernel the markers include "Kasan shadow start/end" (PAGE_END is
KASAN_SHADOW_START, so "Linear Mapping end" and "Kasan shadow start" print
together), and every entry that references one of the shared
``kasan_early_shadow_*`` tables is what ``note_kasan_page_table()`` notes: a
PTE-level note of ``kasan_early_shadow_pte[0]``. The walker gives exactly that
(one PTE-level ``rep`` run per such entry, joined with its neighbours), and
note_page() joins notes by level and attributes, never by physical address.
"""

from typing import Iterator, List, Tuple

from mminspect.arch.arm64 import PTDUMP_MASK, PTE_SHARED, decode_prot
from mminspect.bits import U64
from mminspect.walk import CLS_LEAF, Walk
from mminspect.walk.wx import check_wx

__all__ = ("check_wx", "ptdump_lines")



def _notes(w: Walk, base: int, markers: List[Tuple[int, str]]) -> Iterator[Tuple[int, int, int]]:
    """(addr, level, prot) at every point where the kernel's note_page() could
    print: the start of each run, and the first entry at or after a marker
    inside a run."""
    r = w.regime
    runs = w.runs
    mk = sorted(m for m, _ in markers)
    for run in runs:
        va, size, lvl = int(run["va"]), int(run["size"]), int(run["level"])
        end = va + size
        if end <= base:
            continue
        prot = int(run["attr"]) & PTDUMP_MASK if run["cls"] else 0
        if r.lpa2 and run["cls"] == CLS_LEAF and (int(run["pa"]) >> 50) & 3 == 3:
            prot |= PTE_SHARED  # OA[51:50] read back as SH by ptdump
        start = max(va, base)
        yield start, lvl, prot
        span = 1 << r.shift(lvl)
        for m in mk:
            if start < m < end:
                at = -(-(m - va) // span) * span + va
                if at < end:
                    yield at, lvl, prot


def _flush_address(w: Walk) -> int:
    """Where ptdump's final flush note lands: ptdump_walk()'s end (0 for an
    address space ending at 2**64) with the note_page_flush() callback
    (v6.15-ish, backported to Debian 6.12), 0 before it."""
    k = w.kernel
    end = 0 if w.root.ttbr1 else (1 << w.regime.vabits_actual)
    if k.target.has_debug_info:
        modern = k.target.sizeof("struct ptdump_pg_state") is not None
    else:
        modern = k.layout.top_vmemmap
    return end if modern else 0


def _range_line(start: int, end: int, level_name: str, prot: int) -> str:
    """One ``note_page()`` line: range, size scaled while divisible, level, prot."""
    units = "KMGTPE"
    delta = ((end - start) & U64) >> 10
    u = 0
    while not (delta & 1023) and u + 1 < len(units):
        delta >>= 10
        u += 1
    line = f"0x{start:016x}-0x{end:016x}   {delta:9d}{units[u]} {level_name}"
    return line + decode_prot(prot) if prot else line


def ptdump_lines(w: Walk) -> Iterator[str]:
    """The lines of kernel_page_tables (init_mm) or efi_page_tables (efi_mm)."""
    k = w.kernel
    r = w.regime
    markers = k.ptdump_markers(w.root)
    base = k.ptdump_base(w.root)
    st_level = -1
    st_prot = 0
    st_start = 0
    mi = 0

    def name(level: int) -> str:
        return r.level_name(level)

    def note(addr: int, level: int, prot: int) -> Iterator[str]:
        nonlocal st_level, st_prot, st_start, mi
        if st_level == -1:
            st_level, st_prot, st_start = level, prot, addr
            yield f"---[ {markers[mi][1]} ]---"
        elif prot != st_prot or level != st_level or addr >= markers[mi + 1][0]:
            yield _range_line(st_start, addr, name(st_level), st_prot)
            if addr >= markers[mi + 1][0]:
                mi += 1
                yield f"---[ {markers[mi][1]} ]---"
            st_start, st_prot, st_level = addr, prot, level
        if addr >= markers[mi + 1][0]:
            mi += 1
            yield f"---[ {markers[mi][1]} ]---"

    for addr, level, prot in _notes(w, base, markers):
        yield from note(addr, level, prot)
    if st_level != -1:
        # note_page(st, end, -1, 0): level -1 always differs, so the last
        # range is printed; a flush at 0 never crosses a marker.
        flush = _flush_address(w)
        yield _range_line(st_start, flush, name(st_level), st_prot)
        if flush and flush >= markers[mi + 1][0] and markers[mi + 1][1]:
            yield f"---[ {markers[mi + 1][1]} ]---"
