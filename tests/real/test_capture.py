"""A bundle captured from a real dump gives the same walk output as the dump."""

import io

import pytest

import mminspect
from mminspect.capture import capture
from mminspect.classify import classify_walk
from mminspect.hotremove import Proposal, capture_snapshot, select_policy, simulate
from mminspect.report.ptdump import ptdump_lines
from mminspect.report.walk import walk_text
from mminspect.target.drgn import DrgnTarget
from tests.real.conftest import efi_runtime


def _outputs(kernel, mm):
    w = mminspect.walk(kernel, mm)
    text = io.StringIO()
    walk_text(w, text, tables=True)
    classes = [c.as_dict() for c in classify_walk(kernel, w)]
    return text.getvalue(), list(ptdump_lines(w)), classes


def test_bundle_equals_dump(real_prog, tmp_path):
    dump, prog = real_prog
    full = mminspect.Kernel(DrgnTarget(prog, "full dump"))
    path = str(tmp_path / "bundle.core")
    result = capture(full.target, path)
    if efi_runtime(dump):
        assert result["roots"] == ["init_mm", "efi_mm"]
    else:  # PREEMPT_RT: no efi_mm to capture, and the bundle says why
        assert result["roots"] == ["init_mm"] and "EFI runtime" in result["skipped"]["efi_mm"]
    small = mminspect.open(core=path)
    assert small.target.name.startswith("bundle")
    for mm in result["roots"]:
        assert _outputs(small, mm) == _outputs(full, mm)
    # The hot-remove simulation needs no more than the bundle holds.
    results = []
    for k in (small, full):
        snap = capture_snapshot(k)
        block = max(snap.blocks, key=lambda b: b.start)
        res = simulate(snap, Proposal(block.start, block.start + block.size), select_policy(snap.era), force=True)
        results.append(([(e.phys, e.routine) for e in res.freed], res.findings,
                        [(r.rule, r.message, r.fatal, r.block, r.range) for r in res.refusals],
                        snap.era.evidence, [r.evidence for r in res.refusals]))
    assert results[0][:4] == results[1][:4]
    # A bundle holds the struct pages mminspect read, not the whole memmap: a
    # block whose memmap it lacks (boot memory, which capture does not scan)
    # gives the dump's isolation evidence, or says which struct pages it lacks.
    for small_why, full_why in zip(results[0][4], results[1][4]):
        assert small_why == full_why or (
            "missing from the dump" in small_why and "missing from the dump" not in full_why), (small_why, full_why)
    # Much smaller than the dump it came from.
    assert result["bytes"] * 50 < dump.vmcore.stat().st_size


def test_capture_refuses_to_overwrite(real_prog, tmp_path):
    _, prog = real_prog
    path = tmp_path / "exists.core"
    path.write_bytes(b"user data")
    with pytest.raises(mminspect.MMInspectError):
        capture(DrgnTarget(prog, "full dump"), str(path))
    assert path.read_bytes() == b"user data"
