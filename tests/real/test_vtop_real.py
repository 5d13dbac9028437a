"""vtop on real dumps: for init_mm and efi_mm, over 2,000 sampled VAs per
root (mapped ranges and holes), vtop's answer equals drgn's own arm64
translation (``follow_phys``), and its stop reason agrees with it: a PA
exactly where drgn finds one, a fault everywhere else. Linear-map addresses
also satisfy ``__pa()``."""

import random

import drgn
import pytest
from drgn.helpers.linux.mm import follow_phys

import mminspect
from mminspect.vtop import vtop
from tests.real.conftest import require_efi_mm
from tests.real.test_walk_translation import _samples


@pytest.mark.parametrize("mm", ["init_mm", "efi_mm"])
def test_vtop_matches_follow_phys(real_prog, mm):
    dump, prog = real_prog
    if mm == "efi_mm":
        require_efi_mm(dump)
    k = mminspect.open(prog=prog)
    w = mminspect.walk(k, mm)
    rng = random.Random(0x7670)
    vas = rng.sample(_samples(w, rng), 2000)
    mm_obj = prog[mm].address_of_()
    stops = set()
    linear = 0
    for va in vas:
        t = vtop(k, va, mm, page_facts=False, checks=False)
        try:
            theirs = follow_phys(mm_obj, va).value_()
        except drgn.FaultError:
            theirs = None
        assert t.pa == theirs, f"{mm} {va:#x}: vtop {t.pa} ({t.stop}: {t.reason}), drgn {theirs}"
        assert (t.stop in ("page", "block", "contiguous")) == (theirs is not None)
        stops.add(t.stop)
        if theirs is not None and k.is_linear(va):
            assert k.virt_to_phys(va) == theirs
            linear += 1
    assert stops & {"page", "block", "contiguous"} and stops & {"none", "invalid"}
    if mm == "init_mm":
        assert linear


def test_vtop_page_facts_and_checks(real_prog):
    """A hot-added page's facts (where the dump has one) and the checks on a
    linear-map address: drgn and __pa() agree; the section's boot/hot-added
    kind is the memory map's."""
    dump, prog = real_prog
    k = mminspect.open(prog=prog)
    w = mminspect.walk(k, "init_mm", k.layout.page_offset, k.layout.page_end)
    m = next(w.mappings())
    t = vtop(k, m.va)
    by = {c.source: c for c in t.checks}
    assert by["drgn follow_phys"].agrees is True and by["__pa()"].agrees is True
    assert t.page is not None and t.page.ram and t.page.readable
    assert t.page.pfn == t.pa >> k.regime.page_shift
