"""
The kernel's era, by feature
----------------------------

What the dumped kernel's page-table code does (which levels run a ctor,
whether init_mm tables get a split ptlock, how the Table page type is encoded
...) is decided fact by fact, each by one small detector below, each with the
evidence that decided it: DWARF enumerators, symbols that exist only with a
change, calls in the kernel's own code, type sizes; OSRELEASE only where
nothing in the dump shows the fact, and the evidence then says so
(:func:`from_osrelease`).

:func:`era_facts` holds the facts of one kernel, each detected once, when
first asked for. The classifier reads them as :class:`Features`.

The kernel changes the facts follow:

- ``page_type``: 4ffca5a96678 ("mm: support only one page_type per page"),
  v6.12 (:mod:`mminspect.mm.pagetype`);
- ``pud_ctor``: 55d2a0bd5ead ("mm: add statistics for PUD level pagetable"),
  v6.7;
- ``p4d_ctor``, ``pgd_ctor``: Kevin Brodsky's series "Account page tables at
  all levels", v6.14;
- ``kernel_pte_ctor``: 49f599666420 ("mm: call ctor/dtor for kernel PTEs"),
  v6.16;
- ``init_mm_ctor``, ``efi_upper_ctor``: 5e8eb9aeeda3 ("arm64: mm: always call
  PTE/PMD ctor in __create_pgd_mapping()") and cb5d2be83862 ("arm64: mm: call
  PUD/P4D ctor in __create_pgd_mapping()"), v6.16, seen by c64f46ee1377
  ("arm64: mm: use enum to identify pgtable level");
- ``init_mm_no_ptl``: 8240d8d3c5fb ("mm: skip ptlock_init() for kernel
  PMDs"), v6.16;
- ``image_static``: the v6.9 LPA2 series, whose
  arch/arm64/kernel/pi/map_kernel.c maps the image from ``init_pg_dir``;
- ``split_pte``/``split_pmd``: USE_SPLIT_PTE_PTLOCKS (NR_CPUS >=
  SPLIT_PTLOCK_CPUS, 4; a Kconfig option since 394290cba966, v6.12) and
  ARCH_ENABLE_SPLIT_PMD_PTLOCK (PGTABLE_LEVELS > 2 on arm64);
- ``alloc_split``, ``debug_spinlock``: ``sizeof(spinlock_t)`` and
  ``struct raw_spinlock`` (:mod:`mminspect.mm.struct_page`).
"""

import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from mminspect.arch.insn import function_calls, function_strings
from mminspect.kernel import Kernel
from mminspect.mm.struct_page import PageLayout
from mminspect.target.base import TargetFault, symbol_size

__all__ = ("EraFacts", "Features", "era_facts", "from_osrelease")

#: A fact's value and the evidence that decided it.
Fact = Tuple[Any, str]
#: The accounting calls a ctor makes: what shows one ran in a function's code.
ACCOUNTING = ("__lruvec_stat_mod_folio", "lruvec_stat_mod_folio", "__mod_lruvec_page_state",
              "mod_lruvec_page_state", "mod_node_page_state", "__mod_node_page_state")

_DETECTORS: Dict[str, Callable[["EraFacts"], Fact]] = {}


def detector(name: str):
    """Register the detector of fact ``name``."""
    def register(fn: Callable[["EraFacts"], Fact]) -> Callable[["EraFacts"], Fact]:
        _DETECTORS[name] = fn
        return fn
    return register


def from_osrelease(kernel: Kernel, since: Tuple[int, int]) -> Tuple[bool, str]:
    """Whether OSRELEASE is at least ``since``, and ``OSRELEASE 6.1``: the
    words of every fact no dump shows."""
    ver = kernel.version
    return ver >= since, f"OSRELEASE {ver[0]}.{ver[1]}"


class EraFacts:
    """The era facts of one kernel, each detected once, when first asked
    (:meth:`value`, :meth:`evidence`)."""

    def __init__(self, kernel: Kernel, layout: Optional[PageLayout] = None) -> None:
        self.kernel = kernel
        self.target = kernel.target
        self._layout = layout
        self._facts: Dict[str, Fact] = {}

    @property
    def layout(self) -> PageLayout:
        if self._layout is None:
            self._layout = PageLayout.detect(self.target, self.kernel.vmcoreinfo)
        return self._layout

    def fact(self, name: str) -> Fact:
        if name not in self._facts:
            self._facts[name] = _DETECTORS[name](self)
        return self._facts[name]

    def value(self, name: str) -> Any:
        return self.fact(name)[0]

    def evidence(self, name: str) -> str:
        return self.fact(name)[1]


