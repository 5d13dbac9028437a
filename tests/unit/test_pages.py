"""struct page / ptdesc decoding (mminspect.pages) on hand-made struct pages.

Every expected value here is a kernel fact written out from the kernel's
headers (page-flags.h, mm_types.h, spinlock_types_raw.h of 6.1 and 6.12, and
the v6.10/6.11 encoding of "mm: allow reuse of the lower 16 bit of the page
type with an actual type"), not from mminspect's output.
"""

import numpy as np
import pytest

from mminspect.pages import (
    FACTS_DTYPE,
    LIST_POISON1,
    LIST_POISON2,
    PageLayout,
    StructPages,
    pfn_runs,
)
from mminspect.target.base import TargetFault

U32 = 0xFFFFFFFF


class FakeTarget:
    """Answers layout questions from dicts and reads from a sparse byte map."""

    name = "fake"

    def __init__(self, info=None, constants=None, sizes=None, offsets=None, symbols=None, memory=None,
                 debug=True):
        self.info = dict(info or {})
        self.constants = dict(constants or {})
        self.sizes = dict(sizes or {})
        self.offsets = dict(offsets or {})
        self.symbols = dict(symbols or {})
        self.memory = dict(memory or {})  # page-aligned VA -> bytearray(4096)
        self.debug = debug
        self.reads = []

    def vmcoreinfo(self):
        return self.info

    def constant(self, name):
        return self.constants.get(name)

    def sizeof(self, name):
        return self.sizes.get(name)

    def offsetof(self, typ, member):
        return self.offsets.get((typ, member))

    def symbol(self, name):
        return self.symbols.get(name)

    @property
    def has_debug_info(self):
        return self.debug

    def read_virt(self, addr, size):
        self.reads.append((addr, size))
        out = bytearray()
        while size:
            page = addr & ~0xFFF
            if page not in self.memory:
                raise TargetFault(addr, size, False, "not mapped")
            n = min(size, page + 0x1000 - addr)
            out += self.memory[page][addr - page : addr - page + n]
            addr += n
            size -= n
        return bytes(out)

    read_phys = read_virt


# -- the three page-type encodings ----------------------------------------------------

#: 6.1: #define PAGE_TYPE_BASE 0xf0000000, PG_buddy 0x80, PG_table 0x200 (inverted);
#: PG_slab is a page flag (bit 9), PG_reserved bit 12 (enum pageflags).
INFO_61 = {"SIZE(page)": "64", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": "-129", "NUMBER(PG_slab)": "9",
           "NUMBER(PG_private)": "13", "OFFSET(page._mapcount)": "48", "OFFSET(page._refcount)": "52"}
CONST_61 = {"PG_reserved": 12, "PG_slab": 9}
#: v6.10/6.11: base 0x80000000; PG_buddy 0x40000000, PG_table 0x10000000, PG_slab 0x02000000.
INFO_611 = {"SIZE(page)": "64", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": str(~0x40000000),
            "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": str(~0x02000000), "NUMBER(PG_private)": "14"}
#: 6.12: PGTY_buddy 0xf0, PGTY_table 0xf2, PGTY_slab 0xf5 in the top byte.
INFO_612 = {"SIZE(page)": "64", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": "-268435456",
            "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": "-184549376", "NUMBER(PG_private)": "14"}
CONST_612 = {"PG_reserved": 13, "PGTY_table": 0xF2, "PGTY_slab": 0xF5, "PGTY_buddy": 0xF0}


def _rows(page_types, flags=None, w1=None, w2=None):
    n = len(page_types)
    raw = np.zeros((n, 8), dtype=np.uint64)
    raw[:, 0] = flags if flags is not None else 0
    raw[:, 1] = w1 if w1 is not None else 0
    raw[:, 2] = w2 if w2 is not None else 0
    raw[:, 6] = np.array(page_types, dtype=np.uint64) | (np.uint64(1) << np.uint64(32))  # refcount 1
    return raw


def _decode(layout, raw, vas=None):
    n = len(raw)
    pfns = np.arange(n, dtype=np.uint64) + np.uint64(0x40000)
    vas = vas if vas is not None else np.uint64(0xFFFFFC0000000000) + pfns * np.uint64(64)
    return layout.decode(raw, pfns, vas, np.ones(n, dtype=bool))


def test_61_inverted_encoding_from_vmcoreinfo_alone():
    lay = PageLayout.detect(FakeTarget(info=INFO_61, constants=CONST_61, sizes={"spinlock_t": 4}))
    assert lay.scheme.name == "inverted" and lay.scheme.base == 0xF0000000 and lay.scheme.table == 0x200
    f = _decode(lay, _rows([U32 & ~0x200, U32, U32 & ~0x80, 0xFFFFFFFE], flags=[0, 1 << 9, 0, 1 << 12]))
    assert f["table"].tolist() == [True, False, False, False]
    assert f["buddy"].tolist() == [False, False, True, False]
    assert f["slab"].tolist() == [False, True, False, False]  # PG_slab is a flag in 6.1
    assert f["reserved"].tolist() == [False, False, False, True]
    # page_has_type(): (int)page_type < -128; a mapcount of 1 (0) or -2 has no type
    assert f["has_type"].tolist() == [True, False, True, False]
    assert lay.scheme.table_value() == 0xFFFFFDFF


