"""
Classify every page-table page: allocator origin and ptlock state
-----------------------------------------------------------------

For each table page a walk found, :func:`classify_walk` reads its ``struct
page`` (batched, :mod:`mminspect.pages`) and decides:

- **origin**, with the evidence that decided it, in this order
  (kernel-model.md 8.3): ``kernel-image`` (a static table inside
  ``[_text, _end)``, named by symbol: ``swapper_pg_dir``, ``bm_pte[1]``,
  ``init_pg_dir+3`` ...), ``altmap`` (inside a memory block's altmap
  reserve: always a finding for a table), ``memblock`` (``PG_reserved``;
  ``memblock.reserved`` and a self-linked ``lru`` as supporting evidence),
  ``slab`` (a pgd smaller than a page from ``pgd_cache``), ``buddy-ctor``
  (the page carries the page-table type: a pgtable ctor ran),
  ``buddy-no-ctor`` (an allocated buddy page without the type), ``unknown``
  (unreadable, or a free page: a finding);
- **ptlock**: ``n/a`` (no split lock at this level or mm), ``initialised``
  (an allocated ptl pointing to a live ``page->ptl`` object, magic
  0xdead4ead with DEBUG_SPINLOCK), ``inline-zero`` (inline lock, all zero:
  an initialised unlocked lock and one never initialised look the same),
  ``held`` (non-zero lock word; owner CPU and task with DEBUG_SPINLOCK),
  ``missing`` (a table whose mm needs a split lock, without one), ``stale``
  (a lock word where no lock belongs: on a page without the table type),
  ``dangling`` (the pointer is not a live ``page->ptl`` object);
- the **region** its VA span covers, what the memory it maps is (boot memory
  by ``SECTION_IS_EARLY``, or hot-added), and the memory block and zone;
- the **expected** origins for (kernel era, root, region, level), from the
  allocation sites of kernel-model.md 2.2; every table whose origin is not
  expected is a :class:`Finding`.

The kernel era is detected by feature (:class:`Features`): DWARF enumerators,
symbols that exist only with a change, calls in the kernel's own code, type
sizes; OSRELEASE only where nothing in the dump shows the fact, and the
evidence says so.

Everything is columnar: numpy over the raw struct pages, no drgn Object per
table page; :class:`TableClass` records are built only when asked for.

:func:`audit` is the NR_PAGETABLE audit: the kernel's own counter (global
plus per-CPU deltas, per node), every table-typed page in the memmap, and
the ctor'd tables reachable from every root (init_mm, efi_mm, the KPTI
trampoline, every task's mm), with the pages that explain any difference.
"""

import dataclasses
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.bits import U64, contains, unique
from mminspect.errors import MMInspectError
from mminspect.kernel import Kernel, Root
from mminspect.forked import in_child, peak_rss_kib
from mminspect.memory import (
    MAPS_BOOT,
    MAPS_HOT,
    MAPS_MIXED,
    MAPS_NAMES,
    MAPS_NONE,
    MemoryMap,
    global_node_stat,
    in_regions,
    node_stat,
    read_memblock,
)
from mminspect.pages import (
    SPINLOCK_MAGIC,
    SPINLOCK_OWNER_INIT,
    PageLayout,
    PtlObjects,
    StructPages,
)
from mminspect.target.base import TargetFault
from mminspect.walk import Walk, walk

__all__ = (
    "AUDIT_SCHEMA",
    "Audit",
    "CLASSIFY_SCHEMA",
    "Classification",
    "Classifier",
    "Features",
    "Finding",
    "ORIGINS",
    "PTLOCKS",
    "TableClass",
    "audit",
    "capture_hook",
    "classifier_for",
    "classify_roots",
    "classify_walk",
    "resolve_roots",
)

CLASSIFY_SCHEMA = "mminspect.classify/1"
AUDIT_SCHEMA = "mminspect.audit/1"


ORIGINS = ("kernel-image", "memblock", "buddy-ctor", "buddy-no-ctor", "slab", "altmap", "unknown")
O_IMAGE, O_MEMBLOCK, O_CTOR, O_NOCTOR, O_SLAB, O_ALTMAP, O_UNKNOWN = range(7)
B_IMAGE, B_MEMBLOCK, B_CTOR, B_NOCTOR, B_SLAB, B_ALTMAP, B_UNKNOWN = (1 << i for i in range(7))

PTLOCKS = ("n/a", "initialised", "inline-zero", "held", "missing", "stale", "dangling", "unknown")
P_NA, P_INIT, P_INLINE0, P_HELD, P_MISSING, P_STALE, P_DANGLING, P_UNKNOWN = range(8)

#: Root kinds: what allocated the tables below a root.
K_INIT, K_TRAMP, K_EFI, K_USER = "init_mm", "tramp", "efi_mm", "user"

#: TTBR1 regions, in the order of :meth:`Classifier.regions`.
_REGIONS = ("linear map", "modules", "vmalloc", "vmemmap", "PCI I/O", "fixmap", "kimage", "other", "KASAN shadow")
R_LINEAR, R_MODULES, R_VMALLOC, R_VMEMMAP, R_PCI, R_FIXMAP, R_KIMAGE = (1 << i for i in range(7))
R_OTHER = 1 << 7
R_KASAN = 1 << 8

SEVERITIES = ("info", "warning", "error", "critical")

#: Scan the memmap in a forked child while the roots are walked (when the
#: dump file can be read directly; see :func:`audit`).
FORK_SCAN = True


# -- kernel era, by feature -------------------------------------------------------


@dataclass
class Features:
    """What the dumped kernel's allocation sites do, each with the evidence
    that decided it (:attr:`evidence`)."""

    #: "pgty" / "inverted" / "unknown": how the Table type is encoded.
    page_type: str = "unknown"
    #: pud_alloc_one() runs pagetable_pud_ctor() (v6.7, Baolin Wang).
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
        from mminspect.hotremove.era import function_calls

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
    size = getattr(kernel.target, "symbol_size", lambda name: None)("__per_cpu_offset")
    return size // 8 if size else None


# -- results --------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """Something about a table page a reviewer should see."""

    severity: str  #: info, warning, error, critical
    kind: str  #: origin mismatch, table in altmap, table page free, ptlock ...
    phys: int
    level: str
    root: str
    region: str
    sentence: str

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return f"{self.severity}: {self.kind}: {self.sentence}"


@dataclass
class TableClass:
    """One table page, classified (what the hot-remove snapshot and the
    reports read)."""

    phys: int
    level: int
    level_name: str
    va: int
    span: int
    root: str
    region: str
    origin: str
    allocator: str
    expected: Tuple[str, ...]
    ptlock: str
    typed: Optional[bool]
    reserved: Optional[bool]
    image_symbol: Optional[str]
    ptl_held: bool
    ptl_pointer: int
    ptl_owner: Optional[str]
    page_type: int
    refcount: int
    maps: Optional[str]
    block: Optional[int]
    zone: Optional[str]
    parents: int
    evidence: Tuple[str, ...]

    @property
    def mismatch(self) -> bool:
        return self.origin not in self.expected

    def as_dict(self) -> Dict[str, object]:
        d = dict(self.__dict__)
        d["expected"] = list(self.expected)
        d["evidence"] = list(self.evidence)
        return d


# -- the classifier -----------------------------------------------------------