_CACHE: "weakref.WeakKeyDictionary[Kernel, EraFacts]" = weakref.WeakKeyDictionary()


def era_facts(kernel: Kernel, layout: Optional[PageLayout] = None) -> EraFacts:
    """The :class:`EraFacts` of ``kernel``, one per kernel."""
    facts = _CACHE.get(kernel)
    if facts is None:
        facts = _CACHE[kernel] = EraFacts(kernel, layout)
    return facts


# -- the allocation sites ------------------------------------------------------------


@detector("page_type")
def _page_type(f: EraFacts) -> Fact:
    return f.layout.scheme.name, f.layout.scheme.evidence


def _ctor_by_code(f: EraFacts, fn: str, since: Tuple[int, int], what: str) -> Fact:
    """A ctor seen by the accounting call it makes in ``fn``'s code, else by OSRELEASE."""
    calls = function_calls(f.kernel, [fn], ACCOUNTING)
    later, osrelease = from_osrelease(f.kernel, since)
    vtxt = osrelease.split()[1]
    if calls:
        return True, f"{fn}() calls {calls[fn]}(): {what} is accounted (a ctor runs)"
    if later:
        why = "no direct accounting call seen in " + fn + "()" if calls is not None else f"{fn}() not readable"
        return True, f"{why}; inferred from OSRELEASE {vtxt} >= {since[0]}.{since[1]}"
    return False, (f"{fn}() makes no accounting call and OSRELEASE {vtxt} < {since[0]}.{since[1]}"
                   if calls is not None else f"{fn}() not readable; OSRELEASE {vtxt} < {since[0]}.{since[1]}")


@detector("pud_ctor")
def _pud_ctor(f: EraFacts) -> Fact:
    # 55d2a0bd5ead ("mm: add statistics for PUD level pagetable"), v6.7
    return _ctor_by_code(f, "__pud_alloc", (6, 7), "a new PUD table")


@detector("p4d_ctor")
def _p4d_ctor(f: EraFacts) -> Fact:
    # "Account page tables at all levels", v6.14
    return _ctor_by_code(f, "__p4d_alloc", (6, 14), "a new P4D table")


@detector("pgd_ctor")
def _pgd_ctor(f: EraFacts) -> Fact:
    # "Account page tables at all levels", v6.14
    return _ctor_by_code(f, "pgd_alloc", (6, 14), "a page-sized pgd")


@detector("kernel_pte_ctor")
def _kernel_pte_ctor(f: EraFacts) -> Fact:
    # 49f599666420 ("mm: call ctor/dtor for kernel PTEs"), v6.16
    return _ctor_by_code(f, "__pte_alloc_kernel", (6, 16), "a kernel PTE table")


@detector("init_mm_ctor")
def _init_mm_ctor(f: EraFacts) -> Fact:
    # 5e8eb9aeeda3/cb5d2be83862: __create_pgd_mapping() users on init_mm ctor
    # their tables (hot-add, trampoline, linear-map splits), v6.16
    t = f.target
    if t.constant("TABLE_PTE") is not None:
        return True, "DWARF: arm64 enum pgtable_type (c64f46ee1377, v6.16)"
    if t.symbol("pgd_pgtable_alloc_init_mm") is not None:
        return True, "symbol pgd_pgtable_alloc_init_mm (v6.16)"
    if t.has_debug_info:
        return False, ("no pgd_pgtable_alloc_init_mm: hot-add and trampoline tables come from "
                       "__pgd_pgtable_alloc without a ctor")
    later, osrelease = from_osrelease(f.kernel, (6, 16))
    return later, f"no symbols: inferred from {osrelease}"


@detector("init_mm_no_ptl")
def _init_mm_no_ptl(f: EraFacts) -> Fact:
    # 8240d8d3c5fb ("mm: skip ptlock_init() for kernel PMDs"), with the v6.16 ctors
    if f.value("init_mm_ctor"):
        return True, "ctors skip ptlock_init() for init_mm (8240d8d3c5fb, with the v6.16 ctors)"
    return False, "init_mm PMD ctors (vmalloc) initialise a ptlock"


