"""-k on a machine where it cannot work: one line, exit 2, what to do.

The host running the unit tests is x86_64, so -k must say that this is not an
arm64 machine, for every subcommand that takes -k. The in-guest refusals (not
root, lockdown, no /proc/kcore) are proven on a real arm64 kernel in
tests/live/test_in_guest.py."""

import platform

import pytest
from click.testing import CliRunner

from mminspect.cli import main
from mminspect.target import kcore


@pytest.mark.parametrize("argv", [
    ["walk", "-k"], ["-k", "walk"], ["-k", "audit"], ["walk", "-k", "--mm", "efi_mm"], ["classify", "-k"], ["audit", "-k"],
    ["simulate-remove", "-k", "--range", "80000000+1G"], ["snapshot", "-k", "-o", "{tmp}/snap"],
    ["capture", "-k", "-o", "{tmp}/c.core"],
])
def test_not_arm64(argv, tmp_path):
    if platform.machine() in kcore.ARM64_MACHINES:
        pytest.skip("this host is arm64")
    argv = [a.format(tmp=tmp_path) for a in argv]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert err == [f"mminspect: error: -k reads the running kernel, and this machine is {platform.machine()}, "
                   "not arm64: run mminspect on the arm64 machine, or give an arm64 dump (-c VMCORE) or guest "
                   "(--qemu SOCKET)"], r.stderr
    assert r.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_no_target_on_x86_uses_the_sample():
    """Without -k, a non-arm64 machine does not try /proc/kcore at all."""
    if platform.machine() in kcore.ARM64_MACHINES:
        pytest.skip("this host is arm64")
    r = CliRunner().invoke(main, ["walk", "--mm", "efi_mm"])
    assert r.exit_code == 0, r.output
    assert "using the bundled sample" in r.stderr


def test_missing_kcore(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert "CONFIG_PROC_KCORE" in kcore.kcore_problem(str(tmp_path / "kcore"))
    assert kcore.kcore_problem(__file__) is None  # a readable file is no problem
