"""
The kernel's era, by feature
----------------------------

:class:`Features` says what the dumped kernel's page-table allocation sites
do (which levels run a ctor, whether init_mm tables get a split ptlock, how
the Table page type is encoded ...), each fact with the evidence that
decided it: DWARF enumerators, symbols that exist only with a change, calls
in the kernel's own code, type sizes; OSRELEASE only where nothing in the
dump shows the fact, and the evidence then says so.

The kernel changes each fact follows:

- ``pud_ctor``: 55d2a0bd5ead ("mm: add statistics for PUD level pagetable"),
  v6.7;
- ``p4d_ctor``, ``pgd_ctor``: Kevin Brodsky's series "Account page tables at
  all levels", v6.14;
- ``kernel_pte_ctor``: 49f599666420 ("mm: call ctor/dtor for kernel PTEs"),
  v6.16;
- ``init_mm_ctor``: 5e8eb9aeeda3 ("arm64: mm: always call PTE/PMD ctor in
  __create_pgd_mapping()") and cb5d2be83862 ("arm64: mm: call PUD/P4D ctor
  in __create_pgd_mapping()"), v6.16, seen by c64f46ee1377 ("arm64: mm: use
  enum to identify pgtable level");
- ``init_mm_no_ptl``: 8240d8d3c5fb ("mm: skip ptlock_init() for kernel
  PMDs"), v6.16;
- ``page_type``: 4ffca5a96678 ("mm: support only one page_type per page"),
  v6.12 (:mod:`mminspect.mm.pagetype`).
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from mminspect.kernel import Kernel
from mminspect.mm.struct_page import PageLayout
from mminspect.target.base import symbol_size

__all__ = ("Features",)


@dataclass
class Features:
    """What the dumped kernel's allocation sites do, each with the evidence
    that decided it (:attr:`evidence`)."""

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
        from mminspect.hotremove.era import function_calls  # the BL scanner (arch/insn.py after the era merge)

        t = kernel.target
        layout = layout or PageLayout.detect(t, kernel.vmcoreinfo)
        f = cls()
        ev = f.evidence
        ver = kernel.version
        vtxt = f"{ver[0]}.{ver[1]}"
        f.page_type = layout.scheme.name
        ev["page_type"] = layout.scheme.evidence
        accounting = ("__lruvec_stat_mod_folio", "lruvec_stat_mod_folio", "__mod_lruvec_page_state",
                      "mod_lruvec_page_state", "mod_node_page_state", "__mod_node_page_state")

        def by_code(attr: str, fn: str, since: Tuple[int, int], what: str) -> None:
            calls = function_calls(kernel, [fn], accounting)
            if calls:
                setattr(f, attr, True)
                ev[attr] = f"{fn}() calls {calls[fn]}(): {what} is accounted (a ctor runs)"
            elif ver >= since:
                setattr(f, attr, True)
                why = "no direct accounting call seen in " + fn + "()" if calls is not None else \
                    f"{fn}() not readable"
                ev[attr] = f"{why}; inferred from OSRELEASE {vtxt} >= {since[0]}.{since[1]}"
            else:
                ev[attr] = (f"{fn}() makes no accounting call and OSRELEASE {vtxt} < {since[0]}.{since[1]}"
                            if calls is not None else
                            f"{fn}() not readable; OSRELEASE {vtxt} < {since[0]}.{since[1]}")

        by_code("pud_ctor", "__pud_alloc", (6, 7), "a new PUD table")
        by_code("p4d_ctor", "__p4d_alloc", (6, 14), "a new P4D table")
        by_code("pgd_ctor", "pgd_alloc", (6, 14), "a page-sized pgd")
        by_code("kernel_pte_ctor", "__pte_alloc_kernel", (6, 16), "a kernel PTE table")

        if t.constant("TABLE_PTE") is not None:
            f.init_mm_ctor = True
            ev["init_mm_ctor"] = "DWARF: arm64 enum pgtable_type (c64f46ee1377, v6.16)"
        elif t.symbol("pgd_pgtable_alloc_init_mm") is not None:
            f.init_mm_ctor = True
            ev["init_mm_ctor"] = "symbol pgd_pgtable_alloc_init_mm (v6.16)"
        elif t.has_debug_info:
            ev["init_mm_ctor"] = ("no pgd_pgtable_alloc_init_mm: hot-add and trampoline tables come from "
                                  "__pgd_pgtable_alloc without a ctor")
        else:
            f.init_mm_ctor = ver >= (6, 16)
            ev["init_mm_ctor"] = f"no symbols: inferred from OSRELEASE {vtxt}"
        f.init_mm_no_ptl = f.init_mm_ctor
        ev["init_mm_no_ptl"] = ("ctors skip ptlock_init() for init_mm (8240d8d3c5fb, with the v6.16 ctors)"
                                if f.init_mm_ctor else "init_mm PMD ctors (vmalloc) initialise a ptlock")
        if t.symbol("pgd_pgtable_alloc_special_mm") is not None:
            f.efi_upper_ctor = True
            ev["efi_upper_ctor"] = "symbol pgd_pgtable_alloc_special_mm: efi_mm tables ctor'd at every level"
        else:
            f.efi_upper_ctor = f.init_mm_ctor and not t.has_debug_info
            ev["efi_upper_ctor"] = ("no pgd_pgtable_alloc_special_mm: pgd_pgtable_alloc ctors only PTE and "
                                    "PMD tables" if t.has_debug_info else f"no symbols: OSRELEASE {vtxt}")
        pi = next((s for s in ("__pi_early_map_kernel", "__pi_map_range", "early_map_kernel")
                   if t.symbol(s) is not None), None)
        if pi:
            f.image_static = True
            ev["image_static"] = f"symbol {pi}: the kernel maps itself from init_pg_dir pages (v6.9+)"
        elif t.has_debug_info:
            ev["image_static"] = "no early_map_kernel: paging_init() maps the image with memblock tables"
        else:
            f.image_static = ver >= (6, 9)
            ev["image_static"] = f"no symbols: inferred from OSRELEASE {vtxt}"

        # Split ptlocks: NR_CPUS >= SPLIT_PTLOCK_CPUS (4) [6.1 mm/Kconfig; 6.12
        # SPLIT_PTE_PTLOCKS]; PMD also needs PGTABLE_LEVELS > 2 (arm64 Kconfig).
        nr_cpus = _nr_cpus(kernel)
        levels = kernel.regime.build_levels
        if nr_cpus is not None:
            f.split_pte = nr_cpus >= 4
            ev["split_pte"] = f"NR_CPUS = {nr_cpus} (size of __per_cpu_offset)" + (
                " >= 4: split PTE ptlocks" if f.split_pte else " < 4: mm->page_table_lock")
        else:
            ev["split_pte"] = "NR_CPUS unknown: assumed >= 4 (split PTE ptlocks)"
        f.split_pmd = f.split_pte and levels > 2
        ev["split_pmd"] = (f"{levels} page-table levels: ARCH_ENABLE_SPLIT_PMD_PTLOCK"
                           + ("" if f.split_pmd else " off or no split PTE locks"))
        f.alloc_split = layout.ptl_alloc
        ev["alloc_split"] = layout.evidence.get("ptl", "")
        f.debug_spinlock = layout.debug_spinlock
        ev["debug_spinlock"] = layout.evidence.get("debug_spinlock", "")
        return f

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def _nr_cpus(kernel: Kernel) -> Optional[int]:
    size = symbol_size(kernel.target, "__per_cpu_offset")
    return size // 8 if size else None