def test_611_inverted_encoding_under_base_0x80000000():
    lay = PageLayout.detect(FakeTarget(info=INFO_611))
    assert lay.scheme.name == "inverted" and lay.scheme.base == 0x80000000
    table = U32 & ~0x10000000
    slab = U32 & ~0x02000000
    f = _decode(lay, _rows([table, slab, U32, table & 0xFFFF0000 | 0x1234]))
    # the owner may reuse the low 16 bits: still a table
    assert f["table"].tolist() == [True, False, False, True]
    assert f["slab"].tolist() == [False, True, False, False]


def test_612_pgty_top_byte_from_dwarf_and_without_it():
    for target in (FakeTarget(info=INFO_612, constants=CONST_612),
                   FakeTarget(info=INFO_612, debug=False)):
        lay = PageLayout.detect(target)
        assert lay.scheme.name == "pgty" and lay.scheme.table == 0xF2 and lay.scheme.slab == 0xF5
        f = _decode(lay, _rows([0xF2000000, 0xF5000000, U32, 0xF0000000, 0]))
        assert f["table"].tolist() == [True, False, False, False, False]
        assert f["slab"].tolist() == [False, True, False, False, False]
        assert f["buddy"].tolist() == [False, False, False, True, False]
        # page_type_has_type(): below PGTY_mapcount_underflow << 24
        assert f["has_type"].tolist() == [True, True, False, True, True]
    # without DWARF PG_reserved is PG_private - 1
    assert PageLayout.detect(FakeTarget(info=INFO_612, debug=False)).pg_reserved == 13


def test_unknown_encoding_types_nothing():
    lay = PageLayout.detect(FakeTarget(info={"SIZE(page)": "64"}))
    assert lay.scheme.name == "unknown"
    f = _decode(lay, _rows([0xF2000000, U32 & ~0x200]))
    assert not f["table"].any()


def test_lru_evidence_refcount_mapcount_and_tail():
    lay = PageLayout.detect(FakeTarget(info=INFO_612, constants=CONST_612))
    base = np.uint64(0xFFFFFC0000000000)
    vas = base + np.arange(3, dtype=np.uint64) * np.uint64(64)
    w1 = [int(vas[0]) + 8, LIST_POISON1, int(base) + 0x1001]  # self-linked, poisoned, tail (bit 0)
    w2 = [int(vas[0]) + 8, LIST_POISON2, 0]
    raw = _rows([U32, U32, U32], w1=w1, w2=w2)
    raw[1, 6] = np.uint64(0xFFFFFFFF) | (np.uint64(3) << np.uint64(32))  # refcount 3
    raw[2, 6] = np.uint64(0xFFFFFFFF) | (np.uint64(0xFFFFFFFF) << np.uint64(32))  # refcount -1
    f = _decode(lay, raw, vas)
    assert f["self_linked"].tolist() == [True, False, False]
    assert f["poisoned"].tolist() == [False, True, False]
    assert f["tail"].tolist() == [False, False, True]
    assert f["refcount"].tolist() == [1, 3, -1]


def test_ptl_inline_or_pointer_and_debug_spinlock_fields():
    inline = PageLayout.detect(FakeTarget(info=INFO_612, sizes={"spinlock_t": 4}))
    assert not inline.ptl_alloc and not inline.debug_spinlock
    offs = {("spinlock_t", "rlock.magic"): 4, ("spinlock_t", "rlock.owner_cpu"): 8,
            ("spinlock_t", "rlock.owner"): 16, ("struct ptdesc", "ptl"): 40}
    alloc = PageLayout.detect(FakeTarget(info=INFO_612, sizes={"spinlock_t": 24, "struct ptdesc": 64},
                                         offsets=offs))
    assert alloc.ptl_alloc and alloc.debug_spinlock
    assert (alloc.off_magic, alloc.off_owner_cpu, alloc.off_owner, alloc.off_ptl) == (4, 8, 16, 40)
    # LOCKDEP without DEBUG_SPINLOCK: a pointer, but no magic to check
    lockdep = PageLayout.detect(FakeTarget(info=INFO_612, sizes={"spinlock_t": 64}))
    assert lockdep.ptl_alloc and not lockdep.debug_spinlock
    # no DWARF at all but the page_ptl_cachep symbol: ALLOC_SPLIT_PTLOCKS
    sym = PageLayout.detect(FakeTarget(info=INFO_612, symbols={"page_ptl_cachep": 0xFFFF800080001000},
                                       debug=False))
    assert sym.ptl_alloc
    raw = _rows([0xF2000000])
    raw[0, 5] = 0xFFFF000012345678
    assert int(_decode(alloc, raw)["ptl"][0]) == 0xFFFF000012345678