@detector("efi_upper_ctor")
def _efi_upper_ctor(f: EraFacts) -> Fact:
    # pgd_pgtable_alloc_special_mm() (cb5d2be83862, v6.16): efi_mm's PUD/P4D tables ctor'd
    t = f.target
    if t.symbol("pgd_pgtable_alloc_special_mm") is not None:
        return True, "symbol pgd_pgtable_alloc_special_mm: efi_mm tables ctor'd at every level"
    if t.has_debug_info:
        return False, "no pgd_pgtable_alloc_special_mm: pgd_pgtable_alloc ctors only PTE and PMD tables"
    return f.value("init_mm_ctor"), f"no symbols: {from_osrelease(f.kernel, (6, 16))[1]}"


@detector("image_static")
def _image_static(f: EraFacts) -> Fact:
    # v6.9 (the LPA2 series): arch/arm64/kernel/pi/map_kernel.c maps the image
    # from init_pg_dir pages; before, paging_init() used memblock tables
    t = f.target
    pi = next((s for s in ("__pi_early_map_kernel", "__pi_map_range", "early_map_kernel")
               if t.symbol(s) is not None), None)
    if pi:
        return True, f"symbol {pi}: the kernel maps itself from init_pg_dir pages (v6.9+)"
    if t.has_debug_info:
        return False, "no early_map_kernel: paging_init() maps the image with memblock tables"
    later, osrelease = from_osrelease(f.kernel, (6, 9))
    return later, f"no symbols: inferred from {osrelease}"


# -- split ptlocks --------------------------------------------------------------------


@detector("split_pte")
def _split_pte(f: EraFacts) -> Fact:
    # NR_CPUS >= SPLIT_PTLOCK_CPUS (4): 6.1 mm/Kconfig; 6.12 SPLIT_PTE_PTLOCKS (394290cba966)
    size = symbol_size(f.target, "__per_cpu_offset")
    if not size:
        return True, "NR_CPUS unknown: assumed >= 4 (split PTE ptlocks)"
    nr_cpus = size // 8
    split = nr_cpus >= 4
    return split, f"NR_CPUS = {nr_cpus} (size of __per_cpu_offset)" + (
        " >= 4: split PTE ptlocks" if split else " < 4: mm->page_table_lock")


@detector("split_pmd")
def _split_pmd(f: EraFacts) -> Fact:
    # ARCH_ENABLE_SPLIT_PMD_PTLOCK: PGTABLE_LEVELS > 2 (arch/arm64/Kconfig)
    levels = f.kernel.regime.build_levels
    split = f.value("split_pte") and levels > 2
    return split, (f"{levels} page-table levels: ARCH_ENABLE_SPLIT_PMD_PTLOCK"
                   + ("" if split else " off or no split PTE locks"))


@detector("alloc_split")
def _alloc_split(f: EraFacts) -> Fact:
    return f.layout.ptl_alloc, f.layout.evidence.get("ptl", "")


@detector("debug_spinlock")
def _debug_spinlock(f: EraFacts) -> Fact:
    return f.layout.debug_spinlock, f.layout.evidence.get("debug_spinlock", "")


# -- the removal path --------------------------------------------------------------

#: The hot-remove table-freeing functions, and the calls that show a pgtable
#: dtor in them (Alistair Popple's "arm64: mm: call pagetable dtor when freeing
#: hot-removed page tables", 2026, Fixes: 5e8eb9aeeda3).
HOTREMOVE_FUNCS = ("free_hotplug_pgtable_page", "free_empty_pte_table", "free_empty_pmd_table",
                   "free_empty_pud_table", "free_empty_p4d_table", "free_empty_tables", "__remove_pgd_mapping",
                   "vmemmap_free", "arch_remove_memory")
DTOR_CALLS = ("__lruvec_stat_mod_folio", "lruvec_stat_mod_folio", "__mod_lruvec_page_state", "mod_node_page_state",
              "__mod_node_page_state", "pagetable_dtor", "pagetable_dtor_free")


@detector("dtor_fix")
def _dtor_fix(f: EraFacts) -> Fact:
    calls = function_calls(f.kernel, HOTREMOVE_FUNCS, DTOR_CALLS)
    if calls:
        fn, target = next(iter(calls.items()))
        return True, f"yes: {fn}() calls {target}() (a pgtable dtor on hot-removed tables)"
    if calls is not None:
        return False, "no: the hot-remove table-freeing code makes no NR_PAGETABLE accounting call"
    return None, "unknown: cannot read the hot-remove code (no symbols)"


