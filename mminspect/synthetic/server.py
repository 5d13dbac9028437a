"""Server-scale synthetic kernels: the benchmark's kernels (issue 7).

:func:`make_server_kernel` builds an arm64 6.12-style kernel with a linear map of
any size (16 GiB .. 4 TiB and more) laid out the way the kernel lays it out at boot,
plus the parts a classifier and a hot-remove simulation read:

* **Linear map**, page-granular (``rodata=full``: every page a PTE) or block-mapped
  (the largest leaves that fit). Boot tables come from memblock top-down, one at a
  time (:meth:`.Builder.map_uniform_topdown`): each PMD table sits above the PTE
  tables it points to, and PTE tables of rising VAs have falling PAs.
* **vmemmap**: ``struct page`` arrays of every RAM section, PMD-block mapped with 4K
  pages as ``vmemmap_populate_hugepages`` does (base pages with 16K/64K), backed by
  one contiguous memblock allocation per bank (``sparse_buffer_init``); its tables
  come from memblock below it.
* **struct pages** (6.12 layout, 64 bytes) for every table page and every page of the
  kernel image: memblock and image pages are ``PG_reserved`` with ``lru``
  self-linked and no type; buddy pages whose ctor ran carry ``PGTY_table``
  (efi_mm PTE/PMD tables, vmalloc PUD/PMD tables); buddy pages without a ctor
  (hot-added linear-map and vmemmap tables, vmalloc PTE tables, the efi pgd) have
  no type and the list poison ``list_del`` leaves. Every other ``struct page``
  reads as zeros (the dump covers the whole vmemmap as a sparse hole).
* **mem_section** (SPARSEMEM_EXTREME roots, 16-byte sections, boot sections
  ``SECTION_IS_EARLY``, hot-added ones not), so memory blocks can be derived.
* **Hot-added memory** (``hotadd`` bytes at the top of RAM): its linear-map and
  vmemmap tables come from the buddy allocator without a ctor, as on v5.2..v6.15.
* an efi_mm-style TTBR0 root and a few vmalloc pages.
* VMCOREINFO with the generic ``struct page`` keys (``SIZE(page)``,
  ``OFFSET(page.flags)`` ...), page-type values (``PAGE_BUDDY_MAPCOUNT_VALUE`` ...),
  ``SYMBOL(mem_section)``, ``SYMBOL(vmemmap)``, ``_text``/``_end``.

A 1 TiB page-granular kernel builds in about a second and writes (with
:func:`write_server_vmcore`) as a sparse file holding about 2.1 GiB of data.
``built.server`` (:class:`ServerFacts`) records what a benchmark checks against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .builder import AUTO, Builder, BuiltKernel, LeafKind
from .encode import PAGE_KERNEL, PAGE_KERNEL_ROX, TABLE_KERNEL_NOEXEC
from .regime import SZ_4K, SZ_64K, U64, Regime
from .vmcore import VmcoreFile, write_vmcore

__all__ = ("ServerFacts", "make_server_kernel", "write_server_vmcore")

MiB = 1 << 20
GiB = 1 << 30

#: 6.12 ``enum pageflags`` / ``enum pagetype`` values used here.
PG_RESERVED = 13
PGTY_TABLE = 0xF2
PAGE_TYPE_NONE = 0xFFFFFFFF
#: ``LIST_POISON1``/``2`` with arm64's ``ILLEGAL_POINTER_VALUE`` (0xdead000000000000).
LIST_POISON1 = 0xDEAD000000000100
LIST_POISON2 = 0xDEAD000000000122
STRUCT_PAGE = 64
#: include/linux/mmzone.h section_mem_map flags.
SECTION_MARKED_PRESENT = 1
SECTION_HAS_MEM_MAP = 2
SECTION_IS_ONLINE = 4
SECTION_IS_EARLY = 8

#: Generic VMCOREINFO keys as a 6.12+ arm64 kernel writes them (values from a
#: Debian sid cloud kernel's dump; offsets are those of struct page on arm64).
_PAGE_KEYS = {
    "SIZE(page)": "64",
    "OFFSET(page.flags)": "0",
    "OFFSET(page._refcount)": "52",
    "OFFSET(page.mapping)": "24",
    "OFFSET(page.lru)": "8",
    "OFFSET(page._mapcount)": "48",
    "OFFSET(page.private)": "40",
    "OFFSET(page.compound_head)": "8",
    "SIZE(list_head)": "16",
    "OFFSET(list_head.next)": "0",
    "OFFSET(list_head.prev)": "8",
    "NUMBER(PG_lru)": "5",
    "NUMBER(PG_private)": "14",
    "NUMBER(PG_swapcache)": "10",
    "NUMBER(PG_swapbacked)": "17",
    "NUMBER(PG_hwpoison)": "21",
    "NUMBER(PG_head_mask)": "64",
    "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": "-268435456",
    "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": "-251658240",
    "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)": "-201326592",
    "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": "-184549376",
    "SIZE(mem_section)": "16",
    "OFFSET(mem_section.section_mem_map)": "0",
}


@dataclass
class ServerFacts:
    """What :func:`make_server_kernel` built, for checks and benchmarks."""

    linear_size: int
    granular: bool
    boot: tuple[int, int]                    #: boot RAM (start, size)
    hotadd: tuple[int, int] | None           #: hot-added RAM (start, size)
    table_pas: np.ndarray                    #: sorted PAs of every init_mm table page
    tables_by_level: dict[int, int]
    typed: np.ndarray                        #: sorted PAs of table pages typed PGTY_table
    reserved: np.ndarray                     #: sorted PAs of table pages with PG_reserved
    vmemmap: list[tuple[int, int, int]]      #: (VA, PA, size) per bank
    mem_section: int                         #: VA of the roots array
    efi_pgd: int | None
    vmcoreinfo: dict[str, str] = field(default_factory=dict)
    dump_include: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_tables(self) -> int:
        return len(self.table_pas)

    def as_dict(self) -> dict:
        return {
            "linear_size": self.linear_size,
            "granular": self.granular,
            "boot": list(self.boot),
            "hotadd": list(self.hotadd) if self.hotadd else None,
            "n_tables": self.n_tables,
            "tables_by_level": {str(k): v for k, v in sorted(self.tables_by_level.items())},
            "typed": len(self.typed),
            "reserved": len(self.reserved),
            "vmemmap": [list(x) for x in self.vmemmap],
            "mem_section": self.mem_section,
            "efi_pgd": self.efi_pgd,
        }


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _alloc_aligned(b: Builder, pool: str, size: int, align: int) -> int:
    """A top-down allocation of ``size`` bytes aligned to ``align`` (memblock_alloc)."""
    p = b._pools[pool]
    pa = (p.cur - size) // align * align
    if pa < p.start:
        raise MemoryError(f"pool {pool} exhausted")
    p.cur = pa
    return pa


def make_server_kernel(regime: Regime, linear_size: int, *, granular: bool = True,
                       hotadd: int = 0, efi: bool = True, vmalloc: bool = True,
                       ram_base: int | None = None) -> BuiltKernel:
    """A kernel whose RAM (and linear map) is ``linear_size`` bytes; see the module
    docstring. ``hotadd`` bytes at the top of RAM are hot-added memory (a multiple
    of 1 GiB, smaller than ``linear_size``)."""
    r = regime
    ps = r.page_size
    shift = r.page_shift
    sec_bits = 29 if ps == SZ_64K else 27
    sec = 1 << sec_bits
    span = r.table_span(3)
    unit = max(span, sec, GiB)
    if linear_size % unit or hotadd % unit or not 0 <= hotadd < linear_size:
        raise ValueError(f"linear_size and hotadd must be multiples of {unit:#x}, hotadd < linear_size")
    base = (0x4_0000_0000 if ps == SZ_64K else 0x8000_0000) if ram_base is None else ram_base
    boot = linear_size - hotadd
    banks = [(base, boot)] + ([(base + boot, hotadd)] if hotadd else [])

    n_pte = linear_size // span
    vm_bytes = (linear_size >> shift) * STRUCT_PAGE
    pmd = r.entry_span(2)
    # memblock (top of boot RAM): linear-map tables, mem_section, the memmap, its tables
    need = (n_pte + n_pte // max(1, r.entries_per_table) + 64) * ps + vm_bytes + 64 * MiB
    pool_lo = base + boot - _align_up(need, GiB)
    if pool_lo <= base + 64 * MiB:
        raise ValueError("RAM too small for its own page tables and memmap")
    b = Builder(r, banks, table_pool=(pool_lo, base + boot))
    # buddy pages for runtime tables (hot-add, vmalloc, efi): the middle of boot RAM
    hot_need = (hotadd // span + hotadd // span // max(1, r.entries_per_table) + 64) * ps \
        + (hotadd >> shift) * STRUCT_PAGE + 2 * pmd + 64 * MiB
    mid = (base + pool_lo) // 2 // GiB * GiB
    buddy_lo = mid - _align_up(hot_need, GiB)
    image_end = _align_up(b.image_pa + b.image_size, pmd)
    if buddy_lo < image_end:  # small RAM: keep the buddy pages off the kernel image
        buddy_lo = image_end
        mid = buddy_lo + _align_up(hot_need, pmd)
        if mid > pool_lo:
            raise ValueError("RAM too small for its runtime page tables")
    b.add_pool("buddy", buddy_lo, mid)

    # paging_init(): map_kernel, then map_mem
    kva = b.kimage_va
    b.map(kva, b.image_pa, b.image_size, AUTO, PAGE_KERNEL_ROX.with_(gp=True), pool="image",
          label="kimage")
    lin = b.phys_to_virt(base)
    if granular:
        b.map_uniform_topdown(lin, base, boot, PAGE_KERNEL, table_prot=TABLE_KERNEL_NOEXEC,
                              label="linear")
    else:
        b.map(lin, base, boot, AUTO, PAGE_KERNEL, table_prot=TABLE_KERNEL_NOEXEC, label="linear")

    # bootmem_init() -> sparse_init(): mem_section roots, then the memmap
    per_root = ps // 16
    nr_roots = (1 << (r.pa_bits_config - sec_bits)) // per_root
    roots_pa = _alloc_aligned(b, "ram", _align_up(nr_roots * 8, ps), ps)
    root_pages: dict[int, int] = {}

    def section_words(start: int, size: int, flags: int, pool: str) -> None:
        vmemmap_sym = (r.vmemmap_start - (b.phys_offset >> shift) * STRUCT_PAGE) & U64
        for nr in range(start >> sec_bits, (start + size) >> sec_bits):
            ri, i = divmod(nr, per_root)
            if ri not in root_pages:
                root_pages[ri] = _alloc_aligned(b, pool, ps, ps)
            b.write_phys(root_pages[ri] + 16 * i, int((vmemmap_sym | flags) & U64).to_bytes(8, "little"))

    early = SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP | SECTION_IS_ONLINE | SECTION_IS_EARLY
    section_words(base, boot, early, "ram")
    vmemmap: list[tuple[int, int, int]] = []

    def populate(start: int, size: int, pool: str) -> None:
        va = (r.vmemmap_start + ((start - b.phys_offset) >> shift) * STRUCT_PAGE) & U64
        nbytes = (size >> shift) * STRUCT_PAGE
        if ps == SZ_4K:
            backing = _alloc_aligned(b, pool, _align_up(nbytes, pmd), pmd)
            b.map(va, backing, _align_up(nbytes, pmd), LeafKind.PMD, PAGE_KERNEL, pool=pool,
                  label="vmemmap")
        else:
            backing = _alloc_aligned(b, pool, _align_up(nbytes, ps), ps)
            b.map(va, backing, _align_up(nbytes, ps), LeafKind.PAGE, PAGE_KERNEL, pool=pool,
                  label="vmemmap")
        vmemmap.append((va, backing, _align_up(nbytes, pmd if ps == SZ_4K else ps)))

    populate(base, boot, "ram")

    # after boot: hot-added memory (add_memory -> arch_add_memory): linear map and
    # memmap with tables from the buddy allocator (no ctor on v5.2..v6.15)
    if hotadd:
        hs = base + boot
        lhot = b.phys_to_virt(hs)
        if granular:
            b.map_uniform_topdown(lhot, hs, hotadd, PAGE_KERNEL, table_prot=TABLE_KERNEL_NOEXEC,
                                  pool="buddy", label="linear-hotadd")
        else:
            b.map(lhot, hs, hotadd, AUTO, PAGE_KERNEL, table_prot=TABLE_KERNEL_NOEXEC, pool="buddy",
                  label="linear-hotadd")
        section_words(hs, hotadd, early & ~SECTION_IS_EARLY, "buddy")
        populate(hs, hotadd, "buddy")

    # vmalloc: a few pages (pmd_alloc_one/pud_alloc_one ctor'd, pte_alloc_one_kernel not)
    before = set(b._tables)
    if vmalloc:
        vva = _align_up(r.vmalloc_start + 64 * GiB, r.table_span(2))  # clear of the kimage's tables
        for j in range(4):
            b.map(vva + j * ps, b.alloc_page("buddy"), ps, LeafKind.PAGE, PAGE_KERNEL, pool="buddy",
                  label="vmalloc")
    vmalloc_tables = set(b._tables) - before
    efi_pgd = None
    if efi:
        efi_pgd = b.add_root("efi", ttbr=0, pa=b.alloc_page("buddy") if r.pgd_bytes >= ps else None)
        data = b.alloc_page("buddy")
        b.map(0x2000_0000, data, ps, LeafKind.PAGE, PAGE_KERNEL, root="efi", pool="buddy", label="efi")

    b.add_symbol("_text", kva)
    b.add_symbol("_end", kva + b.image_size)

    # ---- struct pages ------------------------------------------------------------
    typed_pa, reserved_pa, untyped_pa = _table_origins(b, vmalloc_tables)
    swapper_tables = _swapper_tables(b)
    image = np.arange(b.image_pa, b.image_pa + b.image_size, ps, dtype=np.uint64)
    _write_struct_pages(b, np.union1d(reserved_pa, image), "reserved", vmemmap)
    _write_struct_pages(b, untyped_pa, "buddy", vmemmap)
    levels = _levels_of(b)
    _write_struct_pages(b, typed_pa[levels.get_many(typed_pa) == 3], "pte", vmemmap)
    _write_struct_pages(b, typed_pa[levels.get_many(typed_pa) != 3], "pmd", vmemmap)

    # ---- mem_section roots array ------------------------------------------------------
    roots = np.zeros(nr_roots, dtype=np.uint64)
    for ri, pa in root_pages.items():
        roots[ri] = b.phys_to_virt(pa)
    b.write_phys(roots_pa, roots.tobytes())

    built = b.finish()
    info = dict(_PAGE_KEYS)
    info["SYMBOL(mem_section)"] = f"{b.phys_to_virt(roots_pa):x}"
    info["LENGTH(mem_section)"] = str(nr_roots)
    info["SYMBOL(vmemmap)"] = f"{(r.vmemmap_start - (b.phys_offset >> shift) * STRUCT_PAGE) & U64:x}"
    by_level: dict[int, int] = {}
    for t in b._tables.values():
        if t.root == "swapper" and t.pa % ps == 0:
            by_level[t.level] = by_level.get(t.level, 0) + 1
    by_level[3] = by_level.get(3, 0) + sum(e.n_tables for e in b._extents if e.root == "swapper")
    built.server = ServerFacts(
        linear_size=linear_size,
        granular=granular,
        boot=(base, boot),
        hotadd=(base + boot, hotadd) if hotadd else None,
        table_pas=swapper_tables,
        tables_by_level=by_level,
        typed=typed_pa,
        reserved=reserved_pa,
        vmemmap=vmemmap,
        mem_section=b.phys_to_virt(roots_pa),
        efi_pgd=efi_pgd,
        vmcoreinfo=info,
        dump_include=[(pa, pa + n) for _, pa, n in vmemmap],
    )
    return built


def write_server_vmcore(path: str | os.PathLike, built: BuiltKernel, **kw) -> VmcoreFile:
    """Write a :func:`make_server_kernel` kernel: its VMCOREINFO keys, and the whole
    memmap covered by the dump (zeros as sparse holes)."""
    s: ServerFacts = built.server
    extra = dict(s.vmcoreinfo)
    extra.update(kw.pop("vmcoreinfo_extra", None) or {})
    return write_vmcore(path, built, vmcoreinfo_extra=extra, include=s.dump_include, **kw)


# ---- helpers ----------------------------------------------------------------------------


class _Levels:
    def __init__(self, pas: np.ndarray, levels: np.ndarray):
        o = np.argsort(pas)
        self.pas, self.levels = pas[o], levels[o]

    def get_many(self, pas: np.ndarray) -> np.ndarray:
        if not len(pas):
            return np.empty(0, np.int64)
        i = np.searchsorted(self.pas, pas)
        return self.levels[np.minimum(i, len(self.pas) - 1)]


def _levels_of(b: Builder) -> _Levels:
    pas = [t.pa - t.pa % b.page for t in b._tables.values()]
    lv = [t.level for t in b._tables.values()]
    return _Levels(np.array(pas, dtype=np.uint64), np.array(lv, dtype=np.int64))


def _extent_pas(b: Builder, pred) -> np.ndarray:
    parts = [np.arange(e.table_pa0, e.table_pa0 + e.n_tables * b.page, b.page, dtype=np.uint64)
             for e in b._extents if pred(e)]
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def _swapper_tables(b: Builder) -> np.ndarray:
    explicit = np.array([t.pa for t in b._tables.values() if t.root == "swapper"], dtype=np.uint64)
    return np.union1d(explicit, _extent_pas(b, lambda e: e.root == "swapper"))


def _table_origins(b: Builder, vmalloc_tables: set) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every table page into (typed, reserved, buddy-untyped) by who allocated it."""
    buddy = b._pools["buddy"]
    typed, reserved, untyped = [], [], []
    for t in b._tables.values():
        page = t.pa - t.pa % b.page
        in_buddy = buddy.start <= page < buddy.end
        if not in_buddy:
            reserved.append(page)                        # memblock or kernel image
        elif t.root != "swapper":                        # efi_mm: pgd_pgtable_alloc
            (typed if t.level in (2, 3) else untyped).append(page)
        elif t.pa in vmalloc_tables:
            (typed if t.level in (1, 2) else untyped).append(page)
        else:                                            # hot-add linear map / vmemmap
            untyped.append(page)
    ext_buddy = _extent_pas(b, lambda e: buddy.start <= e.table_pa0 < buddy.end)
    ext_boot = _extent_pas(b, lambda e: not buddy.start <= e.table_pa0 < buddy.end)
    as_arr = lambda xs: np.unique(np.array(xs, dtype=np.uint64))
    return (as_arr(typed), np.union1d(as_arr(reserved), ext_boot), np.union1d(as_arr(untyped), ext_buddy))