class Classifier:
    """The facts about one kernel that every classification reuses: struct
    page layout, era features, kernel-image symbols, memblock, memory map."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        t = kernel.target
        self.pages = StructPages(kernel)
        self.layout = self.pages.layout
        self.features = Features.detect(kernel, self.layout)
        self.ptl = PtlObjects(kernel, self.pages)
        self.evidence: Dict[str, str] = {}
        r = kernel.regime
        self.page_size = r.page_size
        self.shift = r.page_shift
        # The kernel image, [_text, _end).
        self.text_va = t.symbol("_text")
        end = self._image_symbol("_end")
        self.end_va = end
        if self.text_va is not None and end is not None:
            self.image_pa = (kernel.virt_to_phys(self.text_va), kernel.virt_to_phys(end))
            self.evidence["image"] = (f"[_text, _end) = [{self.image_pa[0]:#x}, {self.image_pa[1]:#x}) "
                                      "physical")
        else:
            self.image_pa = None
            self.evidence["image"] = "no _text/_end: kernel-image tables found by symbol only"
        self.image_syms = self._image_tables()
        # memblock.reserved (ARCH_KEEP_MEMBLOCK).
        self.memblock = read_memblock(kernel, "reserved")
        self.evidence["memblock"] = (f"memblock.reserved: {len(self.memblock)} regions"
                                     if self.memblock is not None else "memblock not readable (no DWARF)")
        try:
            self.memory: Optional[MemoryMap] = MemoryMap.read(kernel)
            self.evidence.update(self.memory.evidence)
        except MMInspectError as e:
            self.memory = None
            self.evidence["sections"] = f"no memory map: {e}"
        self.regions = self._regions()

    # -- kernel image -------------------------------------------------------------
    def _image_symbol(self, name: str) -> Optional[int]:
        """A kernel-image symbol, relocated by KASLR even where drgn 0.3.0 does
        not relocate it (``_end``, ``init_pg_dir`` ... in sections past .bss)."""
        t = self.kernel.target
        addr = t.symbol(name)
        if addr is None:
            return None
        off = self.kernel.kaslr_offset
        text = self.text_va
        if off and text is not None and addr < text and text - off <= addr < text - off + (1 << 30):
            return (addr + off) & U64
        return addr

    def _image_tables(self) -> List[Tuple[int, int, str, int]]:
        """(pa, size, name, per-table size) of every static table in the image."""
        k = self.kernel
        size_of = getattr(k.target, "symbol_size", lambda name: None)
        ps = self.page_size
        out = []

        names = ("swapper_pg_dir", "tramp_pg_dir", "idmap_pg_dir", "reserved_pg_dir", "init_idmap_pg_dir",
                 "bm_pud", "bm_pmd", "bm_pte", "idmap_ptes", "kpti_ptes", "kpti_bbml2_ptes",
                 "kasan_early_shadow_p4d", "kasan_early_shadow_pud", "kasan_early_shadow_pmd",
                 "kasan_early_shadow_pte")
        for name in names:
            va = self._image_symbol(name)
            if va is None:
                continue
            size = size_of(name) or ps
            # kasan_early_shadow_* are smaller than a page on some configs;
            # bm_pte is NR_BM_PTE_TABLES tables on 6.12.
            out.append((k.virt_to_phys(va), max(size, 8), name, ps))
        for start, end in (("init_pg_dir", "init_pg_end"), ("__pi_init_pg_dir", "__pi_init_pg_end"),
                           ("init_idmap_pg_dir", "init_idmap_pg_end")):
            a, b = self._image_symbol(start), self._image_symbol(end)
            if a is not None and b is not None and b > a:
                if any(n == start.removeprefix("__pi_") for _, _, n, _ in out):
                    continue
                out = [x for x in out if x[2] != start.removeprefix("__pi_")]
                out.append((k.virt_to_phys(a), b - a, start.removeprefix("__pi_"), ps))
        out.sort()
        return out

    def image_name(self, pa: int) -> Optional[str]:
        for sym_pa, size, name, per in self.image_syms:
            if sym_pa <= pa < sym_pa + size:
                i = (pa - sym_pa) // per
                if name.endswith("_pg_dir") and size > per:
                    return f"{name}+{i}" if i else name
                return f"{name}[{i}]" if size > per else name
        return None

    def image_contains(self, pa: np.ndarray) -> np.ndarray:
        """PAs inside ``[__pa(_text), __pa(_end))`` or a static table symbol.
        Part of that range is freed after boot (``free_initmem()`` of the
        __init sections; 6.1 also frees ``init_pg_dir``): callers require
        PG_reserved as well, which freeing clears."""
        pa = np.asarray(pa, dtype=np.uint64)
        inside = np.zeros(len(pa), dtype=bool)
        if self.image_pa is not None:
            inside |= (pa >= np.uint64(self.image_pa[0])) & (pa < np.uint64(self.image_pa[1]))
        for sym_pa, size, _, _ in self.image_syms:
            inside |= (pa >= np.uint64(sym_pa)) & (pa < np.uint64(sym_pa + size))
        return inside

    # -- regions ------------------------------------------------------------------
    def _regions(self) -> List[Tuple[int, int, int]]:
        L = self.kernel.layout
        regs = [
            (R_LINEAR, L.page_offset, L.page_end),
            (R_MODULES, L.modules_vaddr, L.modules_end),
            (R_VMALLOC, L.vmalloc_start, L.vmalloc_end),
            (R_VMEMMAP, L.vmemmap_start, L.vmemmap_end),
            (R_PCI, L.pci_io_start, L.pci_io_end),
        ]
        if L.fixaddr_start is not None:
            regs.append((R_FIXMAP, L.fixaddr_start, L.fixaddr_top))
        if L.kasan_shadow is not None:
            regs.append((R_KASAN, *L.kasan_shadow))
        if self.text_va is not None and self.end_va is not None:
            regs.append((R_KIMAGE, self.text_va, self.end_va))
        return regs

    def region_bits(self, va: np.ndarray, span: np.ndarray) -> np.ndarray:
        """Bitmask of the TTBR1 regions each ``[va, va + span)`` overlaps."""
        va = np.asarray(va, dtype=np.uint64)
        last = va + (np.asarray(span, dtype=np.uint64) - np.uint64(1))
        bits = np.zeros(len(va), dtype=np.int64)
        for bit, lo, hi in self.regions:
            hit = (va < np.uint64(hi)) & (last >= np.uint64(lo))
            bits |= np.where(hit, bit, 0)
        return np.where(bits == 0, R_OTHER, bits)


def region_name(bits: int) -> str:
    if bits == R_OTHER:
        return "other"
    names = [n for i, n in enumerate(_REGIONS) if bits & (1 << i)]
    return "+".join(names)


_CACHE: "weakref.WeakKeyDictionary[Kernel, Classifier]" = weakref.WeakKeyDictionary()


def classifier_for(kernel: Kernel) -> Classifier:
    """The :class:`Classifier` of ``kernel``, built once."""
    c = _CACHE.get(kernel)
    if c is None:
        c = Classifier(kernel)
        _CACHE[kernel] = c
    return c


def root_kind(root: Root) -> str:
    if root.ttbr1:
        return K_TRAMP if root.name.startswith("tramp") else K_INIT
    return K_EFI if root.name == "efi_mm" else K_USER


# -- one walk -----------------------------------------------------------------------


@dataclass
class Classification:
    """Every table page of one walk, classified, as columns; iterate for
    :class:`TableClass` records."""

    kernel: Kernel
    root: Root
    kind: str
    features: Features
    phys: np.ndarray
    level: np.ndarray
    va: np.ndarray
    span: np.ndarray
    parents: np.ndarray
    facts: np.ndarray  #: pages.FACTS_DTYPE row of each table page (head facts for slab)
    origin: np.ndarray  #: index into ORIGINS
    expected: np.ndarray  #: bitmask over ORIGINS
    ptlock: np.ndarray  #: index into PTLOCKS
    region: np.ndarray  #: region bitmask (TTBR1) or 0
    maps: np.ndarray  #: MAPS_* or -1 when not applicable
    block: np.ndarray  #: memory block index of the mapped memory, -1 when none
    own_block: np.ndarray  #: memory block index of the table page itself
    in_memblock: np.ndarray
    image: np.ndarray  #: a live (PG_reserved) kernel-image page
    in_image: np.ndarray  #: inside [_text, _end) or a table symbol, live or freed
    locks: Dict[int, np.void]  #: row -> pages.LOCK_DTYPE for allocated ptls
    findings: List[Finding]
    classifier: Classifier
    stats: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.phys)

    def __iter__(self) -> Iterator[TableClass]:
        return self.records()

    @property
    def mismatches(self) -> int:
        return int(np.count_nonzero((self.expected >> self.origin.astype(np.int64)) & 1 == 0))

    def records(self) -> Iterator[TableClass]:
        """One :class:`TableClass` per table page, top level first, then by VA.

        The strings (region, allocator, expected, evidence) depend only on a
        handful of per-table facts; they are built once per distinct
        combination, so listing half a million tables costs little more than
        creating the records."""
        order = np.lexsort((self.va, self.level))
        group = self._groups()
        shared: Dict[int, Tuple] = {}
        for i in order.tolist():
            g = int(group[i])
            if g < 0:
                yield self.record(i)
                continue
            strings = shared.get(g)
            if strings is None:
                rec = self.record(i)
                shared[g] = (rec.region, rec.allocator, rec.expected, rec.evidence)
                yield rec
                continue
            yield self.record(i, strings)

    def string_groups(self) -> np.ndarray:
        """A group id per table page whose record strings (region, allocator,
        expected, evidence) and origin, level and ptlock are those of every
        table in its group, -1 for a table that needs its own: what
        :meth:`records` builds once per group, for callers that summarise
        half a million tables without a record each (``mminspect map``)."""
        return self._groups()

    def _groups(self) -> np.ndarray:
        """A group id per table whose strings are shared, -1 for tables that
        need their own (kernel-image symbols, ptl objects, a root table)."""
        n = len(self.phys)
        f = self.facts
        bits = np.zeros(n, dtype=np.int64)
        for k, col in enumerate((self.in_image, self.in_memblock, f["ok"], f["reserved"], f["slab"], f["tail"],
                                 f["buddy"], f["table"], f["self_linked"], f["poisoned"], f["w2"] == 0)):
            bits |= col.astype(np.int64) << k
        small = (((self.level.astype(np.int64) + 2) << 40) | (self.origin.astype(np.int64) << 32)
                 | (self.ptlock.astype(np.int64) << 24) | ((self.maps.astype(np.int64) + 1) << 16) | bits)
        cols = (small, self.region, self.parents.astype(np.int64), self.expected,
                f["page_type"].astype(np.int64) | (f["refcount"].astype(np.int64) << 32), f["ptl"])
        order = np.lexsort(cols[::-1])
        change = np.zeros(n, dtype=bool)
        if n:
            change[0] = True
            for col in cols:
                sc = col[order]
                change[1:] |= sc[1:] != sc[:-1]
        gid = np.empty(n, dtype=np.int64)
        gid[order] = np.cumsum(change) - 1
        r = self.kernel.regime
        own = self.image | self.in_image | ((self.level == r.top_level) & (self.phys == np.uint64(self.root.phys)))
        if self.locks:
            own[np.fromiter(self.locks, dtype=np.int64)] = True
        gid[own] = -1
        return gid

    def _lists(self) -> Dict[str, list]:
        """Python lists of the columns a record reads (numpy scalars are slow)."""
        cache = self.__dict__.get("_pylists")
        if cache is None:
            f = self.facts
            cache = {name: getattr(self, name).tolist()
                     for name in ("phys", "level", "va", "span", "origin", "ptlock", "maps", "block", "parents")}
            for name in ("ok", "table", "reserved", "ptl", "page_type", "refcount"):
                cache["f_" + name] = f[name].tolist()
            self.__dict__["_pylists"] = cache
        return cache

    def record(self, i: int, strings: Optional[Tuple] = None) -> TableClass:
        r = self.kernel.regime
        c = self.classifier
        L = self._lists()
        lvl = L["level"][i]
        phys = L["phys"][i]
        origin = L["origin"][i]
        ok = L["f_ok"][i]
        image_symbol = c.image_name(phys) if strings is None and self.image[i] else None
        ptl_word = L["f_ptl"][i]
        lock = self.locks.get(i)
        held = L["ptlock"][i] == P_HELD
        owner = None
        if held and lock is not None and (c.features.debug_spinlock or c.layout.rt_spinlock):
            owner = _owner_text(c, lock)
        blocks = c.memory.blocks if c.memory else []
        b = L["block"][i]
        block = blocks[b] if b >= 0 else None
        maps = L["maps"][i]
        if strings is None:
            strings = (
                self._region_text(i),
                _allocator(self, i, image_symbol),
                tuple(ORIGINS[k] for k in range(len(ORIGINS)) if int(self.expected[i]) >> k & 1),
                tuple(_evidence(self, i, image_symbol, lock)),
            )
        region, allocator, expected, evidence = strings
        return TableClass(
            phys=phys,
            level=lvl,
            level_name=r.level_name(lvl),
            va=L["va"][i],
            span=L["span"][i],
            root=self.root.name,
            region=region,
            origin=ORIGINS[origin],
            allocator=allocator,
            expected=expected,
            ptlock=PTLOCKS[L["ptlock"][i]],
            typed=L["f_table"][i] if ok and self.features.page_type != "unknown" else None,
            reserved=L["f_reserved"][i] if ok and c.layout.pg_reserved is not None else None,
            image_symbol=image_symbol,
            ptl_held=held,
            # (a slab page's word there is the slab's, not a lock: n/a)
            ptl_pointer=ptl_word if c.features.alloc_split and L["ptlock"][i] != P_NA else 0,
            ptl_owner=owner,
            page_type=L["f_page_type"][i],
            refcount=L["f_refcount"][i],
            maps=MAPS_NAMES.get(maps) if maps >= 0 else None,
            block=block.id if block else None,
            zone=block.zone if block else None,
            parents=L["parents"][i],
            evidence=evidence,
        )

    def _region_text(self, i: int) -> str:
        r = self.kernel.regime
        if int(self.level[i]) == r.top_level and int(self.phys[i]) == self.root.phys:
            return "root"
        if self.kind == K_EFI:
            return "EFI runtime"
        if self.kind == K_USER:
            return "user"
        if self.kind == K_TRAMP:
            return "trampoline"
        return region_name(int(self.region[i]))

    def summary(self) -> Counter:
        """Counts by (root, level name, origin, ptlock)."""
        r = self.kernel.regime
        keys = self.level.astype(np.int64) * 100 + self.origin.astype(np.int64) * 10 + self.ptlock
        u, n = np.unique(keys, return_counts=True)
        out: Counter = Counter()
        for key, cnt in zip(u.tolist(), n.tolist()):
            lvl, rest = divmod(key, 100)
            o, p = divmod(rest, 10)
            out[(self.root.name, r.level_name(lvl), ORIGINS[o], PTLOCKS[p])] += cnt
        return out


def _owner_text(c: Classifier, lock) -> Optional[str]:
    owner = int(lock["owner"])
    cpu = int(lock["owner_cpu"])
    if owner in (0, SPINLOCK_OWNER_INIT):
        return None
    name = c.ptl.owner_name(owner)
    return f"cpu {cpu if cpu != 0xFFFFFFFF else '?'}, task {name or hex(owner)}"


def classify_walk(kernel: Kernel, w: Walk, classifier: Optional[Classifier] = None,
                  select: Optional[np.ndarray] = None) -> Classification:
    """
    Classify every table page of a walk (``select``: only these indices into
    its table columns, for a caller that needs a few of half a million).

    >>> cls = classify_walk(k, walk(k, k.root("efi_mm")))
    >>> cls.summary()
    Counter({('efi_mm', 'PTE', 'buddy-ctor', 'inline-zero'): 5, ...})
    """
    t0 = time.perf_counter()
    c = classifier or classifier_for(kernel)
    r = kernel.regime
    F = c.features
    root = w.root
    kind = root_kind(root)
    cols = (w.table_phys, w.table_level, w.table_va, w.table_entries)
    if select is not None:
        cols = tuple(col[select] for col in cols)
    phys = cols[0].astype(np.uint64)
    level = cols[1].astype(np.int8)
    va = cols[2].astype(np.uint64)
    n = len(phys)
    span = np.empty(0, np.uint64)
    if n:
        shifts = np.zeros(8, dtype=np.uint64)
        for lv in unique(level).tolist():
            shifts[lv + 1] = r.shift(lv)
        span = cols[3].astype(np.uint64) << shifts[level.astype(np.int64) + 1]
    # parents per table
    if len(w.edge_child):
        uc, cnt = np.unique(w.edge_child, return_counts=True)
        pos = np.minimum(np.searchsorted(uc, phys), len(uc) - 1)
        parents = np.where(uc[pos] == phys, cnt[pos], 0)
    else:
        parents = np.zeros(n, dtype=np.int64)
    is_root = (level == r.top_level) & (phys == np.uint64(root.phys))

    # struct pages
    t1 = time.perf_counter()
    pfn = phys >> np.uint64(c.shift)
    upf = c.pages.facts(pfn)
    facts = upf[np.searchsorted(upf["pfn"], pfn)] if n else upf
    if np.any(facts["tail"]):
        facts = c.pages.heads(facts)
    t2 = time.perf_counter()

    ok = facts["ok"]
    in_image = c.image_contains(phys)
    in_mb = in_regions(c.memblock, phys)
    altmap = c.memory.in_altmap(pfn) if c.memory is not None else np.zeros(n, dtype=bool)
    reserved_known = c.layout.pg_reserved is not None
    reserved = facts["reserved"] if reserved_known else in_mb
    # Freed image memory (init sections) is no longer PG_reserved: it is
    # ordinary buddy memory now.
    image = in_image & (reserved | ~ok) if reserved_known else in_image
    free = ok & (facts["buddy"] | ((facts["refcount"] == 0) & ~facts["slab"]))

    origin = np.full(n, O_NOCTOR, dtype=np.int8)
    origin[facts["table"]] = O_CTOR
    origin[facts["slab"]] = O_SLAB
    origin[reserved] = O_MEMBLOCK
    origin[free & ~reserved] = O_UNKNOWN
    origin[altmap] = O_ALTMAP
    origin[image] = O_IMAGE
    origin[~ok & ~image] = O_UNKNOWN
    if F.page_type == "unknown":
        origin[(origin == O_CTOR) | (origin == O_NOCTOR)] = O_UNKNOWN

    # regions and mapped memory
    region = np.zeros(n, dtype=np.int64)
    maps = np.full(n, -1, dtype=np.int8)
    block = np.full(n, -1, dtype=np.int64)
    own_block = c.memory.block_of(phys) if c.memory is not None else np.full(n, -1, dtype=np.int64)
    if root.ttbr1 and n:
        region = c.region_bits(va, span)
        region[is_root] = 0
        if c.memory is not None:
            L = kernel.layout
            lin = ((region & R_LINEAR) != 0) & ~is_root
            vmm = ((region & R_VMEMMAP) != 0) & ~is_root & ~lin
            # Physical ranges in signed arithmetic: PHYS_OFFSET may be negative
            # (linear-map randomisation), so part of a span maps below PA 0.
            lo = np.zeros(n, dtype=np.int64)
            hi = np.zeros(n, dtype=np.int64)
            if lin.any():
                a = np.maximum(va[lin], np.uint64(L.page_offset)) - np.uint64(L.page_offset)
                b = np.minimum(va[lin] + (span[lin] - np.uint64(1)), np.uint64(L.page_end - 1)) \
                    - np.uint64(L.page_offset) + np.uint64(1)
                lo[lin] = a.astype(np.int64) + kernel.phys_offset
                hi[lin] = b.astype(np.int64) + kernel.phys_offset
            if vmm.any():
                size = c.layout.size
                a = (np.maximum(va[vmm], np.uint64(L.vmemmap_start)) - np.uint64(L.vmemmap_start)).astype(np.int64)
                b = (np.minimum(va[vmm] + (span[vmm] - np.uint64(1)), np.uint64(L.vmemmap_end - 1))
                     - np.uint64(L.vmemmap_start)).astype(np.int64) + 1
                base_pfn = kernel.phys_offset >> c.shift  # the first struct page at VMEMMAP_START
                lo[vmm] = (a // size + base_pfn) << c.shift
                hi[vmm] = ((b + size - 1) // size + base_pfn) << c.shift
            sel = lin | vmm
            if sel.any():
                slo = np.maximum(lo[sel], 0).astype(np.uint64)
                shi = np.maximum(hi[sel], 0).astype(np.uint64)
                maps[sel] = c.memory.kinds(slo, shi)
                block[sel] = c.memory.block_of(slo)
                # a span that starts below the first block: the first block it maps
                miss = block[sel] < 0
                if miss.any() and c.memory.blocks:
                    first = c.memory._blk_start
                    k2 = np.searchsorted(first, slo[miss], side="left")
                    ok2 = (k2 < len(first)) & (first[np.minimum(k2, len(first) - 1)] < shi[miss])
                    sub = block[sel]
                    sub[miss] = np.where(ok2, k2, -1)
                    block[sel] = sub

    expected = _expected(c, kind, root, level, region, maps, is_root)
    if kernel.kasan is not None and n:
        # kasan_early_shadow_{p4d,pud,pmd,pte}: bss of the image, whatever maps them
        early = np.isin(phys, np.array(sorted(kernel.kasan.tables.values()), dtype=np.uint64))
        expected[early & ~is_root] = B_IMAGE
    ptlock, locks = _ptlocks(c, kind, level, facts, ok)
    out = Classification(
        kernel=kernel, root=root, kind=kind, features=F, phys=phys, level=level, va=va, span=span,
        parents=parents, facts=facts, origin=origin, expected=expected, ptlock=ptlock, region=region,
        maps=maps, block=block, own_block=own_block, in_memblock=in_mb, image=image, in_image=in_image,
        locks=locks,
        findings=[], classifier=c,
    )
    out.findings = _findings(out, free, altmap, reserved)
    t3 = time.perf_counter()
    out.stats = {"tables": n, "seconds": t3 - t0, "struct_page_seconds": t2 - t1,
                 "reads": c.pages.reads, "bytes_read": c.pages.bytes_read}
    return out


# -- expected origins -------------------------------------------------------------


def _pgd_bytes(kernel: Kernel) -> int:
    r = kernel.regime
    top_build = 4 - r.build_levels
    return (1 << (r.va_bits - r.shift(top_build))) * 8


def _expected(c: Classifier, kind: str, root: Root, level: np.ndarray, region: np.ndarray,
              maps: np.ndarray, is_root: np.ndarray) -> np.ndarray:
    """Bitmask of the origins the kernel's allocation sites give each table
    (kernel-model.md 2.2, era by :class:`Features`)."""
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


def _allocator(cls: Classification, i: int, image_symbol: Optional[str]) -> str:
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


# -- ptlocks ------------------------------------------------------------------------


def _ptlocks(c: Classifier, kind: str, level: np.ndarray, facts: np.ndarray, ok: np.ndarray):
    F = c.features
    n = len(level)
    split = ((level == 3) & F.split_pte) | ((level == 2) & F.split_pmd)
    typed = facts["table"]
    word = facts["ptl"]
    if kind in (K_INIT, K_TRAMP):
        # Kernel tables: only a ctor'd table has (and needs) a split lock, and
        # none from v6.16 (ptlock_init is skipped for init_mm).
        need = split & typed & (not F.init_mm_no_ptl)
    else:
        need = split.copy()
    state = np.full(n, P_NA, dtype=np.int8)
    locks: Dict[int, np.void] = {}
    if F.alloc_split:
        ptr = word
        has = (ptr != 0) & ~(facts["slab"] & ~need)
        state[need & ~has] = P_MISSING
        idx = np.nonzero(has)[0]
        if len(idx):
            objs = c.ptl.read(ptr[idx])
            for j, i in enumerate(idx.tolist()):
                locks[i] = objs[j]
            live = objs["ok"] & objs["slab"]
            if c.ptl.ptl_cache:
                live &= (objs["cache"] == np.uint64(c.ptl.ptl_cache)) | (objs["cache"] == 0)
            if F.debug_spinlock:
                live &= objs["magic"] == np.uint32(SPINLOCK_MAGIC)
                if not c.layout.rt_spinlock:
                    # An unlocked DEBUG_SPINLOCK always has owner_cpu -1 and owner -1:
                    # anything else on an unlocked lock is a free pointer over a freed object.
                    intact = (objs["val"] != 0) | ((objs["owner_cpu"] == np.uint32(0xFFFFFFFF))
                                                   & (objs["owner"] == np.uint64(SPINLOCK_OWNER_INIT)))
                    live &= intact
            held = objs["held"]
            st = np.where(live, np.where(held, P_HELD, P_INIT), P_DANGLING).astype(np.int8)
            # A lock where none belongs: on a page without the table type (a
            # table no more, or never ctor'd), or where the era/level has none.
            st = np.where(~typed[idx] | ~need[idx], np.where(live & held, P_HELD, P_STALE), st)
            state[idx] = st
    else:
        val = (word & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        zero = val == 0
        state[need & zero & typed] = P_INLINE0
        state[need & zero & ~typed] = P_MISSING
        state[need & ~zero] = P_HELD
        state[~need & ~zero] = P_STALE
    # A slab page's word at page->ptl belongs to the slab (sub-page pgds).
    state[facts["slab"] & ~need] = P_NA
    state[~ok] = P_UNKNOWN
    return state, locks


# -- evidence and findings ----------------------------------------------------------


def _evidence(cls: Classification, i: int, image_symbol: Optional[str], lock) -> List[str]:
    c = cls.classifier
    f = cls.facts[i]
    L = c.layout
    out: List[str] = []
    if not f["ok"]:
        return ["struct page not readable"] + ([f"in kernel image ({image_symbol})"] if image_symbol else [])
    o = int(cls.origin[i])
    if cls.image[i]:
        out.append(f"PA in kernel image: {image_symbol or 'no table symbol here'}")
    elif cls.in_image[i]:
        out.append("PA in [_text, _end) but freed after boot (init sections): now buddy memory")
    if cls.origin[i] == O_ALTMAP:
        out.append("PFN inside a memory block's altmap reserve")
    if L.pg_reserved is not None:
        out.append("PG_reserved" if f["reserved"] else "not PG_reserved")
    if cls.in_memblock[i]:
        out.append("in memblock.reserved")
    elif c.memblock is not None and o == O_MEMBLOCK:
        out.append("not in memblock.reserved")
    desc = L.scheme.describe(int(f["page_type"]))
    out.append(f"page_type {int(f['page_type']):#010x} ({desc})")
    if f["slab"]:
        out.append("slab page" + (" (head of a compound slab)" if f["tail"] else ""))
    if f["buddy"]:
        out.append("PageBuddy: the page is free")
    if f["refcount"] != 1 and not f["slab"]:
        out.append(f"refcount {int(f['refcount'])}")
    if f["self_linked"]:
        out.append("lru self-linked (never on a buddy list)")
    elif f["poisoned"]:
        out.append("lru LIST_POISON (left the buddy lists)")
    lvl = int(cls.level[i])
    if f["table"] and lvl == 2:
        if int(f["w2"]) == 0:
            out.append("pmd_huge_pte NULL")
    if cls.maps[i] >= 0:
        out.append(f"maps {MAPS_NAMES[int(cls.maps[i])]} memory")
    p = int(cls.ptlock[i])
    word = int(f["ptl"])
    if p == P_INLINE0:
        out.append("inline ptl 0: initialised and never-initialised look alike (no DEBUG_SPINLOCK); "
                   "the table type says ptlock_init ran")
    elif p == P_MISSING:
        if c.features.alloc_split:
            out.append("page->ptl NULL where the mm needs a split lock")
        else:
            out.append("no table type: the ctor (and ptlock_init) never ran; the inline word is 0")
    elif p == P_STALE:
        out.append(f"ptl word {word:#x} on a page that should have none")
    elif p in (P_INIT, P_HELD, P_DANGLING) and lock is not None:
        out.append(f"ptl -> {int(lock['ptr']):#x}")
        if c.features.debug_spinlock:
            out.append(f"magic {int(lock['magic']):#x}" + (" ok" if int(lock["magic"]) == SPINLOCK_MAGIC else ""))
        if not lock["slab"]:
            out.append("pointer not into a slab page")
        if p == P_HELD:
            out.append(f"rt_mutex owner {int(lock['owner']):#x}" if c.layout.rt_spinlock
                       else f"lock word {int(lock['val']):#x}")
    elif p == P_HELD:
        out.append(f"lock word {word & 0xFFFFFFFF:#x}")
    if int(cls.parents[i]) > 1:
        out.append(f"{int(cls.parents[i])} parent entries")
    return out


def _findings(cls: Classification, free: np.ndarray, altmap: np.ndarray, reserved: np.ndarray) -> List[Finding]:
    out: List[Finding] = []
    r = cls.kernel.regime
    c = cls.classifier
    mism = ((cls.expected >> cls.origin.astype(np.int64)) & 1) == 0
    unknown = cls.origin == O_UNKNOWN
    facts = cls.facts

    def add(sev: str, kind: str, i: int, sentence: str) -> None:
        out.append(Finding(sev, kind, int(cls.phys[i]), r.level_name(int(cls.level[i])), cls.root.name,
                           cls._region_text(i), sentence))

    for i in np.nonzero(mism & ~unknown & ~altmap)[0].tolist():
        exp = "/".join(ORIGINS[k] for k in range(len(ORIGINS)) if int(cls.expected[i]) >> k & 1)
        add("error" if int(cls.origin[i]) in (O_CTOR, O_NOCTOR, O_MEMBLOCK) else "warning", "origin mismatch", i,
            f"{r.level_name(int(cls.level[i]))} table {int(cls.phys[i]):#x} ({cls._region_text(i)}) is "
            f"{ORIGINS[int(cls.origin[i])]}; this kernel allocates it as {exp or 'nothing'}")
    for i in np.nonzero(altmap)[0].tolist():
        add("error", "table in altmap", i,
            f"table {int(cls.phys[i]):#x} lies in a memory block's altmap reserve: no allocator puts "
            "page tables there, and removing the block frees it under the MMU")
    for i in np.nonzero(free)[0].tolist():
        what = "PageBuddy (on the free lists)" if facts["buddy"][i] else "refcount 0"
        add("critical", "table page free", i,
            f"table {int(cls.phys[i]):#x} is still referenced but its page is {what}: use after free")
    both = reserved & facts["table"] & facts["ok"]
    for i in np.nonzero(both)[0].tolist():
        add("error", "reserved and typed", i,
            f"table {int(cls.phys[i]):#x} is PG_reserved and carries the table type: a ctor ran on a "
            "memblock page, so NR_PAGETABLE counts a page no dtor will meet")
    for code, sev, what in ((P_MISSING, "error", "has no split ptlock"),
                            (P_DANGLING, "critical", "has a ptl pointer that is not a live page->ptl object"),
                            (P_STALE, "warning", "carries a ptl word it should not have"),
                            (P_HELD, "info", "has its ptlock held")):
        for i in np.nonzero(cls.ptlock == code)[0].tolist():
            if code == P_MISSING and cls.kind in (K_EFI, K_USER) and not facts["table"][i] \
                    and mism[i]:
                continue  # the origin mismatch already says the ctor never ran
            add(sev, f"ptlock {PTLOCKS[code]}", i,
                f"{r.level_name(int(cls.level[i]))} table {int(cls.phys[i]):#x} {what}")
    if c.memory is not None:
        blocks = c.memory.blocks
        for i in np.nonzero(cls.own_block >= 0)[0].tolist():
            b = blocks[int(cls.own_block[i])]
            if b.zone == "Movable" and not cls.image[i]:
                add("warning", "table in ZONE_MOVABLE", i,
                    f"table {int(cls.phys[i]):#x} lives in block {b.id} (Movable): offlining it must migrate "
                    "an unmovable page")
    return out


# -- roots ----------------------------------------------------------------------------


def tramp_root(kernel: Kernel) -> Optional[Root]:
    """The KPTI trampoline's root (``tramp_pg_dir``), a TTBR1 root like
    swapper's; None when the kernel has none."""
    t = kernel.target
    addr = classifier_for(kernel)._image_symbol("tramp_pg_dir")
    if addr is None:
        return None
    base = kernel.root("init_mm")
    try:
        data = t.read_phys(kernel.virt_to_phys(addr), base.entries * 8)
    except TargetFault:
        return None
    if not any(data):
        return None  # KPTI not in use: map_entry_trampoline() never ran
    return dataclasses.replace(base, name="tramp_pg_dir", phys=kernel.virt_to_phys(addr))


