"""
Expected origins: the kernel's allocation sites, era by era
-----------------------------------------------------------

:func:`expected_origins` says which origins the kernel's own allocation sites
give a table, for (era, root, region, level); every table whose observed
origin is not among them is a finding. :func:`allocator` names the kernel
function that most likely allocated a table.
"""

from typing import TYPE_CHECKING, Optional

import numpy as np

from mminspect.classify.facts import KernelFacts
from mminspect.classify.model import (
    B_CTOR,
    B_IMAGE,
    B_MEMBLOCK,
    B_NOCTOR,
    B_SLAB,
    K_EFI,
    K_TRAMP,
    K_USER,
    O_ALTMAP,
    O_CTOR,
    O_IMAGE,
    O_MEMBLOCK,
    O_SLAB,
    O_UNKNOWN,
    R_FIXMAP,
    R_KASAN,
    R_KIMAGE,
    R_LINEAR,
    R_MODULES,
    R_OTHER,
    R_PCI,
    R_VMALLOC,
    R_VMEMMAP,
)
from mminspect.kernel import Kernel, Root
from mminspect.mm.blocks import MAPS_BOOT, MAPS_HOT, MAPS_MIXED, MAPS_NONE

if TYPE_CHECKING:
    from mminspect.classify.result import Classification

__all__ = ("allocator", "expected_origins")


def _pgd_bytes(kernel: Kernel) -> int:
    r = kernel.regime
    top_build = 4 - r.build_levels
    return (1 << (r.va_bits - r.shift(top_build))) * 8


def expected_origins(c: KernelFacts, kind: str, root: Root, level: np.ndarray, region: np.ndarray,
              maps: np.ndarray, is_root: np.ndarray) -> np.ndarray:
    """Bitmask of the origins the kernel's allocation sites give each table,
    in the era :class:`~mminspect.era.Features` detected. The sites:
    arch/arm64/mm/mmu.c ``early_pgtable_alloc()`` (memblock, boot) and
    ``__pgd_pgtable_alloc()``/``pgd_pgtable_alloc_init_mm()`` (hot-add, the
    trampoline, linear-map splits), mm/sparse-vmemmap.c
    ``vmemmap_alloc_block()``, include/asm-generic/pgalloc.h
    ``pte_alloc_one_kernel()``/``pmd_alloc_one()``/``pud_alloc_one()`` for
    vmalloc and ioremap, ``pgd_alloc()`` for efi_mm and tasks."""
    F = c.features
    r = c.kernel.regime
    n = len(level)
    exp = np.zeros(n, dtype=np.int64)
    pte = level == 3
    pmd = level == 2
    pud = (level == 1) & ~is_root
    p4d = (level == 0) & ~is_root
    ctor_if = lambda cond: B_CTOR if cond else B_NOCTOR  # noqa: E731
    if kind in (K_EFI, K_USER):
        # pgd_alloc(): a kmem_cache object when PGD_SIZE < PAGE_SIZE, but a
        # whole page when the top level is folded at run time
        # (pgdir_is_page_size(): !pgtable_l5_enabled() / !pgtable_l4_enabled()).
        if _pgd_bytes(c.kernel) < r.page_size and not r.folded:
            exp[is_root] = B_SLAB
        else:
            exp[is_root] = ctor_if(F.pgd_ctor)
        exp[pte | pmd] = B_CTOR
        if kind == K_EFI:
            exp[pud | p4d] = ctor_if(F.efi_upper_ctor)
        else:
            exp[pud] = ctor_if(F.pud_ctor)
            exp[p4d] = ctor_if(F.p4d_ctor)
        return exp
    exp[is_root] = B_IMAGE
    sub = ~is_root
    if kind == K_TRAMP:
        exp[sub] = ctor_if(F.init_mm_ctor)
        return exp
    # init_mm: boot-time owners first (the image and the fixmap tables exist
    # before anything else can allocate there).
    kim = sub & ((region & R_KIMAGE) != 0)
    fix = sub & ((region & R_FIXMAP) != 0)
    exp[kim] |= B_IMAGE if F.image_static else B_MEMBLOCK
    exp[fix] |= B_IMAGE
    rest = sub & ~kim & ~fix
    hot = ctor_if(F.init_mm_ctor)
    lin = rest & ((region & R_LINEAR) != 0)
    boot_lin = B_MEMBLOCK | (B_CTOR if F.init_mm_ctor else 0)  # >= v6.16: BBML2 splits of the boot map
    exp[lin & (maps == MAPS_BOOT)] |= boot_lin
    exp[lin & (maps == MAPS_HOT)] |= hot
    exp[lin & ((maps == MAPS_MIXED) | (maps == MAPS_NONE) | (maps < 0))] |= boot_lin | hot
    vmm = rest & ((region & R_VMEMMAP) != 0)
    exp[vmm & (maps == MAPS_BOOT)] |= B_MEMBLOCK
    exp[vmm & (maps == MAPS_HOT)] |= B_NOCTOR
    exp[vmm & ((maps == MAPS_MIXED) | (maps == MAPS_NONE) | (maps < 0))] |= B_MEMBLOCK | B_NOCTOR
    vm = rest & ((region & (R_MODULES | R_VMALLOC | R_PCI | R_OTHER)) != 0)
    exp[vm & pte] |= ctor_if(F.kernel_pte_ctor)
    exp[vm & pmd] |= B_CTOR
    exp[vm & pud] |= ctor_if(F.pud_ctor)
    exp[vm & p4d] |= ctor_if(F.p4d_ctor)
    # KASAN's shadow: kasan_init() maps the shadow of memory and of the image
    # with memblock tables (kasan_alloc_zeroed_page(); kasan_populate_early_shadow()
    # before slab), everything else is vmalloc's page-table allocation
    # (KASAN_VMALLOC's kasan_populate_vmalloc(), the hot-plug notifier's
    # __vmalloc_node_range() of a new block's shadow). The shared early
    # shadow tables themselves are the image's (see classify_walk).
    kas = rest & ((region & R_KASAN) != 0)
    exp[kas] |= B_MEMBLOCK
    exp[kas & pte] |= ctor_if(F.kernel_pte_ctor)
    exp[kas & pmd] |= B_CTOR
    exp[kas & pud] |= ctor_if(F.pud_ctor)
    exp[kas & p4d] |= ctor_if(F.p4d_ctor)
    return exp


