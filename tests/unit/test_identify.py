"""identify and its reverse map on a synthetic kernel: every VA the
generator mapped a page at is found (aliases through two roots and two VAs
of one root included), table pages are named with their level, VA and
parents, and nothing else is reported."""

import numpy as np
import pytest

import mminspect
from mminspect.errors import MMInspectError
from mminspect.identify import ReverseMap, identify, parse_address
from mminspect.synthetic import REGIMES_BY_NAME, Builder
from mminspect.synthetic.vmcore import write_vmcore
from mminspect.walk import walk

U64 = (1 << 64) - 1
BASE = (-(1 << 47)) & U64


@pytest.fixture(scope="module")
def kern(tmp_path_factory):
    b = Builder(REGIMES_BY_NAME["4k-va48"])
    ram0 = b.ram[0][0]
    pa = ram0 + (64 << 20)
    b.map(BASE, pa, 16 << 12, kind="page")                   # 16 pages in vmalloc
    b.map(BASE + (1 << 30), pa + (4 << 12), 1 << 12, kind="page")  # page 4 again, elsewhere
    b.map(b.phys_to_virt(ram0), ram0, 256 << 20, kind="pmd")  # linear map, 2 MiB blocks
    user = b.add_root("mm", ttbr=0)
    b.map(0x400000, pa + (4 << 12), 1 << 12, kind="page", root="mm")
    built = b.finish()
    path = tmp_path_factory.mktemp("identify") / "vmcore"
    write_vmcore(str(path), built)
    k = mminspect.open(core=str(path))
    roots = [k.root("init_mm"), k.user_root("mm", user)]
    walks = [walk(k, r) for r in roots]
    return k, built, pa, walks


def test_every_alias_found(kern):
    k, built, pa, walks = kern
    got = identify(k, [pa + (4 << 12) + 0x10, pa + (7 << 12)], walks=walks, page_facts=False)
    four = {(m.root, m.va) for m in got[0].mapped_at}
    assert four == {("init_mm", BASE + (4 << 12)), ("init_mm", (BASE + (1 << 30)) & U64),
                    ("init_mm", k.phys_to_virt(pa + (4 << 12))), ("mm", 0x400000)}
    seven = {(m.root, m.va) for m in got[1].mapped_at}
    assert seven == {("init_mm", BASE + (7 << 12)), ("init_mm", k.phys_to_virt(pa + (7 << 12)))}
    # The ground truth agrees for every reported VA.
    for m in got[0].mapped_at:
        root = "swapper" if m.root == "init_mm" else "mm"
        assert built.lookup(root, m.va).pa == pa + (4 << 12)


def test_table_pages_named(kern):
    k, built, pa, walks = kern
    truth = {t.pa: t for t in built.tables()}
    pte = next(p for p, t in truth.items() if t.level == 3 and t.root == "swapper")
    got = identify(k, [pte], walks=walks, page_facts=False)[0]
    assert got.is_page_table
    rec = next(t for t in got.tables if t["root"] == "init_mm")
    assert rec["level"] == "PTE" and rec["phys"] == pte and rec["parents"]
    # a data page is not a table
    assert not identify(k, [pa], walks=walks, page_facts=False)[0].is_page_table


def test_reverse_map_batch_equals_one_by_one(kern):
    k, _, pa, walks = kern
    rm = ReverseMap(k, walks)
    qs = np.array([pa + i * 0x800 for i in range(40)], dtype=np.uint64)
    qi, ri = rm.lookup(qs)
    batch = sorted(zip(qi.tolist(), ri.tolist()))
    single = sorted((i, int(r)) for i in range(len(qs)) for r in rm.lookup(qs[i:i + 1])[1].tolist())
    assert batch == single and batch


def test_parse_address():
    assert parse_address("pfn:0x10", 12) == 0x10000
    assert parse_address("40246000", 12) == 0x40246000
    with pytest.raises(MMInspectError):
        parse_address("pfn:zz", 12)


def test_struct_page_gather_equals_the_reader(tmp_path):
    """page_info's struct pages read straight from the dump file (one pread
    per page at the PA the vmemmap maps it to) decode to exactly what the
    batched reader gives, on a synthetic server kernel with real-looking
    struct pages."""
    from mminspect.classify import classifier_for
    from mminspect.pageinfo import page_info, struct_page_facts
    from mminspect.synthetic import make_server_kernel, write_server_vmcore

    built = make_server_kernel(REGIMES_BY_NAME["4k-va48"], 4 << 30, hotadd=1 << 30)
    write_server_vmcore(tmp_path / "vmcore", built)
    k = mminspect.open(core=str(tmp_path / "vmcore"))
    c = classifier_for(k)
    rng = np.random.default_rng(3)
    tables = np.asarray(built.server.table_pas, dtype=np.uint64) >> np.uint64(12)
    base = built.ram[0][0] >> 12
    pfns = np.unique(np.concatenate((rng.choice(tables, 300), base + rng.integers(0, 1 << 20, 300).astype(np.uint64))))
    got = struct_page_facts(k, c.pages, pfns)
    want = c.pages.facts(pfns)
    assert got.tobytes() == want.tobytes() and got["ok"].all()
    assert got["reserved"].any()  # memblock tables: real facts, not zeros
    infos = page_info(k, pfns[:50].tolist())
    assert [i.reserved for i in infos] == want["reserved"][:50].tolist()