@detector("ptlock_free_null_safe")
def _ptlock_free_null_safe(f: EraFacts) -> Fact:
    later, osrelease = from_osrelease(f.kernel, (6, 14))
    return later, f"inline code, not visible: inferred from {osrelease} (v6.14)"


@detector("free_clears_type")
def _free_clears_type(f: EraFacts) -> Fact:
    # 2dfcd1608f3a9 ("mm/page_alloc: let page freeing clear any set page type"), v6.17
    later, osrelease = from_osrelease(f.kernel, (6, 17))
    return later, f"inline code, not visible: inferred from {osrelease} (2dfcd1608f3a9, v6.17)"


@detector("debug_vm")
def _debug_vm(f: EraFacts) -> Fact:
    t = f.target
    if t.symbol("dump_vma") is not None:
        return True, "symbol dump_vma (built only with CONFIG_DEBUG_VM)"
    return False, "no dump_vma symbol: CONFIG_DEBUG_VM off" if t.has_debug_info else "unknown: no symbols"


def _static_key_enabled(f: EraFacts, name: str) -> Optional[bool]:
    addr = f.target.symbol(name)
    if addr is None:
        return None
    try:
        # struct static_key { atomic_t enabled; ... } at offset 0
        return int.from_bytes(f.target.read_virt(addr, 4), "little", signed=True) > 0
    except TargetFault:
        return None


@detector("check_pages")
def _check_pages(f: EraFacts) -> Fact:
    # the check_pages_enabled static key (v6.10); before, the free-time checks always ran
    enabled = _static_key_enabled(f, "check_pages_enabled")
    if enabled is None:
        return True, "no check_pages_enabled key: free-time checks always run (before v6.10)"
    return enabled or f.value("debug_vm"), f"static key check_pages_enabled is {'on' if enabled else 'off'}"


@detector("bootmem_notifier")
def _bootmem_notifier(f: EraFacts) -> Fact:
    # bbd6ec605c0f ("arm64/mm: Enable memory hot remove"), v5.7: boot memory is refused
    t = f.target
    notifier = next((n for n in ("prevent_bootmem_remove_nb", "prevent_memory_remove_nb")
                     if t.symbol(n) is not None), None)
    if notifier:
        return True, f"symbol {notifier} (v5.7+)"
    if t.has_debug_info:
        return False, "no boot-memory remove notifier: pre-v5.7 arm64"
    later, osrelease = from_osrelease(f.kernel, (5, 7))
    return later, f"no debug info: inferred from {osrelease}"


@detector("leaf_split_notifier")
def _leaf_split_notifier(f: EraFacts) -> Fact:
    # "arm64/mm: Reject memory removal that splits a kernel leaf mapping" (2026)
    t = f.target
    fn = next((n for n in ("prevent_memory_remove_notifier", "prevent_bootmem_remove_notifier")
               if t.symbol(n) is not None), None)
    strings = function_strings(f.kernel, fn) if fn else None
    if strings is not None:
        found = [x for x in strings if "splits a leaf entry" in x]
        return bool(found), (
            f"yes: {fn}() prints {found[0].strip()!r} ('arm64/mm: Reject memory removal that splits a "
            "kernel leaf mapping')" if found else
            f"no: {fn}() prints no 'splits a leaf entry' message (before 'arm64/mm: Reject memory removal "
            "that splits a kernel leaf mapping')")
    if fn is None and f.value("bootmem_notifier") is False:
        return False, "no: no arm64 memory-remove notifier at all (before v5.7)"
    # A target without the notifier's code (a capture that did not record
    # it) cannot tell: unknown, never "no".
    return None, (f"unknown: cannot read the code of {fn}()" if fn else
                  "unknown: the code of arm64's memory notifier is not in this target")


@detector("block_memmap")
def _block_memmap(f: EraFacts) -> Fact:
    # where a memory block keeps its own memmap (memmap_on_memory): v5.15's
    # nr_vmemmap_pages, v6.6's struct vmem_altmap *
    t = f.target
    if t.offsetof("struct memory_block", "altmap") is not None:
        return "altmap", "DWARF: struct memory_block has altmap (struct vmem_altmap *; v6.6+)"
    if t.offsetof("struct memory_block", "nr_vmemmap_pages") is not None:
        return "nr_vmemmap_pages", ("DWARF: struct memory_block has nr_vmemmap_pages (v5.15..v6.5): "
                                    "memmap_on_memory only for a hot-add of exactly one block "
                                    "(mhp_supports_memmap_on_memory())")
    if t.has_debug_info and t.offsetof("struct memory_block", "state") is not None:
        return "none", "DWARF: struct memory_block has no memmap of its own (before v5.15)"
    return None, "unknown: no DWARF for struct memory_block"