def task_roots(kernel: Kernel) -> List[Root]:
    """One root per distinct mm in use (needs a drgn Program with debug info):
    every task's mm, then the mms borrowed lazily as ``active_mm`` by kernel
    threads and each CPU's idle task. A lazy mm outlives its process (its
    mm_count holds it, mm_users is 0), and from v6.14 a page-sized pgd
    carries the table type, so without it the audit would call that pgd a
    leak."""
    prog = getattr(kernel.target, "prog", None)
    if prog is None or not kernel.target.has_debug_info:
        return []
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.sched import idle_task

    seen = {prog["init_mm"].address_}  # the kernel root, walked as init_mm
    out = []

    def add(mm, name: str) -> None:
        if mm.value_() and mm.value_() not in seen:
            seen.add(mm.value_())
            out.append(kernel.user_root(name, kernel.virt_to_phys(mm.pgd.value_())))

    lazy = []
    try:
        for task in for_each_task(prog):
            add(task.mm, f"pid {task.pid.value_()}")
            if not task.mm:
                lazy.append((task.active_mm, f"lazy mm ({task.comm.string_().decode()}[{task.pid.value_()}])"))
        lazy += [(idle_task(prog, cpu).active_mm, f"lazy mm (cpu {cpu} idle)") for cpu in for_each_possible_cpu(prog)]
        for mm, name in lazy:
            add(mm, name)
    except Exception:  # a damaged task list: the roots found so far
        pass
    return out


