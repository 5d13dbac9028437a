"""The classifier and the NR_PAGETABLE audit on synthetic kernels.

The kernels come from :func:`mminspect.synthetic.make_server_kernel`, whose
generator decides every table's allocator itself (memblock pool, kernel-image
pool, buddy pool, ctor or not) and writes 6.12 struct pages to match; those
generator facts are the oracle here, never mminspect's output. On top of
them each test hand-makes the struct pages, ptl objects, memory blocks and
node counters of one case (each origin, each ptlock state, each finding),
including cases no real dump has. DWARF answers (enumerators, offsets,
sizes, symbols) come from a small in-memory target, as a 6.12 kernel with or
without DEBUG_SPINLOCK would give them.
"""

import numpy as np
import pytest

from mminspect.classify import (
    Classifier,
    audit,
    classifier_for,
    classify_walk,
    resolve_roots,
)
from mminspect.kernel import Kernel
from mminspect.memory import Block, MemoryMap
from mminspect.pages import SPINLOCK_MAGIC, StructPages
from mminspect.synthetic import REGIMES_BY_NAME, make_server_kernel
from mminspect.synthetic.vmcore import vmcoreinfo_text
from mminspect.target.base import TargetFault, parse_vmcoreinfo
from mminspect.walk import walk

GiB = 1 << 30
U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1
PG_RESERVED = 13  # 6.12 enum pageflags
PGTY_TABLE, PGTY_SLAB, PGTY_BUDDY = 0xF2, 0xF5, 0xF0
NR_PAGETABLE = 38

#: A 6.12 kernel's DWARF answers (offsets of struct ptdesc/page, enumerators).
DWARF_612 = {
    "constants": {"PG_reserved": PG_RESERVED, "PGTY_table": PGTY_TABLE, "PGTY_slab": PGTY_SLAB,
                  "PGTY_buddy": PGTY_BUDDY, "NR_PAGETABLE": NR_PAGETABLE, "N_ONLINE": 1},
    "sizes": {"spinlock_t": 4, "struct ptdesc": 64, "struct page": 64, "struct cpumask": 8},
    "offsets": {
        ("struct ptdesc", "__page_flags"): 0, ("struct ptdesc", "pmd_huge_pte"): 16,
        ("struct ptdesc", "ptl"): 40, ("struct ptdesc", "__page_type"): 48,
        ("struct ptdesc", "__page_refcount"): 52, ("struct ptdesc", "pt_memcg_data"): 56,
        ("struct page", "lru"): 8, ("struct page", "mapping"): 24, ("struct page", "index"): 32,
        ("struct slab", "slab_cache"): 8,
        ("struct task_struct", "pid"): 8, ("struct task_struct", "comm"): 16,
        ("struct mm_struct", "pgd"): 72,
        ("struct pglist_data", "per_cpu_nodestats"): 0x80, ("struct pglist_data", "vm_stat"): 0x100,
        ("struct per_cpu_nodestat", "vm_node_stat_diff"): 1,
    },
    "symbols": {"__pi_early_map_kernel": 0},  # v6.9+: the image maps itself (value unused)
}
#: ... and with DEBUG_SPINLOCK: spinlock_t is 24 bytes, so page->ptl is a pointer.
DEBUG_SPINLOCK = {
    "sizes": {"spinlock_t": 24},
    "offsets": {("spinlock_t", "rlock.magic"): 4, ("spinlock_t", "rlock.owner_cpu"): 8,
                ("spinlock_t", "rlock.owner"): 16},
}


