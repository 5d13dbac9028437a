"""
Kernel-era facts, detected from the dump
----------------------------------------

Which ctor/dtor behaviour a kernel has is decided by feature, not by
version: the classifier's reading of the allocation sites
(:class:`mminspect.classify.Features`), symbols that exist only with a change
(``prevent_bootmem_remove_nb``, ``dump_vma`` for DEBUG_VM,
``check_pages_enabled``), type sizes (``spinlock_t``), and the kernel's own
code: whether the hot-remove table-freeing functions call into NR_PAGETABLE
accounting is read from their instructions (an arm64 ``BL`` to
``__lruvec_stat_mod_folio`` or ``mod_node_page_state``), which is how the
2026 dtor fix shows itself. Only facts no dump can show fall back to
OSRELEASE, and their evidence says so.
"""

import struct
from typing import Dict, Iterable, Optional

from mminspect.hotremove.policy import Era
from mminspect.target.base import TargetFault

__all__ = ("detect_era", "function_calls")

_HOTREMOVE_FUNCS = (
    "free_hotplug_pgtable_page",
    "free_empty_pte_table",
    "free_empty_pmd_table",
    "free_empty_pud_table",
    "free_empty_p4d_table",
    "free_empty_tables",
    "__remove_pgd_mapping",
    "vmemmap_free",
    "arch_remove_memory",
)
_ACCOUNTING = (
    "__lruvec_stat_mod_folio",
    "lruvec_stat_mod_folio",
    "__mod_lruvec_page_state",
    "mod_node_page_state",
    "__mod_node_page_state",
    "pagetable_dtor",
    "pagetable_dtor_free",
)


def function_calls(kernel, functions: Iterable[str], targets: Iterable[str]) -> Optional[Dict[str, str]]:
    """Which of ``functions`` contain an arm64 ``BL`` to one of ``targets``:
    {function: target}. None when the code cannot be read (no symbol sizes)."""
    t = kernel.target
    symbol_size = getattr(t, "symbol_size", None)
    if symbol_size is None:
        return None
    addrs = {a: name for name in targets if (a := t.symbol(name)) is not None}
    found: Dict[str, str] = {}
    seen_any = False
    for fn in functions:
        start, size = t.symbol(fn), symbol_size(fn)
        if start is None or not size:
            continue
        try:
            code = t.read_virt(start, size)
        except TargetFault:
            continue
        seen_any = True
        for i, (insn,) in enumerate(struct.iter_unpack("<I", code[: len(code) // 4 * 4])):
            if insn & 0xFC000000 != 0x94000000:  # BL imm26
                continue
            off = insn & 0x03FFFFFF
            if off & 0x02000000:
                off -= 1 << 26
            dest = start + 4 * i + 4 * off
            if dest in addrs:
                found[fn] = addrs[dest]
                break
    return found if seen_any else None


def _static_key_enabled(kernel, name: str) -> Optional[bool]:
    addr = kernel.target.symbol(name)
    if addr is None:
        return None
    try:
        # struct static_key { atomic_t enabled; ... } at offset 0
        return struct.unpack("<i", kernel.target.read_virt(addr, 4))[0] > 0
    except TargetFault:
        return None


def detect_era(kernel) -> Era:
    """The :class:`~mminspect.hotremove.policy.Era` of ``kernel``, each fact
    with its evidence."""
    t = kernel.target
    ev: Dict[str, str] = {}
    era = Era(evidence=ev)
    ver = kernel.version

    # What the allocation sites do is the classifier's to know (one reading
    # of the dump for both): the page-type scheme, v6.16's init_mm ctors,
    # ALLOC_SPLIT_PTLOCKS.
    from mminspect.classify import classifier_for

    feat = classifier_for(kernel).features
    era.page_type = "pgty" if feat.page_type == "pgty" else "inverted"
    era.init_mm_ctor = feat.init_mm_ctor
    era.alloc_split = feat.alloc_split
    for name in ("page_type", "init_mm_ctor", "alloc_split"):
        ev[name] = feat.evidence.get(name, "")

    calls = function_calls(kernel, _HOTREMOVE_FUNCS, _ACCOUNTING)
    if calls:
        fn, target = next(iter(calls.items()))
        ev["dtor_fix"] = f"yes: {fn}() calls {target}() (a pgtable dtor on hot-removed tables)"
    elif calls is not None:
        ev["dtor_fix"] = "no: the hot-remove table-freeing code makes no NR_PAGETABLE accounting call"
    else:
        ev["dtor_fix"] = "unknown: cannot read the hot-remove code (no symbols)"

    era.ptlock_free_null_safe = ver >= (6, 14)
    ev["ptlock_free_null_safe"] = f"inline code, not visible: inferred from OSRELEASE {ver[0]}.{ver[1]} (v6.14)"
    era.free_clears_type = ver >= (6, 17)
    ev["free_clears_type"] = f"inline code, not visible: inferred from OSRELEASE {ver[0]}.{ver[1]} (2dfcd1608f3a9, v6.17)"

    if t.symbol("dump_vma") is not None:
        era.debug_vm, ev["debug_vm"] = True, "symbol dump_vma (built only with CONFIG_DEBUG_VM)"
    else:
        ev["debug_vm"] = "no dump_vma symbol: CONFIG_DEBUG_VM off" if t.has_debug_info else "unknown: no symbols"

    enabled = _static_key_enabled(kernel, "check_pages_enabled")
    if enabled is None:
        era.check_pages = True
        ev["check_pages"] = "no check_pages_enabled key: free-time checks always run (before v6.10)"
    else:
        era.check_pages = enabled or era.debug_vm
        ev["check_pages"] = f"static key check_pages_enabled is {'on' if enabled else 'off'}"

    notifier = next(
        (n for n in ("prevent_bootmem_remove_nb", "prevent_memory_remove_nb") if t.symbol(n) is not None), None
    )
    if notifier:
        era.bootmem_notifier, ev["bootmem_notifier"] = True, f"symbol {notifier} (v5.7+)"
    elif t.has_debug_info:
        era.bootmem_notifier, ev["bootmem_notifier"] = False, "no boot-memory remove notifier: pre-v5.7 arm64"
    else:
        era.bootmem_notifier = ver >= (5, 7)
        ev["bootmem_notifier"] = f"no debug info: inferred from OSRELEASE {ver[0]}.{ver[1]}"
    return era