def resolve_roots(kernel: Kernel, spec: str) -> List[Root]:
    """``init_mm``, ``efi_mm``, ``vmemmap``, ``tramp``, a pid, ``pgd:PHYS``,
    ``tasks`` (every task's mm) or ``all`` (init_mm, efi_mm, tramp_pg_dir
    and every task's mm)."""
    if spec in ("tramp", "tramp_pg_dir"):
        root = tramp_root(kernel)
        if root is None:
            raise MMInspectError(f"{kernel.target.name}: no KPTI trampoline tables (tramp_pg_dir empty or absent)")
        return [root]
    if spec == "tasks":
        roots = task_roots(kernel)
        if not roots:
            raise MMInspectError(f"{kernel.target.name}: no task mms (needs debug info)")
        return roots
    if spec != "all":
        return [kernel.root(spec)]
    roots = [kernel.root("init_mm")]
    try:
        roots.append(kernel.root("efi_mm"))
    except MMInspectError:
        pass
    tr = tramp_root(kernel)
    if tr is not None:
        roots.append(tr)
    roots += task_roots(kernel)
    return roots


def classify_roots(kernel: Kernel, roots: Sequence[Root], progress=None) -> List[Classification]:
    """Walk and classify each root."""
    c = classifier_for(kernel)
    return [classify_walk(kernel, walk(kernel, root, progress), c) for root in roots]