def _write_struct_pages(b: Builder, pas: np.ndarray, kind: str, vmemmap) -> None:
    """Write the struct pages of the pages at ``pas`` (6.12 layout)."""
    if not len(pas):
        return
    r = b.regime
    pas = np.unique(pas.astype(np.uint64))
    pfn = pas >> np.uint64(r.page_shift)
    base_pfn = np.uint64((b.phys_offset >> r.page_shift) & U64)  # PHYS_OFFSET is an s64
    sp_va = np.uint64(r.vmemmap_start) + (pfn - base_pfn) * np.uint64(STRUCT_PAGE)
    w = np.zeros((len(pas), 8), dtype=np.uint64)
    if kind == "reserved":                     # memblock / image: reserve_bootmem_region()
        w[:, 0] = 1 << PG_RESERVED
        w[:, 1] = sp_va + np.uint64(8)         # INIT_LIST_HEAD(&page->lru)
        w[:, 2] = sp_va + np.uint64(8)
        page_type = PAGE_TYPE_NONE
    elif kind == "buddy":                      # from the free lists, no ctor
        w[:, 1] = LIST_POISON1
        w[:, 2] = LIST_POISON2
        page_type = PAGE_TYPE_NONE
    elif kind == "pte":                        # pagetable_pte_ctor()
        w[:, 1] = LIST_POISON1
        w[:, 2] = LIST_POISON2
        page_type = PGTY_TABLE << 24
    elif kind == "pmd":                        # pagetable_pmd_ctor(): pmd_huge_pte = NULL
        w[:, 1] = LIST_POISON1
        page_type = PGTY_TABLE << 24
    else:
        raise ValueError(kind)
    w[:, 6] = np.uint64(page_type | (1 << 32))  # page_type/_mapcount, _refcount = 1
    # contiguous struct pages inside one bank's memmap are one write
    for vva, vpa, n in vmemmap:
        lo, hi = np.searchsorted(sp_va, [np.uint64(vva), np.uint64(vva + n)])
        if lo == hi:
            continue
        sub = sp_va[lo:hi]
        brk = np.nonzero(np.diff(sub) != np.uint64(STRUCT_PAGE))[0] + 1
        for s, e in zip(np.concatenate(([0], brk)).tolist(), np.concatenate((brk, [len(sub)])).tolist()):
            b.write_phys(vpa + (int(sub[s]) - vva), w[lo + s:lo + e].tobytes())
    covered = sum(int(np.count_nonzero((sp_va >= np.uint64(v)) & (sp_va < np.uint64(v + n))))
                  for v, _, n in vmemmap)
    if covered != len(pas):
        raise ValueError("a struct page lies outside the memmap")