class SynthTarget:
    """A :class:`~mminspect.target.base.Target` over a built synthetic kernel:
    physical reads from the generator's memory, kernel-virtual reads through
    the linear map, the kernel image and the generator's vmemmap."""

    def __init__(self, built, dwarf=None, debug=True):
        self.built = built
        self.name = "synthetic"
        s = built.server
        self.info = parse_vmcoreinfo(vmcoreinfo_text(built, extra=s.vmcoreinfo))
        self.dwarf = {"constants": {}, "sizes": {}, "offsets": {}, "symbols": {}}
        for part in (DWARF_612, dwarf or {}):
            for key, value in part.items():
                self.dwarf[key].update(value)
        self.debug = debug
        self.hidden = []  # VA ranges whose pages are left out of the dump
        r = built.regime
        self.page_offset = r.page_offset
        self.page_end = r.page_end

    # -- memory -------------------------------------------------------------------
    def read_phys(self, pa, size):
        if not self.built.in_ram(pa, size):
            raise TargetFault(pa, size, True, "outside RAM")
        for lo, hi in self.hidden:  # filtered out of the dump, as makedumpfile does
            plo = self._v2p(lo)
            if plo is not None and plo < pa + size and pa < plo + (hi - lo):
                raise TargetFault(pa, size, True, "not in the dump")
        return self.built.read_phys(pa, size)

    def v2p(self, va):
        for lo, hi in self.hidden:
            if lo <= va < hi:
                return None
        return self._v2p(va)

    def _v2p(self, va):
        b = self.built
        if self.page_offset <= va < self.page_end:
            return va - self.page_offset + b.phys_offset
        if b.kimage_va <= va < b.kimage_va + b.image_size:
            return (va - b.kimage_voffset) & U64
        for vva, vpa, n in b.server.vmemmap:
            if vva <= va < vva + n:
                return vpa + (va - vva)
        return None

    def read_virt(self, va, size):
        out = b""
        ps = self.built.page_size
        while size:
            n = min(size, ps - va % ps)
            pa = self.v2p(va)
            if pa is None:
                raise TargetFault(va, size, False, "not mapped")
            out += self.read_phys(pa, n)
            va += n
            size -= n
        return out

    def write_virt(self, va, data):
        self.built._b.write_phys(self.v2p(va), data)

    # -- kernel facts -----------------------------------------------------------
    def vmcoreinfo(self):
        return self.info

    @property
    def has_debug_info(self):
        return self.debug

    def symbol(self, name):
        if name in self.dwarf["symbols"]:
            return self.dwarf["symbols"][name]
        v = self.info.get(f"SYMBOL({name})")
        return int(v, 16) if v else None

    def sizeof(self, name):
        return self.dwarf["sizes"].get(name) if self.debug else None

    def offsetof(self, typ, member):
        return self.dwarf["offsets"].get((typ, member)) if self.debug else None

    def constant(self, name):
        return self.dwarf["constants"].get(name) if self.debug else None


