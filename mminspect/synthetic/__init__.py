"""Synthetic arm64 Linux kernels written as ELF vmcores that drgn opens as a kernel.

The generator is an *independent encoder*: it writes page-table descriptors from a
spec and keeps its own ground truth (every table page with its level, VA span and
parents; every leaf as runs of VA, PA, size, kind and attributes).  It never decodes
descriptors, so it can serve as an oracle for :mod:`mminspect.arch.arm64`, next to
drgn's own arm64 walker.

API
===

``Regime(page_size, va_bits, vabits_actual=None, pa_bits=48, pa_bits_config=None,
kaslr_offset=0, phys_offset=None, name="")``
    One translation regime (validated against what arm64 Linux allows). Derived:
    ``levels``, ``start_level``, ``root_entries``, ``level_shift(l)``, ``index(va, l)``,
    ``lpa2_active``, ``lpa_active``, ``folded``, ``block_levels`` (what Linux uses),
    ``hw_block_levels`` (what the architecture accepts), ``pgd_bytes``, and the 6.12 VA
    layout (``page_offset``, ``kimage_vaddr``, ``vmalloc_*``, ``vmemmap_*``...).

``REGIMES`` / ``REGIMES_BY_NAME``
    Every legal combination: 4K/39, 4K/48, 4K/52 LPA2 (5 levels) and folded (48),
    16K/36, 16K/47, 16K/48, 16K/52 LPA2 (4 levels) and folded (47), 64K/42 and 64K/48
    (each with and without LPA), 64K/52 with LVA (PA 48 or 52) and without LVA (running
    48, PA 48 or 52).

``Builder(regime, ram=((0x40000000, 1 GiB),), *, image_pa=None, image_size=None,
table_pool=None, osrelease=...)``
    * ``map(va, pa, size, kind="auto"|"page"|"cont_page"|"pmd"|"cont_pmd"|"pud",
      prot=PAGE_KERNEL, *, table_prot=TABLE_KERNEL, root="swapper", pool="ram",
      no_block=False, no_cont=False, label="") -> list[LeafRun]``
    * ``map_uniform(va, pa, size, prot=PAGE_KERNEL, *, table_prot, root, pool, label)
      -> LeafRun``: page-granular map whose PTE tables are generated while writing.
    * ``add_root(name, *, ttbr=0, pa=None, slab=None) -> pa``: an efi_mm-style pgd
      (a non-page-aligned slab object when ``pgd_bytes < page_size``).
    * ``ensure_table(root, va, level, *, pool, table_prot, symbol) -> pa`` (static
      tables: ``pool="image"``, e.g. ``bm_pte``), ``table_at(root, va, level)``.
    * oddities: ``link_table(root, va, level, target_pa)`` (shared table, or loop when
      the target is on the path), ``set_raw(root, va, level, value, hw=...)``
      (invalid-but-nonzero entries), ``set_table_outside_ram(root, va, level, pa)``,
      ``omit_table(pa, mode="absent"|"zero")`` (left out of the dump).
    * data: ``write_phys(pa, bytes)``, ``fill_pattern(pa, size)`` (u64 words = own PA).
    * ``finish() -> BuiltKernel``.

``BuiltKernel``
    ``regime``, ``ram``, ``phys_offset`` (s64), ``kimage_voffset``, ``swapper_pg_dir``
    (kimage VA), ``roots`` (name -> ``RootRecord(pa, va, ttbr, n_entries, size)``),
    ``leaf_runs`` (``LeafRun``; aliases through shared tables have ``alias_of``),
    ``anomalies``, ``symbols``, ``tables()`` (``TableRecord``), ``n_tables()``,
    ``lookup(root, va) -> Translation(status, pa, leaf, dump_view, anomaly)``,
    ``iter_leaves(root)``, ``read_phys(pa, n)``, ``phys_to_virt(pa)``.

``write_vmcore(path, built, *, full_ram=False, merge_gap=None, vmcoreinfo_extra=None,
vmcoreinfo_omit=()) -> VmcoreFile(path, segments, file_size, vmcoreinfo)``
    ELF64 ET_CORE, EM_AARCH64, one PT_NOTE ("VMCOREINFO" note, 6.12 key formats incl.
    ``NUMBER(PHYS_OFFSET)`` in two's complement) and PT_LOADs (``p_paddr`` = PA,
    ``p_vaddr`` = linear VA) for only the pages that hold something; PN_XNUM when
    there are 65535 or more segments; streaming, sparse.

``make_sample(regime, seed=0, *, oddities=True, kaslr=True, ram=None) -> BuiltKernel``
    A realistic kernel for a regime (see :mod:`.sample`), with ``regions`` and
    ``pattern_pages``.

``make_linear_kernel(regime, linear_size, *, ram_base=None, with_efi=True) -> BuiltKernel``
    A benchmark kernel: a page-granular linear map of ``linear_size`` through the lazy
    fast path (1 TiB with 4K pages = 525,322 tables: built in 0.04 s, written as a
    2 GiB vmcore in about 10 s with 48 MiB RSS).

``make_server_kernel(regime, linear_size, *, granular=True, hotadd=0, efi=True,
vmalloc=True) -> BuiltKernel`` and ``write_server_vmcore(path, built)`` (:mod:`.server`)
    The benchmark's kernels: boot tables placed top-down as memblock places them
    (``Builder.map_uniform_topdown``), a PMD-mapped vmemmap with 6.12 ``struct page``s
    for every table page (PG_reserved, PGTY_table, buddy poison), ``mem_section``,
    hot-added memory, and the VMCOREINFO keys a classifier reads; ``built.server``
    (:class:`ServerFacts`) holds the facts to check against.  1 TiB page-granular:
    built in 1.6 s, written in 4 s (2 GiB of data in a sparse file).

:mod:`.oracle`: ``open_drgn(path)``, ``drgn_translate(prog, pgtable_va, va)``,
``compare(prog, built, vas)``, ``sample_vas(built)``.

What drgn 0.3.0 can validate
=============================

Checked by ``tests/synthetic/test_generator.py`` (seeds 0 and 1, several hundred VAs
per regime, through ``_drgn._linux_helper_follow_phys(prog, pgtable, va)``, which
needs no debug info): **drgn agrees with the ground truth on all 17 regimes** -- 4K/39,
4K/48, 4K/52 with LPA2 active (5 levels, 16-entry PGD, PA bits 51:50 from descriptor
bits 9:8, a 128-byte slab efi pgd) and folded to 48, 16K/36 (2 levels), 16K/47,
16K/48 (2-entry PGD, 16-byte efi pgd), 16K/52 LPA2 active and folded to 47, 64K/42
and 64K/48 with and without LPA (PA bits 51:48 in descriptor bits 15:12), 64K/52 with
LVA and without (runs 48), with PA 48 or 52.  No regime needs to rely on the
generator's ground truth alone; the cases that do are the deliberate oddities listed
below, where drgn's answer is not Linux's.

What drgn needs: a ``VMCOREINFO`` note with ``OSRELEASE``, ``PAGESIZE``,
``SYMBOL(swapper_pg_dir)`` and ``NUMBER(VA_BITS)`` or ``NUMBER(TCR_EL1_T1SZ)``
(without either, ``set_core_dump`` fails: "VMCOREINFO does not contain valid
TCR_EL1_T1SZ or VA_BITS"; without ``OSRELEASE``: "VMCOREINFO does not contain valid
OSRELEASE").  ``NUMBER(kimage_voffset)`` is needed to translate at all: without it
drgn reads swapper_pg_dir through its kimage VA, which no PT_LOAD covers, and every
kernel translation faults.  drgn ignores ``PHYS_OFFSET``, ``MAX_PHYSMEM_BITS`` and
the layout keys.

drgn's arm64 translation: limits worth knowing when comparing against it
--------------------------------------------------------------------------

* PT_LOAD ``p_vaddr`` wins: ``prog.read(va)`` for a linear-map VA that a PT_LOAD
  covers reads the file directly, without walking.  Exercise the walker with
  ``follow_phys``/``_linux_helper_read_vm`` or with VAs outside the linear map.
* Blocks at any level above 3: ``01`` is taken as a block at every non-leaf level,
  including levels where the architecture has none (4K level 0 without LPA2, 16K
  level 1 without LPA2, 64K level 1 without LPA, level -1).  The hardware faults
  there; drgn returns a 512 GiB / 64 GiB / 4 TiB / 256 TiB "block" (xfail test
  ``test_drgn_block_at_non_block_level``).
* Loops are followed like hardware would (a table entry pointing at the root makes
  the root be read as a lower-level table; drgn returns the tables' own PAs as
  "pages"); there is no loop detection.  The ground truth reports these VAs as
  ``Status.ANOMALY`` and the comparison skips them.
* With 4K/16K, drgn takes the walk size from ``64 - TCR_EL1_T1SZ`` and switches on
  LPA2 decoding exactly when that is 52; it never reads ``VA_BITS`` then.  If T1SZ
  is absent it falls back to ``VA_BITS``: a folded LPA2 build (4K/52 running 48,
  16K/52 running 47) is then walked with one level too many and bits 9:8 read as
  OA -- wrong (xfail test ``test_drgn_needs_t1sz_for_folded_lpa2``); kernels that
  can fold (6.9+) always write T1SZ.
* With 64K drgn ignores T1SZ and always indexes with ``VA_BITS`` and always reads
  bits 15:12 as OA[51:48] (correct: RES0 without LPA, and the 1024-entry root of
  64K/52 is laid out for 52-bit indexing even on a 48-bit CPU).  It therefore also
  "translates" kernel VAs in ``[-(2**52), -(2**48))`` on a CPU without LVA, where the
  hardware would fault (those entries are empty in real kernels).
* Tables not in the dump: "could not find physical memory segment: <PA>"
  (``FaultError``); a table page read as zeros (``p_filesz < p_memsz``): "address is
  not mapped".  A table descriptor pointing outside RAM gives the former.
* A non-swapper root (``efi_mm.pgd``) is read *virtually* at its linear-map VA and
  treated as a TTBR0 table for ``[0, 2**va_bits)``; only one root level is read per
  index, so a slab pgd smaller than a page works.
* drgn only yields (VA, PA) per leaf: no levels, descriptor bits, table PAs or
  contiguous-bit checks, so attributes and table ground truth are validated only
  against the generator's own bytes (``test_drgn_agrees_with_ground_truth`` checks
  every parent entry in memory against ``tables()``).
"""

from .builder import (
    AUTO,
    Anomaly,
    Builder,
    BuiltKernel,
    Leaf,
    LeafKind,
    LeafRun,
    RootRecord,
    Status,
    TableRecord,
    Translation,
)
from .encode import Prot, TableProt
from .regime import REGIMES, REGIMES_BY_NAME, Regime
from .sample import Region, default_ram, make_linear_kernel, make_sample
from .server import ServerFacts, make_server_kernel, write_server_vmcore
from .vmcore import VmcoreFile, vmcoreinfo_text, write_vmcore

__all__ = [
    "AUTO",
    "Anomaly",
    "Builder",
    "BuiltKernel",
    "Leaf",
    "LeafKind",
    "LeafRun",
    "Prot",
    "REGIMES",
    "REGIMES_BY_NAME",
    "Regime",
    "Region",
    "RootRecord",
    "ServerFacts",
    "Status",
    "TableProt",
    "TableRecord",
    "Translation",
    "VmcoreFile",
    "default_ram",
    "make_linear_kernel",
    "make_sample",
    "make_server_kernel",
    "vmcoreinfo_text",
    "write_server_vmcore",
    "write_vmcore",
]
