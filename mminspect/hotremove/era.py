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
2026 dtor fix shows itself. The removal path's facts are read the same way:
the C strings arm64's memory notifier loads (:func:`function_strings`: its
leaf-split check is inlined and has no symbol), the DWARF of ``struct
memory_block`` (its own memmap), and the ``memmap_on_memory`` parameter's
variable. Only facts no dump can show fall back to OSRELEASE, and their
evidence says so; a fact the target cannot show at all stays None
("unknown"), and the rules that need it say so instead of passing.
"""

import struct
from typing import Dict, Optional

from mminspect.arch.insn import function_calls, function_strings
from mminspect.hotremove.policy import Era
from mminspect.target.base import TargetFault


__all__ = ("detect_era", "function_calls", "function_strings")

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


def _memory_notifier(kernel) -> Optional[str]:
    return next((n for n in ("prevent_memory_remove_notifier", "prevent_bootmem_remove_notifier")
                 if kernel.target.symbol(n) is not None), None)


def _detect_removal_path(kernel, era: Era, ev: Dict[str, str]) -> None:
    """The era facts of the offline/remove path beyond the page tables:
    arm64's leaf-split refusal, and how memory blocks carry their own memmap."""
    t = kernel.target
    fn = _memory_notifier(kernel)
    strings = function_strings(kernel, fn) if fn else None
    if strings is not None:
        found = [x for x in strings if "splits a leaf entry" in x]
        era.leaf_split_notifier = bool(found)
        ev["leaf_split_notifier"] = (
            f"yes: {fn}() prints {found[0].strip()!r} ('arm64/mm: Reject memory removal that splits a "
            "kernel leaf mapping')" if found else
            f"no: {fn}() prints no 'splits a leaf entry' message (before 'arm64/mm: Reject memory removal "
            "that splits a kernel leaf mapping')")
    elif fn is None and era.bootmem_notifier is False:
        era.leaf_split_notifier = False
        ev["leaf_split_notifier"] = "no: no arm64 memory-remove notifier at all (before v5.7)"
    else:
        ev["leaf_split_notifier"] = (f"unknown: cannot read the code of {fn}()" if fn else
                                     "unknown: the code of arm64's memory notifier is not in this target")

    if t.offsetof("struct memory_block", "altmap") is not None:
        era.block_memmap = "altmap"
        per_block = t.symbol("remove_memory_blocks_and_altmaps") is not None
        era.altmap_per_block = per_block
        ev["block_memmap"] = "DWARF: struct memory_block has altmap (struct vmem_altmap *; v6.6+)"
        ev["altmap_per_block"] = (
            "symbol remove_memory_blocks_and_altmaps: each block of a hot-add has its own altmap and is "
            "removed by its own arch_remove_memory() ('mm/memory_hotplug: split memmap_on_memory requests "
            "across memblocks')" if per_block else
            "no remove_memory_blocks_and_altmaps symbol: one altmap per hot-add (v6.6..v6.8)")
    elif t.offsetof("struct memory_block", "nr_vmemmap_pages") is not None:
        era.block_memmap, era.altmap_per_block = "nr_vmemmap_pages", False
        ev["block_memmap"] = ("DWARF: struct memory_block has nr_vmemmap_pages (v5.15..v6.5): memmap_on_memory "
                              "only for a hot-add of exactly one block (mhp_supports_memmap_on_memory())")
        ev["altmap_per_block"] = "no: a memmap_on_memory hot-add is one block"
    elif t.has_debug_info and t.offsetof("struct memory_block", "state") is not None:
        era.block_memmap, era.altmap_per_block = "none", False
        ev["block_memmap"] = "DWARF: struct memory_block has no memmap of its own (before v5.15)"
    else:
        ev["block_memmap"] = "unknown: no DWARF for struct memory_block"

    for name, decode in (("memmap_mode", {0: "0", 1: "1", 2: "force"}), ("memmap_on_memory", {0: "0", 1: "1"})):
        addr = t.symbol(name)
        if addr is None:
            continue
        size = 4 if name == "memmap_mode" else 1
        try:
            value = int.from_bytes(t.read_virt(addr, size), "little")
        except TargetFault:
            ev["memmap_on_memory"] = f"unknown: cannot read {name}"
            break
        era.memmap_on_memory = decode.get(value, str(value))
        ev["memmap_on_memory"] = f"{name} = {value}: memory_hotplug.memmap_on_memory={era.memmap_on_memory}"
        break
    else:
        ev["memmap_on_memory"] = "unknown: no memmap_mode/memmap_on_memory symbol"


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
    _detect_removal_path(kernel, era, ev)
    return era
