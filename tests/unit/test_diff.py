"""diff of two synthetic states of one kernel: the tables freed, allocated
and reused as another table, and the mapping ranges added, removed and
changed, against what the generator built in each state (its own table
records and leaf runs, not the walker's)."""

import pytest

import mminspect
from mminspect.diff import check_same, diff, state_of_kernel
from mminspect.errors import MMInspectError
from mminspect.synthetic import REGIMES_BY_NAME, Builder
from mminspect.synthetic.encode import PAGE_KERNEL, PAGE_KERNEL_RO
from mminspect.synthetic.vmcore import write_vmcore

U64 = (1 << 64) - 1
BASE = (-(1 << 47)) & U64
G = 1 << 30


def _build(tmp, name, state):
    b = Builder(REGIMES_BY_NAME["4k-va48"])
    ram0 = b.ram[0][0]
    b.map(BASE, ram0 + (64 << 20), 16 << 12, kind="page")           # in both
    b.map(BASE + (16 << 12), ram0 + (70 << 20), 4 << 12, kind="page",
          prot=PAGE_KERNEL_RO if state == "b" else PAGE_KERNEL)  # attributes change
    if state == "a":
        b.map(BASE + 1 * G, ram0 + (80 << 20), 16 << 12, kind="page")   # PMD + PTE table
        b.map(BASE + 2 * G, ram0 + (90 << 20), 16 << 12, kind="page")   # PMD + PTE table
    else:
        b.map(BASE + 3 * G, ram0 + (100 << 20), 16 << 12, kind="page")  # the pool's next pages again
        b.map(BASE + 4 * G, ram0 + (128 << 20), 2 << 20, kind="pmd")
    built = b.finish()
    path = tmp / f"{name}.vmcore"
    write_vmcore(str(path), built)
    return built, mminspect.open(core=str(path))


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diff")
    ba, ka = _build(tmp, "a", "a")
    bb, kb = _build(tmp, "b", "b")
    sa = state_of_kernel(ka, "a", [ka.root("init_mm")])
    sb = state_of_kernel(kb, "b", [kb.root("init_mm")])
    return ba, bb, diff(sa, sb)


def test_tables_against_the_generator(states):
    ba, bb, d = states
    ta = {t.pa: (t.level, t.va_start) for t in ba.tables() if t.root == "swapper"}
    tb = {t.pa: (t.level, t.va_start) for t in bb.tables() if t.root == "swapper"}
    freed = {p for p in ta if p not in tb}
    allocated = {p for p in tb if p not in ta}
    moved = {p for p in ta if p in tb and ta[p] != tb[p]}
    assert {int(p) for p in d.freed["phys"]} == freed
    assert {int(p) for p in d.allocated["phys"]} == allocated
    assert {int(a["phys"]) for a, _ in d.moved} == moved
    assert moved, "the B state reuses pages of A's tables for other tables"
    for a, b in d.moved:
        assert (int(a["level"]), int(a["va"])) == ta[int(a["phys"])]
        assert (int(b["level"]), int(b["va"])) == tb[int(b["phys"])]


def test_mapping_ranges(states):
    ba, bb, d = states
    ranges = d.mappings["init_mm"]
    kinds = {(m["kind"], m["va"]): m for m in ranges}
    assert ("removed", BASE + 1 * G) in kinds and kinds[("removed", BASE + 1 * G)]["size"] == 16 << 12
    assert ("removed", BASE + 2 * G) in kinds
    assert ("added", BASE + 3 * G) in kinds and kinds[("added", BASE + 3 * G)]["pa_b"] == bb.ram[0][0] + (100 << 20)
    blk = kinds[("added", BASE + 4 * G)]
    assert blk["size"] == 2 << 20 and blk["b"].startswith("PMD")
    ch = kinds[("changed", BASE + (16 << 12))]
    assert ch["size"] == 4 << 12 and ch["pa_a"] == ch["pa_b"] and "ro" in ch["b"] and "RW" in ch["a"]
    # the common range is not reported
    assert not any(m["va"] <= BASE < m["va"] + m["size"] for m in ranges)


def test_refuses_other_kernels(states, tmp_path):
    b = Builder(REGIMES_BY_NAME["4k-va48"], osrelease="6.1.0-other")
    b.map(BASE, b.ram[0][0] + (64 << 20), 1 << 12, kind="page")
    write_vmcore(str(tmp_path / "o"), b.finish())
    other = mminspect.open(core=str(tmp_path / "o"))
    _, _, d = states
    with pytest.raises(MMInspectError, match="different kernels"):
        check_same(other, "o", d.b, "b")
    r16 = Builder(REGIMES_BY_NAME["16k-va47"])
    r16.map((-(1 << 46)) & U64, r16.ram[0][0], 1 << 14, kind="page")
    write_vmcore(str(tmp_path / "r"), r16.finish())
    with pytest.raises(MMInspectError, match="regime"):
        check_same(mminspect.open(core=str(tmp_path / "r")), "r", d.b, "b")
