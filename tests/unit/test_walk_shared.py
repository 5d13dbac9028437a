"""A table referenced from very many entries (as KASAN's early shadow tables
are: one PTE table behind every PMD entry of one PMD table, behind every PUD
entry ...) is walked once: the walk stays linear in table pages, records every
parent, and says which ranges it did not expand."""

import pytest

import mminspect
from mminspect.synthetic import Builder, REGIMES_BY_NAME
from mminspect.synthetic.vmcore import write_vmcore
from mminspect.walk import walk

U64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def shadow(tmp_path_factory):
    r = REGIMES_BY_NAME["4k-va48"]
    b = Builder(r)
    base = (-(1 << 47)) & U64  # a 128 TiB region, like the KASAN shadow
    pa = b.ram[0][0] + (64 << 20)
    b.map(base, pa, 1 << 12, kind="page")
    pte = b.table_at("swapper", base, 3)
    pmd = b.table_at("swapper", base, 2)
    pud = b.table_at("swapper", base, 1)
    for i in range(1, 512):
        b.link_table("swapper", base + (i << 21), 2, pte)  # every PMD entry -> the PTE table
        b.link_table("swapper", base + (i << 30), 1, pmd)  # every PUD entry -> the PMD table
    for i in range(1, 8):
        b.link_table("swapper", base + (i << 39), 0, pud)  # 8 PGD entries -> the PUD table
    built = b.finish()
    path = tmp_path_factory.mktemp("shadow") / "vmcore"
    write_vmcore(str(path), built)
    k = mminspect.open(core=str(path))
    return k, pte, pmd, pud, base, pa


def test_shared_tables_are_walked_once(shadow):
    k, pte, pmd, pud, base, pa = shadow
    w = walk(k, k.root("init_mm", base, (base + (8 << 39)) & U64))
    tables = {t.phys: t for t in w.tables()}
    # One record each, with every referencing entry as a parent.
    assert len(tables[pte].parents) == 512 and len(tables[pmd].parents) == 512
    assert len(tables[pud].parents) == 8
    # 8 * 512 * 512 PTE-table occurrences would be 2 million tables' worth of
    # entries; the walk reports the sharing instead of expanding it.
    shared = [p for p in w.problems if p.kind == "shared"]
    assert shared and {p.phys for p in shared} <= {pte, pmd, pud}
    assert w.translate(base) == pa