def allocator(cls: "Classification", i: int, image_symbol: Optional[str]) -> str:
    """The kernel function that most likely allocated table ``i``."""
    F = cls.features
    r = cls.kernel.regime
    o = int(cls.origin[i])
    lvl = int(cls.level[i])
    name = r.level_name(lvl)
    reg = int(cls.region[i])
    is_root = lvl == r.top_level and int(cls.phys[i]) == cls.root.phys
    if o == O_IMAGE:
        return image_symbol or "kernel image (.bss/.data)"
    if o == O_ALTMAP:
        return "altmap (memmap_on_memory): no table allocator uses it"
    if o == O_UNKNOWN:
        return "?"
    if o == O_SLAB:
        return "pgd_alloc() from pgd_cache"
    if cls.kind in (K_EFI, K_USER):
        if is_root:
            return "pgd_alloc()"
        if cls.kind == K_EFI:
            special = "pgd_pgtable_alloc_special_mm" if F.efi_upper_ctor else "pgd_pgtable_alloc"
            return f"{special}() (efi_create_mapping)"
        return {"PTE": "pte_alloc_one()", "PMD": "pmd_alloc_one()", "PUD": "pud_alloc_one()",
                "P4D": "p4d_alloc_one()"}.get(name, "?")
    if cls.kind == K_TRAMP:
        return ("pgd_pgtable_alloc_init_mm()" if o == O_CTOR else "__pgd_pgtable_alloc()") + \
            " (map_entry_trampoline)"
    if o == O_MEMBLOCK:
        if reg & R_VMEMMAP:
            return "vmemmap_alloc_block() at boot (memblock_alloc_try_nid_raw)"
        if reg & R_KIMAGE:
            return "early_pgtable_alloc() (map_kernel)"
        if reg & R_LINEAR:
            return "early_pgtable_alloc() (map_mem)"
        if reg & R_KASAN:
            return "kasan_alloc_zeroed_page() (kasan_init) or early_alloc() (kasan_populate_early_shadow)"
        return "memblock"
    if reg & R_LINEAR:
        if o == O_CTOR:
            return "pgd_pgtable_alloc_init_mm() (arch_add_memory or a linear-map split)"
        return "__pgd_pgtable_alloc() (arch_add_memory)"
    if reg & R_VMEMMAP:
        return "vmemmap_alloc_block() after boot (alloc_pages_node)"
    ctor = o == O_CTOR
    return {"PTE": "pte_alloc_one_kernel()", "PMD": "pmd_alloc_one()",
            "PUD": "pud_alloc_one()" if ctor else "__pud_alloc_one()",
            "P4D": "p4d_alloc_one()"}.get(name, "?") + " (vmalloc/ioremap)"
