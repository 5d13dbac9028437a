"""The walker's translation equals drgn's native arm64 translation on real dumps.

For init_mm and efi_mm of every cached real vmcore, at least 10,000 VAs are
sampled across every mapped range (first, last and random pages) and across
holes; for each, mminspect's answer must equal
``drgn.helpers.linux.mm.follow_phys`` (a FaultError where unmapped).
"""

import random

import drgn
import pytest
from drgn.helpers.linux.mm import follow_phys

import mminspect
from mminspect.errors import MMInspectError
from mminspect.walk import CLS_LEAF
from tests.real.conftest import efi_runtime, require_efi_mm

SAMPLES = 10_000


def _samples(w, rng):
    runs = w.runs
    leaf = [r for r in runs if r["cls"] == CLS_LEAF]
    other = [r for r in runs if r["cls"] != CLS_LEAF]
    page = 1 << w.regime.page_shift
    vas = []
    for group, share in ((leaf, 0.8), (other, 0.2)):
        if not group:
            continue
        per = max(3, int(SAMPLES * share) // len(group))
        for r in group:
            va, size = int(r["va"]), int(r["size"])
            vas += [va, va + size - 1]
            vas += [va + rng.randrange(size // page) * page + rng.randrange(page) for _ in range(per)]
    return vas


@pytest.mark.parametrize("mm", ["init_mm", "efi_mm"])
def test_translation_matches_drgn(real_prog, mm):
    dump, prog = real_prog
    if mm == "efi_mm":
        require_efi_mm(dump)
    k = mminspect.open(prog=prog)
    w = mminspect.walk(k, mm)
    mm_obj = prog[mm]
    rng = random.Random(0x6d6d)
    vas = _samples(w, rng)
    assert len(vas) >= SAMPLES
    mapped = 0
    for va in vas:
        ours = w.translate(va)
        try:
            theirs = follow_phys(mm_obj.address_of_(), va).value_()
        except drgn.FaultError:
            theirs = None
        assert ours == theirs, f"{mm} VA {va:#x}: mminspect {ours} drgn {theirs}"
        mapped += theirs is not None
    # Both mapped and unmapped addresses were exercised.
    assert 0 < mapped < len(vas)
    assert not w.problems


def test_efi_mm_exists_exactly_when_the_guest_mapped_efi_runtime(real_prog):
    """efi_mm.pgd is set by efi_virtmap_init() only when the runtime services
    are mapped; a PREEMPT_RT guest says "EFI runtime services will be
    disabled." and has none. mminspect must agree with the guest, and say why."""
    dump, prog = real_prog
    k = mminspect.open(prog=prog)
    if efi_runtime(dump):
        assert prog["efi_mm"].pgd.value_() != 0
        assert mminspect.walk(k, "efi_mm").table_count > 1
    else:
        assert prog["efi_mm"].pgd.value_() == 0
        with pytest.raises(MMInspectError, match="EFI runtime services were not mapped"):
            k.root("efi_mm")