def capture_hook(kernel: Kernel, w: Walk) -> None:
    """Called by :func:`mminspect.capture.capture` so that bundles hold the
    struct pages, memblock and memory-map reads the classifier needs."""
    cls = classify_walk(kernel, w)
    for i in range(min(len(cls), 64)):  # the evidence path reads owners etc.
        cls.record(i)


# -- the NR_PAGETABLE audit ---------------------------------------------------------


@dataclass
class Audit:
    """The NR_PAGETABLE audit of one kernel (see :func:`audit`)."""

    counter: Optional[int]  #: exact: node vm_stat + per-CPU deltas, summed over nodes
    per_node: List[Dict[str, int]]
    global_vm_node_stat: Optional[int]  #: the folded global vm_node_stat[NR_PAGETABLE]
    counter_evidence: str
    typed: np.ndarray  #: PFNs of every page typed as a page table (memmap scan)
    scanned_pages: int
    unreadable_pages: int
    roots: Dict[str, int]  #: root -> table pages walked
    root_errors: Dict[str, str]
    reachable_typed: np.ndarray  #: typed PFNs reached from a root
    unreachable_typed: np.ndarray  #: typed PFNs no root reaches (leaks, or RCU-pending frees)
    unreachable_facts: np.ndarray
    #: per unreachable typed page: what its words suggest (an RCU free in flight ...)
    unreachable_hints: List[str]
    untyped_tables: Dict[Tuple[str, str, str], int]  #: (root, level, region) -> reachable tables without ctor
    expected_ctor_missing: List[Tuple[str, int, str]]  #: (root, phys, level) ctor expected, not typed
    multi_root: List[Tuple[int, Tuple[str, ...]]]  #: tables (phys) reached from two or more roots
    hot_overlap: Dict[Tuple[str, str, str], int]  #: (root, level, maps) -> tables whose span maps hot-added memory
    mixed_spans: List[Tuple[str, int, str]]  #: (root, phys, level) tables mapping boot and hot-added memory
    writable_roots: List[str]  #: static root tables mapped writable where the kernel maps them read-only
    memcg: Dict[int, int]  #: memcg_data (flags cleared) -> typed pages charged to it
    page_shift: int = 12
    stats: Dict[str, float] = field(default_factory=dict)

    @property
    def typed_count(self) -> int:
        return int(len(self.typed))

    @property
    def difference(self) -> Optional[int]:
        """typed pages - counter (None when the counter is unknown)."""
        return None if self.counter is None else self.typed_count - self.counter

    def explanation(self) -> List[str]:
        """Sentences that account for the difference, page by page where pages exist."""
        out = []
        d = self.difference
        if d is None:
            out.append("the kernel's counter could not be read: only the typed pages are reported")
        elif d == 0:
            out.append(f"NR_PAGETABLE {self.counter} equals the {self.typed_count} pages typed as page tables")
        else:
            out.append(f"{self.typed_count} typed pages vs NR_PAGETABLE {self.counter}: difference {d:+d}")
            if d < 0:
                out.append(f"{-d} page(s) counted but not typed: tables freed without a dtor on a kernel whose "
                           "free clears the type (v6.17+), or ctors whose type was lost; no page is left to "
                           "point at")
            else:
                out.append(f"{d} typed page(s) not counted: a dtor ran without a ctor (the counter dropped, "
                           "the type stayed), or a page typed by hand")
        if len(self.unreachable_typed):
            out.append(f"{len(self.unreachable_typed)} typed page(s) no walked root reaches: leaked tables "
                       "(counted and typed, freed without a dtor into nowhere) or frees still waiting for RCU")
        return out

    def as_dict(self) -> Dict[str, object]:
        return {
            "counter": self.counter,
            "per_node": self.per_node,
            "global_vm_node_stat": self.global_vm_node_stat,
            "counter_evidence": self.counter_evidence,
            "typed_pages": self.typed_count,
            "difference": self.difference,
            "explanation": self.explanation(),
            "scanned_pages": self.scanned_pages,
            "unreadable_pages": self.unreadable_pages,
            "roots": self.roots,
            "root_errors": self.root_errors,
            "reachable_typed": int(len(self.reachable_typed)),
            "unreachable_typed": [
                {"pfn": int(f["pfn"]), "phys": int(f["pfn"]) << self.page_shift, "page_type": int(f["page_type"]),
                 "refcount": int(f["refcount"]), "ptl": int(f["ptl"]), "w1": int(f["w1"]), "w2": int(f["w2"]),
                 "hint": h}
                for f, h in zip(self.unreachable_facts, self.unreachable_hints)
            ],
            "untyped_tables": [{"root": k[0], "level": k[1], "region": k[2], "count": v}
                               for k, v in sorted(self.untyped_tables.items())],
            "expected_ctor_missing": [{"root": a, "phys": b, "level": c} for a, b, c in self.expected_ctor_missing],
            "multi_root": [{"phys": p, "roots": list(r)} for p, r in self.multi_root],
            "hot_overlap": [{"root": a, "level": b, "maps": c, "count": v}
                            for (a, b, c), v in sorted(self.hot_overlap.items())],
            "mixed_spans": [{"root": a, "phys": b, "level": c} for a, b, c in self.mixed_spans],
            "writable_roots": self.writable_roots,
            "memcg": {hex(k): v for k, v in self.memcg.items()},
            "stats": self.stats,
        }


