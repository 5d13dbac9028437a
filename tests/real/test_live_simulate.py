"""End to end on a live guest: predict a DIMM's removal through QMP, then do
it for real and compare.

The guest (Debian's 6.1 production kernel) hot-adds a 1 GiB pc-dimm.
`mminspect simulate-remove --qemu SOCKET --dimm dimm0` predicts the removal
on the running kernel; the guest then really removes the DIMM and is dumped.
The table pages the prediction frees must be exactly those that stopped
being tables, and the guest's dmesg must carry no warning the prediction did
not announce.
"""

import json
import re
import shutil

import pytest
from click.testing import CliRunner

import mminspect
import vmcores
from mminspect.cli import main
from mminspect.hotremove import capture_snapshot, diff_snapshots

KERNEL = "debian-6.1-cloud-arm64"


@pytest.fixture(scope="module")
def live():
    if not shutil.which("qemu-system-aarch64"):
        pytest.skip("qemu-system-aarch64 is not installed")
    from tests.real.conftest import get_dump

    if isinstance(get_dump(KERNEL, "boot"), str):
        pytest.skip(f"kernel {KERNEL} is not available")
    from vmcores.live import live_guest

    with live_guest(KERNEL, gdb=False) as lg:
        yield lg


def test_prediction_on_a_live_guest_matches_the_real_removal(live, tmp_path):
    live.hotadd(ident="dimm0")
    with live.paused():
        result = CliRunner().invoke(main, [
            "simulate-remove", "--qemu", str(live.qmp_socket), "-s", str(live.kernel.vmlinux),
            "--dimm", "dimm0", "--format", "json"])
    before = live.dump(tmp_path / "before")
    assert result.exit_code in (0, 1), result.output
    predicted = json.loads(result.stdout)
    assert predicted["simulated"]
    live.hotremove(ident="dimm0")
    after = live.dump(tmp_path / "after")
    snap_before = capture_snapshot(mminspect.open(prog=before.program()))
    snap_after = capture_snapshot(mminspect.open(prog=after.program()))
    real = diff_snapshots(snap_before, snap_after)
    assert {t["phys"] for t in predicted["freed"]} == set(real["freed"])
    dmesg = after.truth_text("dmesg")
    warned = bool(re.search(r"WARNING:|BUG:|Bad page state", dmesg))
    assert warned == any(f["severity"] in ("error", "critical") for f in predicted["findings"])