class Synth:
    """A built server kernel, its target and kernel, and the generator's facts."""

    def __init__(self, regime="4k-va48", size=4 * GiB, hotadd=GiB, dwarf=None, debug=True):
        self.built = make_server_kernel(REGIMES_BY_NAME[regime], size, hotadd=hotadd)
        self.s = self.built.server
        self.b = self.built._b
        self.ps = self.built.page_size
        self.target = SynthTarget(self.built, dwarf, debug)
        # efi_mm: an mm_struct whose pgd is the generator's efi root
        mm_pa = self.b.alloc_page("buddy")
        self.target.dwarf["symbols"]["efi_mm"] = self.built.phys_to_virt(mm_pa)
        efi = self.built.roots["efi"]
        self.b.write_phys(mm_pa + 72, efi.va.to_bytes(8, "little"))
        self.kernel = Kernel(self.target)
        self.pools = {k: (p.start, p.end) for k, p in self.b._pools.items()}
        # make_server_kernel's buddy pool overlaps the kernel image, and its
        # buddy struct pages overwrite the image's: restore what
        # reserve_bootmem_region() leaves on every image page.
        for pa in range(self.built.image_pa, self.built.image_pa + self.built.image_size, self.ps):
            va = self.sp_va(pa)
            self.set_page(pa, flags=1 << PG_RESERVED, w1=va + 8, w2=va + 8, page_type=U32, refcount=1)

    # -- the generator's oracle ---------------------------------------------------
    def origin_of(self, pa):
        """The origin the generator gave the table page at ``pa``."""
        page = pa - pa % self.ps
        if self.built.image_pa <= page < self.built.image_pa + self.built.image_size:
            return "kernel-image"
        lo, hi = self.pools["buddy"]
        if lo <= page < hi:
            return "buddy-ctor" if page in set(self.s.typed.tolist()) else "buddy-no-ctor"
        return "memblock"

    def tables(self, root="swapper"):
        return [t for t in self.built.tables() if t.root == root]

    # -- struct page surgery ------------------------------------------------------
    def sp_va(self, pa):
        sp = StructPages(self.kernel)
        return int(sp.page_va(np.array([pa // self.ps], dtype=np.uint64))[0])

    def page_words(self, pa):
        return np.frombuffer(self.target.read_virt(self.sp_va(pa), 64), dtype="<u8").copy()

    def set_page(self, pa, flags=None, w1=None, w2=None, ptl=None, page_type=None, refcount=None):
        w = self.page_words(pa)
        if flags is not None:
            w[0] = flags
        if w1 is not None:
            w[1] = w1
        if w2 is not None:
            w[2] = w2
        if ptl is not None:
            w[5] = ptl
        pt = int(w[6]) & U32 if page_type is None else page_type
        rc = int(w[6]) >> 32 if refcount is None else refcount & U32
        w[6] = pt | (rc << 32)
        self.target.write_virt(self.sp_va(pa), w.tobytes())

    def classify(self, root="init_mm"):
        c = Classifier(self.kernel)  # fresh: tests change memory between runs
        return classify_walk(self.kernel, walk(self.kernel, self.kernel.root(root)), c), c


def _by_phys(cls):
    return {t.phys: t for t in cls}


def _hot_linear_ptes(syn):
    hs, hn = syn.s.hotadd
    lo, hi = syn.built.phys_to_virt(hs), syn.built.phys_to_virt(hs + hn)
    return [t.pa for t in syn.tables() if t.level == 3 and lo <= t.va_start < hi]


@pytest.fixture(scope="module")
def syn():
    return Synth()


# -- origins ------------------------------------------------------------------------


def test_every_origin_matches_the_generator(syn):
    cls, c = syn.classify()
    got = _by_phys(cls)
    tables = syn.tables()
    assert len(got) == len(tables) == syn.s.n_tables
    for t in tables:
        assert got[t.pa].origin == syn.origin_of(t.pa), (hex(t.pa), t.level, got[t.pa].evidence)
    # the generator's typed/reserved facts, page by page
    typed = {p for p, t in got.items() if t.typed}
    assert typed == set(syn.s.typed.tolist()) & set(got)
    reserved = {p for p, t in got.items() if t.reserved}
    assert reserved == set(syn.s.reserved.tolist()) | {t.pa for t in tables if syn.origin_of(t.pa) == "kernel-image"}
    # a 6.12 kernel's allocation sites give every one of them the origin it has
    assert cls.mismatches == 0 and not cls.findings
    root = got[syn.built.roots["swapper"].pa]
    assert root.origin == "kernel-image" and root.image_symbol == "swapper_pg_dir" and root.region == "root"


def test_hot_added_tables_map_hot_memory_in_their_block(syn):
    cls, c = syn.classify()
    got = _by_phys(cls)
    hs, hn = syn.s.hotadd
    hot = _hot_linear_ptes(syn)
    assert len(hot) == hn // (2 << 20)
    block_size = c.memory.block_size
    for pa in hot:
        t = got[pa]
        assert t.origin == "buddy-no-ctor" and t.maps == "hot-added" and t.region == "linear map"
        assert hs // block_size <= t.block < (hs + hn) // block_size
        assert t.allocator.startswith("__pgd_pgtable_alloc")
    boot = [t for t in syn.tables() if t.level == 3 and syn.origin_of(t.pa) == "memblock"]
    assert boot and all(got[t.pa].maps == "boot" for t in boot)
    assert all("lru self-linked" in " ".join(got[t.pa].evidence) for t in boot)


def test_efi_mm_origins_and_inline_ptlocks(syn):
    cls, _ = syn.classify("efi_mm")
    by_level = {t.level_name: t for t in cls}
    assert by_level["PTE"].origin == by_level["PMD"].origin == "buddy-ctor"
    assert by_level["PUD"].origin == by_level["PGD"].origin == "buddy-no-ctor"
    assert by_level["PTE"].ptlock == by_level["PMD"].ptlock == "inline-zero"
    assert by_level["PUD"].ptlock == by_level["PGD"].ptlock == "n/a"
    assert any("look alike" in e for e in by_level["PTE"].evidence)
    assert not cls.findings


def test_v616_era_expects_ctor_on_hot_added_linear_map():
    # v6.16: pgd_pgtable_alloc_init_mm() ctors hot-added linear-map tables; the
    # generator made them without a ctor (the v5.2..v6.15 way): every one is a
    # mismatch, the boot and vmemmap tables are not.
    syn = Synth(dwarf={"symbols": {"pgd_pgtable_alloc_init_mm": 0, "pgd_pgtable_alloc_special_mm": 0}})
    cls, c = syn.classify()
    assert c.features.init_mm_ctor and c.features.init_mm_no_ptl
    hot = set(_hot_linear_ptes(syn))
    mism = {f.phys for f in cls.findings if f.kind == "origin mismatch"}
    assert hot <= mism
    got = _by_phys(cls)
    for pa in mism - hot:
        assert got[pa].maps == "hot-added" and got[pa].region == "linear map"  # the hot PMD table
    efi, _ = syn.classify("efi_mm")
    assert {f.level for f in efi.findings if f.kind == "origin mismatch"} == {"PUD"}  # special_mm ctors PUDs


def test_memblock_and_ctor_where_buddy_is_expected():
    syn = Synth()
    hot = _hot_linear_ptes(syn)
    syn.set_page(hot[0], flags=1 << PG_RESERVED)
    syn.set_page(hot[1], page_type=PGTY_TABLE << 24)
    cls, _ = syn.classify()
    f = {x.phys: x for x in cls.findings if x.kind == "origin mismatch"}
    assert set(f) == {hot[0], hot[1]}
    got = _by_phys(cls)
    assert got[hot[0]].origin == "memblock" and got[hot[0]].expected == ("buddy-no-ctor",)
    assert got[hot[1]].origin == "buddy-ctor" and f[hot[1]].severity == "error"


def test_reserved_and_typed_free_page_and_unreadable():
    syn = Synth()
    hot = _hot_linear_ptes(syn)
    syn.set_page(hot[2], flags=1 << PG_RESERVED, page_type=PGTY_TABLE << 24)
    syn.set_page(hot[3], page_type=PGTY_BUDDY << 24, refcount=0)
    page = lambda pa: syn.sp_va(pa) & ~(syn.ps - 1)  # noqa: E731  (its memmap page)
    gone = next(pa for pa in hot if page(pa) not in (page(hot[2]), page(hot[3])))
    syn.target.hidden.append((page(gone), page(gone) + syn.ps))  # left out of the dump
    cls, _ = syn.classify()
    got = _by_phys(cls)
    kinds = {(x.kind, x.phys) for x in cls.findings}
    assert ("reserved and typed", hot[2]) in kinds
    assert ("table page free", hot[3]) in kinds and got[hot[3]].origin == "unknown"
    assert got[gone].origin == "unknown" and got[gone].ptlock == "unknown"
    assert got[gone].evidence[0] == "struct page not readable"
    assert next(x for x in cls.findings if x.phys == hot[3]).severity == "critical"


def test_altmap_table_is_a_finding():
    syn = Synth()
    hot = _hot_linear_ptes(syn)
    c = Classifier(syn.kernel)
    m = c.memory
    pfn = hot[5] // syn.ps
    blocks = list(m.blocks) + [Block(999, (pfn - 2) * syn.ps, m.block_size, "online", "Movable", 0, False,
                                     pfn - 2, 8)]
    c.memory = MemoryMap(m.sections, sorted(blocks, key=lambda b: b.start), m.block_size, m.section_size)
    cls = classify_walk(syn.kernel, walk(syn.kernel, syn.kernel.root("init_mm")), c)
    got = _by_phys(cls)
    assert got[hot[5]].origin == "altmap"
    assert any(f.kind == "table in altmap" and f.phys == hot[5] for f in cls.findings)
    # the table page itself lies in a Movable block: offlining it cannot migrate it
    assert any(f.kind == "table in ZONE_MOVABLE" and f.phys == hot[5] for f in cls.findings)


def test_image_tables_named_by_symbol_and_freed_image_memory():
    syn = Synth()
    image = [t for t in syn.tables() if syn.origin_of(t.pa) == "kernel-image" and t.level == 1]
    assert image
    pa = image[0].pa
    syn.target.dwarf["symbols"]["bm_pud"] = (pa + syn.built.kimage_voffset) & U64
    cls, _ = syn.classify()
    assert _by_phys(cls)[pa].image_symbol == "bm_pud" and _by_phys(cls)[pa].allocator == "bm_pud"
    # freed image memory (the init sections) loses PG_reserved: buddy memory now
    syn.set_page(pa, flags=0, w1=0xDEAD000000000100, w2=0xDEAD000000000122)
    cls, _ = syn.classify()
    t = _by_phys(cls)[pa]
    assert t.origin == "buddy-no-ctor" and any("freed after boot" in e for e in t.evidence)


def test_slab_pgd_on_lpa2():
    syn = Synth("4k-va52-lpa2")
    efi = syn.built.roots["efi"]
    assert efi.pa % syn.ps  # a 128-byte pgd object
    syn.set_page(efi.pa, flags=0, w1=0xFFFF000000001000, page_type=PGTY_SLAB << 24, refcount=0)
    cls, _ = syn.classify("efi_mm")
    root = next(t for t in cls if t.region == "root")
    assert root.origin == "slab" and root.expected == ("slab",) and root.ptlock == "n/a"
    assert not [f for f in cls.findings if f.phys == root.phys]


def test_slab_where_a_page_pgd_is_expected(syn):
    s2 = Synth()
    efi = s2.built.roots["efi"]
    s2.set_page(efi.pa, page_type=PGTY_SLAB << 24)
    cls, _ = s2.classify("efi_mm")
    assert any(f.kind == "origin mismatch" and f.level == "PGD" for f in cls.findings)


# -- ptlocks ----------------------------------------------------------------------


def _alloc_ptl_kernel():
    dwarf = {k: dict(v) for k, v in DEBUG_SPINLOCK.items()}
    syn = Synth(dwarf=dwarf)
    b, t = syn.b, syn.target
    # page_ptl_cachep -> a kmem_cache; a slab page of that cache holds the locks
    cache = 0xFFFF0000DEAD0000
    slab_pa = b.alloc_page("buddy")
    cachep_pa = b.alloc_page("buddy")
    b.write_phys(cachep_pa, cache.to_bytes(8, "little"))
    t.dwarf["symbols"]["page_ptl_cachep"] = syn.built.phys_to_virt(cachep_pa)
    syn.set_page(slab_pa, w1=cache, page_type=PGTY_SLAB << 24)
    # a task to own a held lock
    task_pa = b.alloc_page("buddy")
    b.write_phys(task_pa + 8, (42).to_bytes(4, "little"))
    b.write_phys(task_pa + 16, b"sh\0")
    syn.cache, syn.slab_pa, syn.task = cache, slab_pa, syn.built.phys_to_virt(task_pa)
    return syn


def _lock(syn, slot, val=0, magic=SPINLOCK_MAGIC, owner_cpu=U32, owner=U64, pa=None):
    pa = (pa if pa is not None else syn.slab_pa) + 24 * slot
    data = (val.to_bytes(4, "little") + magic.to_bytes(4, "little") + owner_cpu.to_bytes(4, "little")
            + b"\0" * 4 + (owner & U64).to_bytes(8, "little"))
    syn.b.write_phys(pa, data)
    return syn.built.phys_to_virt(pa)


def test_allocated_ptlocks_each_state():
    syn = _alloc_ptl_kernel()
    efi = {t.level: t.pa for t in syn.tables("efi")}
    other = syn.b.alloc_page("buddy")  # not a slab page
    syn.set_page(efi[3], ptl=_lock(syn, 1, val=1, owner_cpu=1, owner=syn.task))  # held
    syn.set_page(efi[2], ptl=_lock(syn, 2))  # initialised
    cls, c = syn.classify("efi_mm")
    assert c.features.alloc_split and c.features.debug_spinlock
    got = {t.level_name: t for t in cls}
    assert got["PTE"].ptlock == "held" and got["PTE"].ptl_owner == "cpu 1, task sh[42]"
    assert got["PMD"].ptlock == "initialised" and "magic 0xdead4ead ok" in got["PMD"].evidence
    assert got["PUD"].ptlock == "n/a" and got["PGD"].ptlock == "n/a"
    assert any(f.kind == "ptlock held" for f in cls.findings)

    # dangling: a pointer into a page that is not a slab, then a freed object
    # (unlocked, but the owner words overwritten by the free pointer)
    syn.set_page(efi[3], ptl=_lock(syn, 0, pa=other))
    syn.set_page(efi[2], ptl=_lock(syn, 3, owner_cpu=0x1234, owner=0xFFFF0000CAFE0000))
    cls, _ = syn.classify("efi_mm")
    got = {t.level_name: t for t in cls}
    assert got["PTE"].ptlock == "dangling" and "pointer not into a slab page" in got["PTE"].evidence
    assert got["PMD"].ptlock == "dangling"
    assert sum(f.kind == "ptlock dangling" and f.severity == "critical" for f in cls.findings) == 2

    # missing: a ctor'd table of a split level without a lock
    syn.set_page(efi[3], ptl=0)
    cls, _ = syn.classify("efi_mm")
    pte = next(t for t in cls if t.level_name == "PTE")
    assert pte.ptlock == "missing" and any(f.kind == "ptlock missing" for f in cls.findings)


#: PREEMPT_RT: spinlock_t wraps an rt_mutex_base {wait_lock, waiters, owner}.
RT_SPINLOCK = {"sizes": {"spinlock_t": 32}, "offsets": {("spinlock_t", "lock.owner"): 24}}


def test_preempt_rt_ptlocks_are_held_by_their_rt_mutex_owner():
    """A PREEMPT_RT ptl is held when rt_mutex_base.owner is set (bit 0 is
    RT_MUTEX_HAS_WAITERS), whatever its first word (the wait_lock) says."""
    syn = _alloc_ptl_kernel()
    offsets = syn.target.dwarf["offsets"]
    for key in DEBUG_SPINLOCK["offsets"]:
        offsets.pop(key)
    offsets.update(RT_SPINLOCK["offsets"])
    syn.target.dwarf["sizes"].update(RT_SPINLOCK["sizes"])
    efi = {t.level: t.pa for t in syn.tables("efi")}

    def rt_lock(slot, owner=0, wait_lock=0):
        pa = syn.slab_pa + 32 * slot
        syn.b.write_phys(pa, wait_lock.to_bytes(4, "little") + b"\0" * 20 + owner.to_bytes(8, "little"))
        return syn.built.phys_to_virt(pa)

    syn.set_page(efi[3], ptl=rt_lock(1, owner=syn.task | 1))  # held, with waiters
    syn.set_page(efi[2], ptl=rt_lock(2, wait_lock=1))  # wait_lock taken, but no owner
    cls, c = syn.classify("efi_mm")
    assert c.features.alloc_split and not c.features.debug_spinlock and c.layout.rt_spinlock
    got = {t.level_name: t for t in cls}
    assert got["PTE"].ptlock == "held" and got["PTE"].ptl_owner == "cpu ?, task sh[42]"
    assert f"rt_mutex owner {syn.task:#x}" in got["PTE"].evidence
    assert got["PMD"].ptlock == "initialised"
    assert any(f.kind == "ptlock held" for f in cls.findings)


def test_allocated_ptlock_stale_on_untyped_table_and_vmalloc_pmd():
    syn = _alloc_ptl_kernel()
    hot = _hot_linear_ptes(syn)
    syn.set_page(hot[0], ptl=_lock(syn, 4))
    vm_pmd = next(t.pa for t in syn.tables() if t.level == 2 and syn.origin_of(t.pa) == "buddy-ctor")
    syn.set_page(vm_pmd, ptl=_lock(syn, 5))
    cls, _ = syn.classify()
    got = _by_phys(cls)
    assert got[hot[0]].ptlock == "stale"
    # before v6.16 a vmalloc PMD ctor initialises a ptlock for init_mm
    assert got[vm_pmd].ptlock == "initialised"
    # every other init_mm table: a kernel table without ctor needs no lock
    assert {t.ptlock for p, t in got.items() if p not in (hot[0], vm_pmd)} == {"n/a"}


def test_inline_ptlock_states():
    syn = Synth()
    efi = {t.level: t.pa for t in syn.tables("efi")}
    hot = _hot_linear_ptes(syn)
    syn.set_page(efi[3], ptl=0x1)  # locked byte
    syn.set_page(efi[2], page_type=U32)  # a PMD table whose ctor never ran
    syn.set_page(hot[0], ptl=0x101)
    cls, _ = syn.classify("efi_mm")
    got = {t.level_name: t for t in cls}
    assert got["PTE"].ptlock == "held" and got["PMD"].ptlock == "missing"
    assert any(f.kind == "origin mismatch" and f.level == "PMD" for f in cls.findings)
    init, _ = syn.classify()
    assert _by_phys(init)[hot[0]].ptlock == "stale"


def test_summary_counts_every_table(syn):
    cls, _ = syn.classify()
    summ = cls.summary()
    assert sum(summ.values()) == len(cls)
    assert summ[("init_mm", "PTE", "buddy-no-ctor", "n/a")] == sum(
        1 for t in syn.tables() if t.level == 3 and syn.origin_of(t.pa) == "buddy-no-ctor")


def test_features_without_debug_info_say_where_they_come_from():
    syn = Synth(debug=False)
    c = classifier_for(syn.kernel)
    assert c.features.page_type == "pgty"  # from PAGE_BUDDY_MAPCOUNT_VALUE
    assert "OSRELEASE" in c.features.evidence["pud_ctor"]
    assert c.layout.pg_reserved == PG_RESERVED  # PG_private - 1
    cls = classify_walk(syn.kernel, walk(syn.kernel, syn.kernel.root("init_mm")), c)
    assert {t.phys: t.origin for t in cls} == {t.pa: syn.origin_of(t.pa) for t in syn.tables()}


# -- the audit ----------------------------------------------------------------------


def _node_counters(syn, vm_stat, diffs):
    """contig_page_data with vm_stat[NR_PAGETABLE] and per-CPU diffs."""
    b, t = syn.b, syn.target
    ncpu = len(diffs)
    pg = b.alloc_page("buddy")
    b.write_phys(pg + 0x100 + 8 * NR_PAGETABLE, vm_stat.to_bytes(8, "little", signed=True))
    pcp = b.alloc_page("buddy")
    offs = b.alloc_page("buddy")
    for cpu, d in enumerate(diffs):
        # per-CPU copy of struct per_cpu_nodestat at pcp + cpu * 256
        b.write_phys(pcp + cpu * 256 + 1 + NR_PAGETABLE, d.to_bytes(1, "little", signed=True))
        b.write_phys(offs + 8 * cpu, (cpu * 256).to_bytes(8, "little"))
    b.write_phys(pg + 0x80, syn.built.phys_to_virt(pcp).to_bytes(8, "little"))
    mask = b.alloc_page("buddy")
    b.write_phys(mask, ((1 << ncpu) - 1).to_bytes(8, "little"))
    t.dwarf["symbols"].update({
        "contig_page_data": syn.built.phys_to_virt(pg),
        "__per_cpu_offset": syn.built.phys_to_virt(offs),
        "__cpu_possible_mask": syn.built.phys_to_virt(mask),
    })


def test_audit_exact_counter_and_a_leak():
    syn = Synth()
    typed_by_generator = len(syn.s.typed)
    # the counter: global value plus per-CPU deltas equals the typed pages
    _node_counters(syn, typed_by_generator - 1, [2, 0, -1])
    a = audit(syn.kernel, resolve_roots(syn.kernel, "all"))
    assert a.counter == typed_by_generator
    assert a.per_node == [{"nid": 0, "vm_stat": typed_by_generator - 1, "percpu_delta": 1,
                           "exact": typed_by_generator}]
    assert a.typed_count == typed_by_generator and a.difference == 0
    assert len(a.unreachable_typed) == 0 and set(a.roots) == {"init_mm", "efi_mm"}
    assert a.scanned_pages == sum(n for _, n in syn.built.ram) // syn.ps
    # tables whose span maps hot-added memory: the 512 hot PTE tables among them
    assert a.hot_overlap[("init_mm", "PTE", "hot-added")] == len(_hot_linear_ptes(syn))

    # a typed page no root reaches: a leak the audit lists page by page
    leak = syn.b.alloc_page("buddy")
    syn.set_page(leak, w1=0xDEAD000000000100, w2=0, page_type=PGTY_TABLE << 24, refcount=1)
    syn.kernel = Kernel(syn.target)
    a = audit(syn.kernel, resolve_roots(syn.kernel, "all"))
    assert a.difference == 1
    assert a.unreachable_typed.tolist() == [leak // syn.ps]
    assert any("no walked root reaches" in line for line in a.explanation())
    assert a.as_dict()["unreachable_typed"][0]["phys"] == leak
    assert a.unreachable_hints[0].endswith("leaked")


def test_audit_without_counters_reports_typed_pages_only():
    syn = Synth()
    a = audit(syn.kernel, [syn.kernel.root("init_mm")])
    assert a.counter is None and a.difference is None
    # efi_mm's typed tables are not reached when only init_mm is walked
    efi_typed = {t.pa // syn.ps for t in syn.tables("efi") if t.level >= 2}
    assert set(a.unreachable_typed.tolist()) == efi_typed


def test_v616_init_mm_tables_have_no_ptlock():
    # 8240d8d3c5fb (v6.16): ptlock_init() is skipped for init_mm, so a lock on
    # a ctor'd vmalloc PMD is one that should not be there.
    syn = _alloc_ptl_kernel()
    syn.target.dwarf["symbols"]["pgd_pgtable_alloc_init_mm"] = 0
    vm_pmd = next(t.pa for t in syn.tables() if t.level == 2 and syn.origin_of(t.pa) == "buddy-ctor")
    syn.set_page(vm_pmd, ptl=_lock(syn, 6))
    cls, c = syn.classify()
    assert c.features.init_mm_no_ptl
    assert _by_phys(cls)[vm_pmd].ptlock == "stale"
    efi, _ = syn.classify("efi_mm")
    # efi_mm is not init_mm: its PTE/PMD tables still need a lock (here none was made)
    assert {t.level_name: t.ptlock for t in efi}["PTE"] == "missing"


def test_audit_flags_a_writable_swapper_pg_dir():
    # (the generator maps the linear map, image alias included, read-write: only
    # the kernel-image alias is modelled read-only, so only it is checked here)
    syn = Synth()
    va = syn.built.swapper_pg_dir
    image_alias = lambda a: [x for x in a.writable_roots if f" at {va:#x} " in x]  # noqa: E731
    assert image_alias(audit(syn.kernel, [syn.kernel.root("init_mm")])) == []
    # clear AP[2] (PTE_RDONLY, bit 7) in the leaf that maps swapper_pg_dir's image VA
    r = syn.built.regime
    for level in (3, 2, 1):
        table = syn.b.table_at("swapper", va, level)
        if table is None:
            continue
        entry = table + 8 * r.index(va, level)
        desc = int.from_bytes(syn.built.read_phys(entry, 8), "little")
        if desc & 3 == (3 if level == 3 else 1):
            syn.b.write_phys(entry, (desc & ~(1 << 7)).to_bytes(8, "little"))
            break
    else:
        pytest.fail("no leaf maps swapper_pg_dir")
    got = image_alias(audit(syn.kernel, [syn.kernel.root("init_mm")]))
    assert len(got) == 1 and got[0].startswith("swapper_pg_dir is mapped writable at " + hex(va))