def test_offsets_follow_dwarf_then_vmcoreinfo():
    t = FakeTarget(info=dict(INFO_61, **{"OFFSET(page.lru)": "8"}), constants=CONST_61,
                   offsets={("struct page", "ptl"): 40, ("struct page", "pmd_huge_pte"): 16})
    lay = PageLayout.detect(t)
    assert lay.off_page_type == 48 and lay.off_refcount == 52 and lay.off_ptl == 40
    assert "VMCOREINFO" in lay.evidence["off_page_type"] and "DWARF" in lay.evidence["off_ptl"]
    # a DWARF kernel without memcg_data (CONFIG_MEMCG off) has none
    assert lay.off_memcg is None


class _Kernel:
    """Just what StructPages needs of a Kernel."""

    def __init__(self, target, vmemmap_start=0xFFFFFC0000000000, phys_offset=0x40000000):
        from mminspect.arch.arm64 import Regime

        class L:  # layout
            pass

        self.target = target
        self.vmcoreinfo = target.vmcoreinfo()
        self.regime = Regime(12, 48, 48, 48)
        self.layout = L()
        self.layout.vmemmap_start = vmemmap_start
        self.phys_offset = phys_offset


def _memmap(target, k, pfns, page_type=0xF2000000):
    """Write 6.12 struct pages for ``pfns`` (their memmap pages must exist)."""
    sp = StructPages(k)
    for pfn in pfns:
        va = int(sp.page_va(np.array([pfn], dtype=np.uint64))[0])
        page = va & ~0xFFF
        target.memory.setdefault(page, bytearray(0x1000))
        rec = np.zeros(8, dtype=np.uint64)
        rec[0] = pfn  # flags: the pfn, to check rows land where they belong
        rec[6] = np.uint64(page_type) | (np.uint64(1) << np.uint64(32))
        target.memory[page][va - page : va - page + 64] = rec.tobytes()
    return sp


def test_batched_reads_rows_in_pfn_order_with_gaps_and_faults():
    t = FakeTarget(info=INFO_612, constants=CONST_612)
    k = _Kernel(t)
    base = 0x40000
    want = [base + 3, base + 1, base + 70, base + 4096 * 4, base + 1]  # unsorted, duplicate, far apart
    sp = _memmap(t, k, want)
    # a PFN whose memmap page is not mapped: ok False, no exception
    missing = base + 4096 * 9
    f = sp.facts(np.array(want + [missing], dtype=np.uint64))
    assert f["pfn"].tolist() == sorted(set(want + [missing]))
    assert f["ok"].tolist() == [True, True, True, True, False]
    assert f["flags"][f["ok"]].tolist() == sorted(set(want))
    assert f["table"].tolist() == [True, True, True, True, False]
    # neighbours within GAP_BYTES are one read; the far one and the missing one are others
    assert len(t.reads) <= 5


def test_scan_decodes_only_typed_pages_and_counts_unreadable():
    t = FakeTarget(info=INFO_612, constants=CONST_612)
    k = _Kernel(t)
    base = 0x40000
    sp = _memmap(t, k, [base + i for i in range(128)], page_type=U32)  # two memmap pages, untyped
    _memmap(t, k, [base + 5, base + 100])  # typed
    chunks = list(sp.scan([(base, base + 128), (base + 64 * 1024, base + 64 * 1024 + 64)], chunk_pages=96,
                          want="table"))
    got = np.concatenate([c for c, _, _ in chunks])
    assert got.dtype == FACTS_DTYPE
    assert got["pfn"].tolist() == [base + 5, base + 100]
    assert sum(n for _, n, _ in chunks) == 192
    assert sum(b for _, _, b in chunks) == 64  # the second range's memmap is not in the dump


def test_pfn_runs():
    assert pfn_runs(np.array([5, 3, 4, 9, 10, 4], dtype=np.uint64)) == [(3, 6), (9, 11)]
    assert pfn_runs(np.empty(0, np.uint64)) == []


@pytest.mark.parametrize("info,consts,table,other", [
    (INFO_61, CONST_61, U32 & ~0x200, U32 & ~0x80),
    (INFO_611, {}, U32 & ~0x10000000, U32 & ~0x40000000),
    (INFO_612, CONST_612, 0xF2000000, 0xF0000000),
])
def test_describe_names_the_type(info, consts, table, other):
    lay = PageLayout.detect(FakeTarget(info=info, constants=consts))
    assert lay.scheme.describe(table) == "table"
    assert lay.scheme.describe(other) == "buddy"
    assert lay.scheme.describe(U32) == "none"