@detector("altmap_per_block")
def _altmap_per_block(f: EraFacts) -> Fact:
    """(value, evidence); no evidence (None) where the block has no memmap
    of its own or it is unknown."""
    kind = f.value("block_memmap")
    if kind == "altmap":
        per_block = f.target.symbol("remove_memory_blocks_and_altmaps") is not None
        return per_block, (
            "symbol remove_memory_blocks_and_altmaps: each block of a hot-add has its own altmap and is "
            "removed by its own arch_remove_memory() ('mm/memory_hotplug: split memmap_on_memory requests "
            "across memblocks')" if per_block else
            "no remove_memory_blocks_and_altmaps symbol: one altmap per hot-add (v6.6..v6.8)")
    if kind == "nr_vmemmap_pages":
        return False, "no: a memmap_on_memory hot-add is one block"
    return (False if kind == "none" else None), None


@detector("memmap_on_memory")
def _memmap_on_memory(f: EraFacts) -> Fact:
    t = f.target
    for name, decode in (("memmap_mode", {0: "0", 1: "1", 2: "force"}), ("memmap_on_memory", {0: "0", 1: "1"})):
        addr = t.symbol(name)
        if addr is None:
            continue
        size = 4 if name == "memmap_mode" else 1
        try:
            value = int.from_bytes(t.read_virt(addr, size), "little")
        except TargetFault:
            return None, f"unknown: cannot read {name}"
        mode = decode.get(value, str(value))
        return mode, f"{name} = {value}: memory_hotplug.memmap_on_memory={mode}"
    return None, "unknown: no memmap_mode/memmap_on_memory symbol"


@dataclass
class Features:
    """What the dumped kernel's allocation sites do, each with the evidence
    that decided it (:attr:`evidence`): the classifier's view of
    :class:`EraFacts`."""

    #: "pgty" / "inverted" / "unknown": how the Table type is encoded.
    page_type: str = "unknown"
    #: pud_alloc_one() runs pagetable_pud_ctor() (55d2a0bd5ead, "mm: add statistics for PUD
    #: level pagetable", v6.7).
    pud_ctor: bool = False
    #: p4d_alloc_one() runs a ctor (v6.14, "Account page tables at all levels").
    p4d_ctor: bool = False
    #: pgd_alloc() ctors a page-sized pgd (v6.14, same series).
    pgd_ctor: bool = False
    #: pte_alloc_one_kernel() runs a ctor (v6.16, 49f599666420).
    kernel_pte_ctor: bool = False
    #: __create_pgd_mapping() users on init_mm ctor their tables
    #: (pgd_pgtable_alloc_init_mm, v6.16): hot-add, trampoline, linear-map splits.
    init_mm_ctor: bool = False
    #: ...and ptlock_init() is skipped for init_mm (8240d8d3c5fb, v6.16).
    init_mm_no_ptl: bool = False
    #: efi_mm's PUD/P4D tables are ctor'd (pgd_pgtable_alloc_special_mm, v6.16).
    efi_upper_ctor: bool = False
    #: Kernel-image tables are static pages after .bss (init_pg_dir, v6.9
    #: LPA2 series: arch/arm64/kernel/pi/map_kernel.c); before, memblock.
    image_static: bool = False
    #: USE_SPLIT_PTE_PTLOCKS / USE_SPLIT_PMD_PTLOCKS.
    split_pte: bool = True
    split_pmd: bool = True
    #: ALLOC_SPLIT_PTLOCKS and DEBUG_SPINLOCK.
    alloc_split: bool = False
    debug_spinlock: bool = False
    evidence: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def detect(cls, kernel: Kernel, layout: Optional[PageLayout] = None) -> "Features":
        """Every fact of :class:`Features`, read afresh (a new classifier
        re-reads the kernel) and kept as the kernel's :func:`era_facts`."""
        facts = _CACHE[kernel] = EraFacts(kernel, layout)
        names = [fl.name for fl in dataclasses.fields(cls) if fl.name != "evidence"]
        return cls(**{n: facts.value(n) for n in names}, evidence={n: facts.evidence(n) for n in names})

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)
