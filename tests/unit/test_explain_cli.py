"""vtop, identify and diff refuse bad input in one line with exit status 2,
on the bundled sample (a capture of Debian's 6.1 cloud kernel): an address
outside every root, outside RAM or past max_pfn, two states of different
kernels, a simulation that is not one; and they leave the user's files as
they were."""

import hashlib
import json
import shutil

import pytest

from mminspect.cli import bundled_sample, main
from mminspect.synthetic import REGIMES_BY_NAME, Builder
from mminspect.synthetic.vmcore import write_vmcore

from tests.unit.test_cli_errors import _assert_one_line_error, _run


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.core"
    shutil.copy(bundled_sample(), path)
    return path


@pytest.mark.parametrize("args, needles", [
    (["vtop", "zz"], ["bad address 'zz'"]),
    (["vtop", "1234"], ["user-half", "--mm"]),
    (["vtop", "fff0000000000000"], ["outside init_mm"]),
    (["vtop", "--mm", "efi_mm", "ffff800008000000"], ["outside efi_mm"]),
    (["identify", "pfn:0xffffffff"], ["past max_pfn"]),
    (["identify", "20000000"], ["outside RAM"]),
    (["identify", "pfn:zz"], ["bad address"]),
    (["identify"], ["give addresses"]),
    (["identify", "--from", "/nonexistent"], ["/nonexistent: no such file"]),
])
def test_bad_input_is_one_line(sample, args, needles):
    _assert_one_line_error(_run(args[0], "-c", str(sample), *args[1:]), *needles)


def test_diff_of_different_kernels(sample, tmp_path):
    b = Builder(REGIMES_BY_NAME["4k-va48"], osrelease="6.12.0-other")
    b.map((-(1 << 47)) & ((1 << 64) - 1), b.ram[0][0], 1 << 12, kind="page")
    other = tmp_path / "other.core"
    write_vmcore(str(other), b.finish())
    _assert_one_line_error(_run("diff", str(sample), str(other)), "different kernels")


def test_diff_expect_is_checked_and_files_untouched(sample, tmp_path):
    bad = tmp_path / "sim.json"
    bad.write_text(json.dumps({"schema": "mminspect.walk/1"}))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (sample, bad)}
    _assert_one_line_error(_run("diff", str(sample), str(sample), "--expect", str(bad)),
                           "expected mminspect.simulate/1")
    _assert_one_line_error(_run("diff", str(sample), str(tmp_path / "none")), "no such file")
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (sample, bad)}


def test_vtop_and_identify_on_the_sample(sample):
    """A mapped address, a fault, and a page-table page of the sample."""
    r = _run("vtop", "-c", str(sample), "--mm", "efi_mm", "7c450123", "--format", "json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["translations"][0]
    assert t["pa"] == 0x7c450123 and t["stop"] == "page" and len(t["levels"]) == 4
    r = _run("identify", "-c", str(sample), "--mm", "efi_mm", "40246000", "--format", "json")
    assert r.exit_code == 0, r.output
    a = json.loads(r.stdout)["addresses"][0]
    assert a["page_table"] and a["tables"][0]["level"] == "PGD" and a["tables"][0]["root"] == "efi_mm"


def test_diff_of_a_snapshot_and_its_dump(sample, tmp_path):
    """A snapshot of the sample against the sample itself: nothing freed or
    allocated among the init_mm tables the snapshot holds."""
    snap = tmp_path / "snap.npz"
    assert _run("snapshot", "-c", str(sample), "-o", str(snap)).exit_code == 0
    r = _run("diff", str(snap), str(sample), "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["snapshot"] and doc["roots_not_compared"] == ["efi_mm"]
    assert doc["tables"] == {"freed": [], "allocated": [], "moved": []}