def _timed(fn, *args) -> tuple:
    t0 = time.perf_counter()
    return (*fn(*args), time.perf_counter() - t0)


def scan_typed(kernel: Kernel, classifier: Optional[Classifier] = None) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Every page of the memmap typed as a page table: (PFNs, their facts,
    pages scanned, pages whose struct page could not be read)."""
    c = classifier or classifier_for(kernel)
    if c.memory is None:
        raise MMInspectError(f"{kernel.target.name}: no memory sections: cannot scan the memmap")
    facts = []
    scanned = bad = 0
    for chunk, pages, unreadable in c.pages.scan(c.memory.pfn_ranges(c.shift), want="table"):
        scanned += pages
        bad += unreadable
        if len(chunk):
            facts.append(chunk)
    f = np.concatenate(facts) if facts else c.pages.facts(np.empty(0, np.uint64))
    return f["pfn"].copy(), f, scanned, bad


def audit(kernel: Kernel, roots: Optional[Sequence[Root]] = None, progress=None) -> Audit:
    """
    The NR_PAGETABLE audit: the kernel's exact counter, every table-typed
    page in the memmap, and what the walked roots reach (default: init_mm,
    efi_mm, tramp_pg_dir and every task's mm).
    """
    t0 = time.perf_counter()
    c = classifier_for(kernel)
    # the counter
    per_node: List[Dict[str, int]] = []
    try:
        nodes = node_stat(kernel, "NR_PAGETABLE")
        counter: Optional[int] = sum(x.exact for x in nodes)
        per_node = [{"nid": x.nid, "vm_stat": x.global_value, "percpu_delta": x.percpu_delta, "exact": x.exact}
                    for x in nodes]
        idx = kernel.target.constant("NR_PAGETABLE")
        cev = (f"enum node_stat_item NR_PAGETABLE = {idx}: pglist_data.vm_stat plus every possible CPU's "
               f"vm_node_stat_diff, over {len(nodes)} node(s)")
    except MMInspectError as e:
        counter, cev = None, str(e)
    gval = global_node_stat(kernel, "NR_PAGETABLE")
    t1 = time.perf_counter()
    # The memmap scan reads the dump file outside the GIL: with the file at
    # hand it runs in a child process while this one walks the roots.
    child = in_child(lambda: (*_timed(scan_typed, kernel, c), peak_rss_kib())) \
        if FORK_SCAN and getattr(kernel.target, "core_file", None) is not None else None
    # the roots
    errors: Dict[str, str] = {}
    if roots is None:
        roots = resolve_roots(kernel, "all")
        if not any(r.name == "efi_mm" for r in roots):
            try:
                kernel.root("efi_mm")
            except MMInspectError as e:  # why it is missing: no DWARF, or no EFI runtime
                errors["efi_mm"] = str(e)
    classes: List[Classification] = []
    for root in roots:
        try:
            classes.append(classify_walk(kernel, walk(kernel, root, progress), c))
        except MMInspectError as e:
            errors[root.name] = str(e)
    t2 = time.perf_counter()
    got = None
    if child is not None:
        try:
            got = child()
        except RuntimeError:  # the child failed: scan here, as without a file
            pass
    forked = got is not None
    if not forked:
        got = (*_timed(scan_typed, kernel, c), 0)
    typed, typed_facts, scanned, bad, scan_seconds, child_peak = got
    t_scan = time.perf_counter()
    reach_pfns = []
    objs, owners = [], []
    untyped: Counter = Counter()
    missing_ctor: List[Tuple[str, int, str]] = []
    hot: Counter = Counter()
    mixed: List[Tuple[str, int, str]] = []
    r = kernel.regime
    for k, cl in enumerate(classes):
        reach_pfns.append(cl.phys >> np.uint64(c.shift))
        u = unique(cl.phys)  # table objects: two sub-page pgds may share a page
        objs.append(u)
        owners.append(np.full(len(u), k, dtype=np.int64))
        ok = cl.facts["ok"]
        nt = ok & ~cl.facts["table"]
        # group the untyped tables by (level, region) without a loop per table
        key = cl.level.astype(np.int64)[nt] * (1 << 16) + cl.region[nt]
        uk, first, cnt = np.unique(key, return_index=True, return_counts=True)
        idx = np.nonzero(nt)[0]
        for j, n in zip(first.tolist(), cnt.tolist()):
            i = int(idx[j])
            untyped[(cl.root.name, r.level_name(int(cl.level[i])), cl._region_text(i))] += n
        want = ((cl.expected & B_CTOR) != 0) & ((cl.expected & ~B_CTOR) == 0) & nt
        for i in np.nonzero(want)[0].tolist():
            missing_ctor.append((cl.root.name, int(cl.phys[i]), r.level_name(int(cl.level[i]))))
        for i in np.nonzero((cl.maps == MAPS_HOT) | (cl.maps == MAPS_MIXED))[0].tolist():
            lname = r.level_name(int(cl.level[i]))
            hot[(cl.root.name, lname, MAPS_NAMES[int(cl.maps[i])])] += 1
            if cl.maps[i] == MAPS_MIXED:
                mixed.append((cl.root.name, int(cl.phys[i]), lname))
    allreach = unique(np.concatenate(reach_pfns)) if reach_pfns else np.empty(0, np.uint64)
    isin = contains(allreach, typed)
    multi: List[Tuple[int, Tuple[str, ...]]] = []
    if objs:
        o = np.concatenate(objs)
        w = np.concatenate(owners)
        srt = np.argsort(o, kind="stable")
        o, w = o[srt], w[srt]
        dup = np.nonzero(o[1:] == o[:-1])[0]
        for p in np.unique(o[dup]).tolist():
            names = tuple(classes[int(x)].root.name for x in w[o == np.uint64(p)].tolist())
            multi.append((int(p), names))
    # memcg charge of typed pages (low bits of memcg_data are flags: MEMCG_DATA_OBJEXTS/KMEM)
    memcg: Dict[int, int] = {}
    if len(typed_facts) and c.layout.off_memcg is not None:
        u, n = np.unique(typed_facts["memcg"] & ~np.uint64(7), return_counts=True)
        memcg = {int(a): int(b) for a, b in zip(u.tolist(), n.tolist())}
    t4 = time.perf_counter()
    return Audit(
        counter=counter,
        per_node=per_node,
        global_vm_node_stat=gval,
        counter_evidence=cev,
        typed=typed,
        scanned_pages=scanned,
        unreadable_pages=bad,
        roots={cl.root.name: len(cl) for cl in classes},
        root_errors=errors,
        reachable_typed=typed[isin],
        unreachable_typed=typed[~isin],
        unreachable_facts=typed_facts[~isin],
        unreachable_hints=[_unreachable_hint(kernel, f, sorted(errors)) for f in typed_facts[~isin]],
        untyped_tables=dict(untyped),
        expected_ctor_missing=missing_ctor,
        multi_root=multi,
        hot_overlap=dict(hot),
        mixed_spans=mixed,
        writable_roots=_writable_roots(kernel, classes),
        memcg=memcg,
        page_shift=c.shift,
        stats={"counter_seconds": t1 - t0, "scan_seconds": scan_seconds, "walk_seconds": t2 - t1,
               "scan_forked": forked, "scan_wait_seconds": t_scan - t2,
               "scan_child_peak_kib": child_peak,
               "compare_seconds": t4 - t_scan, "seconds": t4 - t0},
    )


def _unreachable_hint(kernel: Kernel, f, unwalked: Sequence[str] = ()) -> str:
    """What a typed page no root reaches looks like: a table whose free waits
    for RCU (ptdesc pt_rcu_head at offset 8: its func names the callback),
    one freed without a dtor, or a leak."""
    prog = getattr(kernel.target, "prog", None)
    func = int(f["w2"])
    if prog is not None and func:
        try:
            sym = prog.symbol(func)
            return f"pt_rcu_head.func = {sym.name}: an RCU-deferred table free still pending"
        except LookupError:
            pass
    if int(f["refcount"]) == 0:
        return "refcount 0 and still typed: freed without a dtor (the type survives the free before v6.17)"
    if unwalked:
        return f"typed, referenced by no walked table; not walked: {', '.join(unwalked)} (it may be there)"
    if f["poisoned"]:
        return "allocated (refcount %d) and typed, referenced by no walked table: leaked" % int(f["refcount"])
    return "typed, referenced by no walked table (a root not walked, or a leak)"


def _writable_roots(kernel: Kernel, classes: Sequence[Classification]) -> List[str]:
    """Static root tables the kernel maps read-only (swapper_pg_dir and
    tramp_pg_dir live in .rodata since v4.19, "arm64/mm: Move swapper_pg_dir
    to rodata section", and are written through the fixmap) that init_mm maps
    writable, through their kernel-image VA or their linear-map alias."""
    init = next((cl for cl in classes if cl.kind == K_INIT and cl.root.name == "init_mm"), None)
    if init is None:
        return []
    c = init.classifier
    out = []
    for name in ("swapper_pg_dir", "tramp_pg_dir"):
        va = c._image_symbol(name)
        if va is None:
            continue
        for alias in (va, kernel.phys_to_virt(kernel.virt_to_phys(va))):
            try:
                m = next(walk(kernel, kernel.root("init_mm", alias, alias + 1)).mappings(), None)
            except MMInspectError:
                continue
            if m is not None and not m.effective["ro"]:
                out.append(f"{name} is mapped writable at {alias:#x} ({m.attrs})")
    return out
