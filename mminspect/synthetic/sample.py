"""Realistic-looking synthetic kernels for every regime (seeded).

:func:`make_sample` lays out RAM, a KASLR-shifted kernel image (text ROX with GP,
rodata RO, data RW, tables from the image like ``init_pg_dir``), a linear map using
every legal leaf kind (pages, contiguous pages, PMD blocks, contiguous PMDs, PUD
blocks with 4K), holes, vmalloc and ioremap mappings (device nGnRE/nGnRnE, normal-NC,
tagged), a huge vmap, modules, vmemmap (PMD blocks with 4K, base pages otherwise),
PCI I/O, a fixmap with static ``bm_*`` tables, and an ``efi_mm``-style TTBR0 root
(a slab object when the pgd is smaller than a page).  With ``oddities=True`` it adds
a shared table, a loop, a table descriptor pointing outside RAM, invalid-but-nonzero
entries and two table pages left out of the dump.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .builder import AUTO, Builder, BuiltKernel, LeafKind
from .encode import (
    PAGE_KERNEL,
    PAGE_KERNEL_RO,
    PAGE_KERNEL_ROX,
    PAGE_KERNEL_TAGGED,
    PAGE_READONLY,
    PAGE_SHARED,
    PROT_DEVICE_nGnRE,
    PROT_DEVICE_nGnRnE,
    PROT_NORMAL_NC,
    PTE_AF,
    PTE_NG,
    TABLE_KERNEL_NOEXEC,
)
from .regime import SZ_4K, SZ_64K, U64, Regime

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Region:
    """A named VA range of a sample: ``expect`` is "mapped", "hole" (deliberately
    unmapped) or "mixed"."""

    name: str
    root: str
    va: int
    size: int
    expect: str = "mixed"

    @property
    def va_end(self) -> int:
        return self.va + self.size


def default_ram(regime: Regime) -> list[tuple[int, int]]:
    """RAM banks that let every leaf kind appear and, with 52-bit PA, put memory (and
    the table pool) above 2**48 (above 2**50 with LPA2)."""
    r = regime
    if r.page_size == SZ_64K:
        base, size = 0x4_0000_0000, 48 * GiB        # 16 GiB aligned: room for a cont PMD run
    else:
        base, size = 0x4000_0000, 4 * GiB
    banks = [(base, size)]
    if r.pa_bits == 52:
        # OA bits 51, 50 and 48 set (LPA2: 9:8 and 49:48; LPA: 15:12 = 0xb)
        high = 0x000D_0000_0000_0000 if r.lpa2_active else 0x000B_0000_0000_0000
        # the whole RAM must fit the linear map
        if (high + 4 * GiB - base) < r.linear_size and high + 4 * GiB <= r.max_pa:
            banks.append((high, 4 * GiB))
        else:
            # 64K with LPA but a small linear map: one bank straddling 2**48
            banks = [((1 << 48) - 16 * GiB, 32 * GiB)]
    return banks


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def make_sample(regime: Regime, seed: int = 0, *, oddities: bool = True, kaslr: bool = True,
                ram: list[tuple[int, int]] | None = None) -> BuiltKernel:
    """Build a seeded, realistic-looking synthetic kernel for ``regime``.

    The result has ``built.regions`` (list of :class:`Region`) and ``built.pattern_pages``
    (PAs filled with :meth:`Builder.fill_pattern`) in addition to the usual ground truth.
    """
    rng = random.Random(f"{regime.name}:{seed}")
    r = regime
    ps = r.page_size
    ram = default_ram(r) if ram is None else ram
    pmd = r.entry_span(2)
    pte_span = r.table_span(3)

    if kaslr and r.kaslr_offset == 0:
        r = r.replace(kaslr_offset=rng.randrange(0, 512) * 2 * MiB, name=r.name)
    if r.phys_offset is None and seed % 2 == 1:
        # linear-map randomisation: memstart_addr lowered by a multiple of the
        # alignment that keeps the biggest leaf kinds possible
        b0 = Builder(r, ram)
        align = max(r.memstart_align, r.entry_span(2) * r.cont_pmds)
        hi = max(s + n for s, n in ram)
        room = ((r.page_end - r.page_offset) & U64) - (hi - b0.phys_offset)
        k = rng.randrange(0, max(1, min(room // align, 8)))
        if k:
            r = r.replace(phys_offset=b0.phys_offset - k * align, name=r.name)

    b = Builder(r, ram)
    regions: list[Region] = []
    patterns: list[int] = []

    # data allocator: pages in bank 0 above the image, for leaf targets
    data_cur = [_align_up(b.image_pa + b.image_size, max(pmd, 2 * MiB) if ps == SZ_4K else ps)]

    def data(n_bytes: int, align: int = ps) -> int:
        pa = _align_up(data_cur[0], align)
        data_cur[0] = pa + n_bytes
        if not b.in_ram(pa, n_bytes):
            raise MemoryError("sample data allocator out of bank 0")
        return pa

    # ---- kernel image (text ROX+GP, rodata RO, data RW), tables from the image -------
    seg = 64 << 10 if ps < SZ_64K else ps
    isz = b.image_size
    t_end = (isz * 2 // 5) // seg * seg
    r_end = (isz * 3 // 5) // seg * seg
    kva = b.kimage_va
    b.map(kva, b.image_pa, t_end, AUTO, PAGE_KERNEL_ROX.with_(gp=True), pool="image", label="text")
    b.map(kva + t_end, b.image_pa + t_end, r_end - t_end, AUTO, PAGE_KERNEL_RO, pool="image",
          label="rodata")
    b.map(kva + r_end, b.image_pa + r_end, isz - r_end, AUTO, PAGE_KERNEL, pool="image", label="data")
    regions.append(Region("kimage", "swapper", kva, isz, "mapped"))
    b.add_symbol("_text", kva)

    # ---- linear map ------------------------------------------------------------------
    lin_tp = TABLE_KERNEL_NOEXEC
    first = True
    for bs, bn in b.ram:
        delta = (b.phys_to_virt(bs) - bs) & U64
        cur = bs
        end = bs + bn
        # The pool pages at the top of the last bank are mapped too; fine (realistic).

        def put(kind, units: int, prot=PAGE_KERNEL, **kw):
            nonlocal cur
            if kind not in (AUTO, "hole") and not b._kind_allowed(LeafKind(kind)):
                return
            unit = b._unit(LeafKind(kind)) if kind not in (AUTO, "hole") else ps
            if (delta % unit) != 0:
                return
            start = _align_up(cur, unit)
            size = units * unit
            if start + size > end:
                return
            if start > cur:
                b.map(b.phys_to_virt(cur), cur, start - cur, AUTO, PAGE_KERNEL, table_prot=lin_tp,
                      label="linear")
            if kind == "hole":
                regions.append(Region("linear-hole", "swapper", b.phys_to_virt(start), size, "hole"))
            else:
                b.map(b.phys_to_virt(start), start, size, kind, prot, table_prot=lin_tp,
                      label=f"linear-{kind}", **kw)
            cur = start + size

        if first:
            # page granular (rodata_full style) with a one-page nomap hole
            n = 2 * r.entries_per_table if r.start_level < 3 else 8
            put(LeafKind.PAGE.value, n // 2 - 3)
            put("hole", 1)
            put(LeafKind.PAGE.value, n // 2 + 2)
            put(LeafKind.CONT_PAGE.value, 2, PAGE_KERNEL_TAGGED)
            put(LeafKind.CONT_PAGE.value, 1)
            put("hole", r.cont_ptes)              # a nomap carve-out
            put(LeafKind.PMD.value, 3)
            put("hole", 1 * (pmd // ps))           # a whole PMD-sized hole
            put(LeafKind.PMD.value, 1, PAGE_KERNEL_RO)
            put(LeafKind.CONT_PMD.value, 1)
            if r.page_size == SZ_4K:
                put(LeafKind.PUD.value, 1)
            first = False
        else:
            # high bank: some page-granular tables so PTEs carry high OA bits
            put(LeafKind.PAGE.value, min(r.entries_per_table + 5, bn // ps // 4))
            put(LeafKind.CONT_PAGE.value, 1)
        if cur < end:
            b.map(b.phys_to_virt(cur), cur, end - cur, AUTO, PAGE_KERNEL, table_prot=lin_tp,
                  label="linear")
        regions.append(Region("linear", "swapper", b.phys_to_virt(bs), bn, "mixed"))

    # ---- vmalloc / ioremap ---------------------------------------------------------------
    vcur = _align_up(kva + isz + 64 * MiB, pte_span)
    vend = r.vmalloc_end

    def vm_area(size: int, align: int = ps, guard: int = ps) -> int:
        nonlocal vcur
        va = _align_up(vcur + guard, align)
        vcur = va + size
        if vcur > vend:
            raise MemoryError("vmalloc area exhausted")
        return va

    def ram_page(n=1, align=ps):
        return data(n * ps, align)

    vstart = vcur
    for i in range(4):
        n = rng.randint(1, 5)
        va = vm_area(n * ps)
        prot = [PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_KERNEL.with_(ng=True), PAGE_KERNEL][i]
        # vmalloc pages are scattered in RAM
        for j in range(n):
            pa = ram_page()
            b.map(va + j * ps, pa, ps, LeafKind.PAGE, prot, label="vmalloc")
            if i == 0 and j == 0:
                b.fill_pattern(pa)
                patterns.append(pa)
    first_vm_va = vstart + ps
    b.map(vm_area(ps), 0x0900_0000, ps, LeafKind.PAGE, PROT_DEVICE_nGnRE, label="ioremap-uart")
    b.map(vm_area(4 * ps), 0x0800_0000, 4 * ps, LeafKind.PAGE, PROT_DEVICE_nGnRnE, label="ioremap-gic")
    b.map(vm_area(2 * ps), 0x1000_0000, 2 * ps, LeafKind.PAGE, PROT_NORMAL_NC, label="ioremap-wc")
    b.map(vm_area(2 * ps), ram_page(2), 2 * ps, LeafKind.PAGE, PAGE_KERNEL_TAGGED, label="vmalloc-tagged")
    if pmd <= 512 * MiB:
        va = vm_area(pmd, align=pmd)
        b.map(va, data(pmd, pmd), pmd, LeafKind.PMD, PAGE_KERNEL, label="vmap-huge")
    regions.append(Region("vmalloc", "swapper", vstart, vcur - vstart, "mixed"))
    hole_va = vm_area(3 * ps)
    regions.append(Region("vmalloc-hole", "swapper", hole_va, 3 * ps, "hole"))

    # ---- modules -----------------------------------------------------------------------
    mva = _align_up(r.modules_vaddr + rng.randrange(0, 64) * ps * 16, pte_span) + 3 * ps
    if mva + 8 * ps < r.modules_end:
        b.map(mva, ram_page(3), 3 * ps, LeafKind.PAGE, PAGE_KERNEL_ROX.with_(gp=True), label="module-text")
        b.map(mva + 3 * ps, ram_page(2), 2 * ps, LeafKind.PAGE, PAGE_KERNEL, label="module-data")
        regions.append(Region("modules", "swapper", mva, 5 * ps, "mapped"))

    # ---- fixmap (static tables in the image) --------------------------------------
    fix_top = r.fixaddr_top
    fix0 = fix_top - 8 * ps
    for lv in range(r.start_level + 1, 4):
        b.ensure_table("swapper", fix0, lv, pool="image",
                       symbol={1: "bm_pud", 2: "bm_pmd", 3: "bm_pte"}[lv] if lv > 0 else "bm_p4d")
    b.map(fix_top - ps, 0x0900_0000, ps, LeafKind.PAGE, PROT_DEVICE_nGnRE, pool="image", label="fix-earlycon")
    fdt = ram_page(2)
    b.map(fix_top - 4 * ps, fdt, 2 * ps, LeafKind.PAGE, PAGE_KERNEL_RO, pool="image", label="fix-fdt")
    b.map(fix_top - 6 * ps, ram_page(), ps, LeafKind.PAGE, PROT_NORMAL_NC, pool="image", label="fix-nc")
    regions.append(Region("fixmap", "swapper", fix0, 8 * ps, "mixed"))

    # ---- PCI I/O
    b.map(r.pci_io_start, 0x3EFF_0000, ps, LeafKind.PAGE, PROT_DEVICE_nGnRE, label="pci-io")
    regions.append(Region("pci-io", "swapper", r.pci_io_start, 2 * ps, "mixed"))

    # ---- vmemmap (struct pages of the first GiB of bank 0) --------------------------------
    bs0 = b.ram[0][0]
    vm0 = (r.vmemmap_start + ((bs0 - b.phys_offset) >> r.page_shift) * 64) & U64
    vsize = (min(GiB, b.ram[0][1]) >> r.page_shift) * 64
    vsize = _align_up(vsize, pmd if ps == SZ_4K else ps)
    if ps == SZ_4K and vm0 % pmd == 0:
        b.map(vm0, data(vsize, pmd), vsize, LeafKind.PMD, PAGE_KERNEL, label="vmemmap")
    else:
        for off in range(0, vsize, ps):
            b.map(vm0 + off, ram_page(), ps, LeafKind.PAGE, PAGE_KERNEL, label="vmemmap")
    regions.append(Region("vmemmap", "swapper", vm0, vsize, "mapped"))

    # ---- efi_mm-style TTBR0 root -------------------------------------------------------------
    b.add_root("efi", ttbr=0)
    eva = _align_up(0x2000_0000 + rng.randrange(0, 16) * pte_span, pte_span)
    code = ram_page(4)
    b.map(eva, code, 4 * ps, LeafKind.PAGE, PAGE_KERNEL_ROX.with_(gp=True), root="efi", label="efi-code")
    edata = ram_page(8)
    b.map(eva + 4 * ps, edata, 8 * ps, LeafKind.PAGE, PAGE_KERNEL.with_(ng=True), root="efi", label="efi-data")
    b.fill_pattern(edata)
    patterns.append(edata)
    b.map(eva + 16 * ps, 0x0901_0000, ps, LeafKind.PAGE, PROT_DEVICE_nGnRE, root="efi", label="efi-rtc")
    b.map(eva + 20 * ps, ram_page(), ps, LeafKind.PAGE, PAGE_SHARED, root="efi", label="user-rw")
    b.map(eva + 21 * ps, ram_page(), ps, LeafKind.PAGE, PAGE_READONLY, root="efi", label="user-ro")
    regions.append(Region("efi", "efi", eva, 24 * ps, "mixed"))
    if pmd <= 512 * MiB:
        bva = _align_up(eva + 64 * pmd, pmd)
        b.map(bva, data(pmd, pmd), pmd, LeafKind.PMD, PAGE_KERNEL, root="efi", label="efi-block")
        regions.append(Region("efi-block", "efi", bva, pmd, "mapped"))
    regions.append(Region("efi-hole", "efi", eva + 24 * ps, 8 * ps, "hole"))

    # ---- oddities ------------------------------------------------------------------------------
    if oddities:
        # shared table: a second PMD entry pointing at the first vmalloc PTE table
        src = b.table_at("swapper", first_vm_va, 3)
        sva = vm_area(pte_span, align=pte_span, guard=pte_span)
        b.link_table("swapper", sva, 2, src)
        regions.append(Region("shared", "swapper", sva, pte_span, "mixed"))
        # loop: a level-2 entry pointing back at the root
        lva = vm_area(pte_span, align=pte_span, guard=pte_span)
        b.link_table("swapper", lva, 2, b.root("swapper").pa)
        regions.append(Region("loop", "swapper", lva, pte_span, "mixed"))
        # table descriptor pointing outside RAM
        ova = vm_area(pte_span, align=pte_span, guard=pte_span)
        b.set_table_outside_ram("swapper", ova, 2, 0x1_0000)
        regions.append(Region("outside", "swapper", ova, pte_span, "mixed"))
        # invalid but non-zero entries in a fresh PTE table
        iva = vm_area(pte_span, align=pte_span, guard=pte_span)
        b.map(iva, ram_page(), ps, LeafKind.PAGE, PAGE_KERNEL, label="before-raw")
        enc = b.enc
        b.set_raw("swapper", iva + ps, 3, enc.oa(ram_page()) | 0b01 | PTE_AF,
                  note="01 at level 3 is reserved (invalid)")
        b.set_raw("swapper", iva + 2 * ps, 3, enc.oa(ram_page()) | PTE_AF | PTE_NG,
                  note="valid bit clear, attributes set (PROT_NONE/swap style)")
        b.set_raw("swapper", iva + 3 * ps, 3, 0b10, note="type 10: invalid")
        regions.append(Region("raw", "swapper", iva, 4 * ps, "mixed"))
        # table pages left out of the dump
        for mode in ("absent", "zero"):
            ava = vm_area(pte_span, align=pte_span, guard=pte_span)
            b.map(ava, ram_page(2), 2 * ps, LeafKind.PAGE, PAGE_KERNEL, label=f"omitted-{mode}")
            b.omit_table(b.table_at("swapper", ava, 3), mode)
            regions.append(Region(f"omitted-{mode}", "swapper", ava, 4 * ps, "mixed"))

    built = b.finish()
    built.regions = regions
    built.pattern_pages = patterns
    return built


def make_linear_kernel(regime: Regime, linear_size: int, *, ram_base: int | None = None,
                       with_efi: bool = True) -> BuiltKernel:
    """A kernel whose linear map is ``linear_size`` bytes of page-granular mappings
    (rodata_full style), built with the lazy fast path (:meth:`Builder.map_uniform`).

    Meant for benchmarks: 16 GiB .. 1 TiB linear maps (up to 524,288 PTE tables with
    4K pages) build in milliseconds and stream out at disk speed.  RAM is one bank:
    the linear part, then room for the PTE tables (allocated contiguously at the top
    of the bank and mapped with blocks).
    """
    r = regime
    ps = r.page_size
    span = r.table_span(3)
    if linear_size % span:
        raise ValueError(f"linear_size must be a multiple of {span:#x}")
    n_tables = linear_size // span
    upper = max(r.entries_per_table, 64)            # PMD/PUD tables and the image's
    pool = _align_up((n_tables + upper) * ps + 64 * MiB, max(span, r.memstart_align))
    base = (0x8000_0000 if ps != SZ_64K else 0x4_0000_0000) if ram_base is None else ram_base
    b = Builder(r, [(base, linear_size + pool)], image_pa=base + linear_size + pool - 32 * MiB
                if pool > 64 * MiB else None,
                table_pool=(base + linear_size, base + linear_size + pool - 32 * MiB))
    lin = b.phys_to_virt(base)
    b.map_uniform(lin, base, linear_size, PAGE_KERNEL, table_prot=TABLE_KERNEL_NOEXEC)
    b.map(lin + linear_size, base + linear_size, pool, AUTO, PAGE_KERNEL,
          table_prot=TABLE_KERNEL_NOEXEC, label="linear-pool")
    kva = b.kimage_va
    b.map(kva, b.image_pa, b.image_size, AUTO, PAGE_KERNEL_ROX.with_(gp=True), pool="image",
          label="kimage")
    if with_efi:
        b.add_root("efi", ttbr=0)
        b.map(0x2000_0000, base + ps, 4 * ps, LeafKind.PAGE, PAGE_KERNEL, root="efi", label="efi")
    return b.finish()
