"""Live guests: a real arm64 kernel booted under QEMU with a gdbstub and a QMP
socket, paused, and dumped through QMP. gdb-multiarch (batch mode, the
plugin sourced) and drgn's QMP target (``--qemu SOCKET``) must print what the
shell CLI prints on the dump of the same paused guest.

Needs qemu-system-aarch64, gdb-multiarch and the cached kernel (or
MMINSPECT_MAKE_VMCORES to fetch it); skips with the reason otherwise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mminspect.cli import main as cli_main

from .conftest import KERNEL_ID, ROOT

PLUGIN = ROOT / "plugins" / "gdb" / "mminspect-gdb.py"
MARK = "=== mminspect case {} ==="


class Live:
    def __init__(self, lg, dump: Path):
        self.lg = lg
        self.dump = dump
        self.vmlinux = str(lg.kernel.vmlinux)
        self.socket = str(lg.qmp_socket)
        self.port = lg.gdb_port
        self._cli: dict = {}

    def status(self) -> str:
        return self.lg.guest.qmp.execute("query-status")["status"]

    def cli(self, *args: str, exit_code: int = 0) -> str:
        """The shell CLI on the dump of the paused guest (which must exit with
        ``exit_code``)."""
        if args not in self._cli:
            argv = [args[0], "-c", str(self.dump), "-s", self.vmlinux, *args[1:]]
            r = CliRunner().invoke(cli_main, argv)
            assert r.exit_code == exit_code, r.output
            self._cli[args] = r.stdout
        return self._cli[args]

    def gdb(self, cases, setup=(), timeout=300):
        """One gdb-multiarch batch session: connect, source the plugin, run
        each case (a gdb command line) between markers, disconnect (which
        leaves the guest paused, unlike detach). -> {i: output}, stdout, stderr"""
        cmd = ["gdb-multiarch", "-batch", "-nx", "-ex", "set pagination off", "-ex", "set width 0",
               "-ex", f"file {self.vmlinux}", "-ex", f"target remote 127.0.0.1:{self.port}",
               "-ex", f"source {PLUGIN}"]
        for line in setup:
            cmd += ["-ex", line]
        for i, case in enumerate(cases):
            cmd += ["-ex", f"echo {MARK.format(i)}\\n", "-ex", case]
        cmd += ["-ex", f"echo {MARK.format('end')}\\n", "-ex", "disconnect"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return _split(proc.stdout), proc.stdout, proc.stderr


def _split(stdout: str) -> dict:
    out: dict = {}
    cur = None
    for line in stdout.split("\n"):
        m = re.fullmatch(r"=== mminspect case (\w+) ===", line)
        if m:
            cur = m.group(1)
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return {(int(k) if k.isdigit() else k): "\n".join(v).rstrip("\n") + "\n" for k, v in out.items()}


def _no_stats(text: str) -> dict:
    doc = json.loads(text)
    doc.pop("stats")
    return doc


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    for tool in ("qemu-system-aarch64", "gdb-multiarch"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    import vmcores
    from vmcores.scenarios import env_make_kernels

    try:
        from vmcores.live import live_guest
    except ImportError as e:
        pytest.skip(f"vmcores.live is not available: {e}")
    kf = vmcores.cached_kernel(KERNEL_ID)
    if kf is None and KERNEL_ID not in env_make_kernels():
        pytest.skip(f"kernel {KERNEL_ID} is not cached (python -m vmcores make --kernel {KERNEL_ID}, "
                    "or set MMINSPECT_MAKE_VMCORES=1)")
    work = tmp_path_factory.mktemp("live")
    try:
        ctx = live_guest(KERNEL_ID, kernel=kf)
        lg = ctx.__enter__()
    except Exception as e:  # RecipeError, QEMU failing to start
        pytest.skip(f"cannot boot {KERNEL_ID} under QEMU: {e}")
    try:
        time.sleep(1.0)  # let the agent settle into its read loop
        lg.guest.stop()
        dump = work / "paused.core"
        lg.guest.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{dump}", timeout=600)
        yield Live(lg, dump)
    finally:
        ctx.__exit__(None, None, None)


# -- drgn on the live guest through QMP ---------------------------------------------


def test_cli_qemu_equals_dump(live):
    assert live.status() == "paused"
    for args in (("walk", "--mm", "efi_mm"), ("walk", "--mm", "init_mm", "--tables"),
                 ("walk", "--mm", "init_mm", "--format", "ptdump")):
        argv = [args[0], "--qemu", live.socket, "-s", live.vmlinux, *args[1:]]
        r = CliRunner().invoke(cli_main, argv)
        assert r.exit_code == 0, r.output
        assert r.stdout == live.cli(*args), args


def test_drgn_qemu_session_equals_dump(live):
    cases = ["mminspect walk --mm efi_mm", "mminspect walk --mm init_mm --format ptdump",
             "mminspect walk --mm 1"]
    script = "from drgn.commands import run_command\n" + "".join(
        f"print({MARK.format(i)!r})\nrun_command(prog, {c!r})\n" for i, c in enumerate(cases)
    )
    proc = subprocess.run(["drgn", "-q", "--qemu", live.socket, "-s", live.vmlinux, "-e", script],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = _split(proc.stdout)
    for i, c in enumerate(cases):
        assert got[i] == live.cli(*c.split()[1:]), c


# -- gdb on the live guest through the gdbstub ----------------------------------------


def test_gdb_equals_dump(live, record_property):
    names = _gdb_subcommands(live)
    cases = [
        "mminspect walk --mm efi_mm",
        "mminspect walk --mm init_mm --format ptdump",
        "mminspect walk --mm efi_mm --tables",
        "python import time; _State.get_target().invalidate(); _t0 = time.perf_counter()",
        "mminspect walk --mm init_mm --format json --tables",
        "python print('seconds %.3f' % (time.perf_counter() - _t0))",
        "mminspect walk --mm init_mm --tables",
        "mminspect walk --mm vmemmap --range fffffc0000000000+4G",
        "mminspect walk --mm 1",
    ]
    if "classify" in names:
        cases.append("mminspect classify --mm init_mm --summary")
    out, stdout, stderr = live.gdb(cases)
    assert "end" in out, stdout + stderr
    assert out[0] == live.cli("walk", "--mm", "efi_mm")
    assert out[1] == live.cli("walk", "--mm", "init_mm", "--format", "ptdump")
    assert out[2] == live.cli("walk", "--mm", "efi_mm", "--tables")
    doc = json.loads(out[4])
    assert _no_stats(out[4]) == _no_stats(live.cli("walk", "--mm", "init_mm", "--format", "json", "--tables"))
    assert out[6] == live.cli("walk", "--mm", "init_mm", "--tables")
    assert out[7] == live.cli("walk", "--mm", "vmemmap", "--range", "fffffc0000000000+4G")
    assert out[8] == live.cli("walk", "--mm", "1")
    if "classify" in names:
        assert out[9] == live.cli("classify", "--mm", "init_mm", "--summary")
    # The guest is still paused: nothing changed under the comparison.
    assert live.status() == "paused"
    seconds = float(out[5].split()[1])
    tables = doc["stats"]["tables"]
    record_property("gdb_init_mm_seconds", seconds)
    record_property("gdb_init_mm_tables", tables)
    print(f"\ngdb walk of init_mm: {tables} tables in {seconds:.3f} s "
          f"({tables / seconds:.0f} tables/s; walker {doc['stats']['seconds']:.3f} s, "
          f"{doc['stats']['bytes_read']} bytes in {doc['stats']['reads']} reads)")


def _gdb_subcommands(live) -> list:
    from mminspect import commands

    return commands.subcommand_names("gdb")


def test_gdb_without_physical_mode(live):
    """kgdb-like: no physical memory mode, gdb's virtual reads through the
    kernel's linear map, symbols loaded at the KASLR offset by the user; and
    VMCOREINFO computed from symbols and registers."""
    out, stdout, stderr = live.gdb([
        "python print('delta %#x' % _State.get_target().kaslr_delta())",
        "python print('el %d' % ((int(gdb.parse_and_eval('$cpsr')) >> 2) & 3))",
        # the fallback that does not need the PC: where the tables map swapper_pg_dir
        "python t = _State.target; print(' '.join('%#x' % ((v - t._swapper_pa) % (1 << 64)) "
        "for v in t._search(t._swapper_pa, t._swapper_pa)), '%#x' % t._kimage_voffset)",
    ])
    assert "end" in out, stdout + stderr
    delta = int(out[0].split()[1], 16)
    *found, kimage_voffset = out[2].split()
    assert kimage_voffset in found
    if out[1].strip() == "el 0":
        pytest.skip("the CPU stopped at EL0: under KPTI gdb's virtual reads cannot see the kernel")
    setup = [f"symbol-file -o {delta:#x} {live.vmlinux}"] if delta else []
    out, stdout, stderr = live.gdb(
        ["set mminspect phys-mode off", "mminspect walk --mm efi_mm",
         "mminspect walk --mm init_mm --format ptdump", "python print(_State.target.physical_mode)",
         "set mminspect phys-mode on", "set mminspect vmcoreinfo computed",
         "mminspect walk --mm init_mm --tables", "mminspect walk --mm efi_mm --format ptdump"],
        setup=setup,
    )
    assert "end" in out, stdout + stderr
    assert out[1] == live.cli("walk", "--mm", "efi_mm"), stderr
    assert out[2] == live.cli("walk", "--mm", "init_mm", "--format", "ptdump"), stderr
    assert out[3].strip() == "False"
    assert out[6] == live.cli("walk", "--mm", "init_mm", "--tables"), stderr
    assert out[7] == live.cli("walk", "--mm", "efi_mm", "--format", "ptdump"), stderr
    assert live.status() == "paused"


def test_gdb_user_errors(live):
    cases = ["mminspect walk --mm nosuchroot", "mminspect walk --bogus", "mminspect walk -c /x",
             "mminspect frob", "mminspect capture -o /tmp/x", "mminspect walk --range 1000-2000",
             "mminspect", "help mminspect walk", "mminspect walk -h"]
    out, stdout, stderr = live.gdb(cases)
    assert "Traceback" not in stdout + stderr
    errors = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(errors) == 6, stderr
    assert errors[:5] == [
        "unknown root 'nosuchroot': use init_mm, efi_mm, vmemmap, a pid or pgd:PHYS",
        "mminspect walk: No such option '--bogus'. (see: mminspect walk -h)",
        "mminspect walk: -c is not used in gdb: the target is this gdb connection",
        "mminspect: no subcommand 'frob' (choose from " + ", ".join(_gdb_subcommands(live)) + ")",
        "mminspect capture is not available in gdb: bundles record virtual reads through drgn's "
        "translation; capture from a dump of the guest (QMP dump-guest-memory) with the shell CLI instead",
    ], stderr
    assert re.fullmatch(r"range 0x1000-0x2000 lies outside init_mm \(0xff[0-9a-f]{14}-0xffffffffffffffff\)",
                        errors[5]), errors[5]
    assert "walk" in out[6] and "Subcommands:" in out[6]
    assert out[7].startswith("Walk one page-table tree") and "--mm ROOT" in out[7] and "--core" not in out[7]
    assert "--mm ROOT" in out[8]


def test_gdb_not_attached():
    """Without a connection the commands say what to do, in one line."""
    if shutil.which("gdb-multiarch") is None:
        pytest.skip("gdb-multiarch is not installed")
    proc = subprocess.run(["gdb-multiarch", "-batch", "-nx", "-ex", f"source {PLUGIN}",
                           "-ex", "mminspect walk --mm efi_mm", "-ex", "show mminspect phys-mode"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip() == (
        "gdb is not attached to a kernel (target remote :1234 for QEMU -s, or kgdb first)"
    ), proc.stderr
    assert "auto" in proc.stdout


def test_gdb_simulate_remove_equals_dump(live):
    if "simulate-remove" not in _gdb_subcommands(live):
        pytest.skip("no simulate-remove subcommand")
    args = ("simulate-remove", "--range", "78000000+128M", "--force", "--tables", "--fail-on", "critical")
    out, stdout, stderr = live.gdb(["mminspect " + " ".join(args)])
    assert "end" in out, stdout + stderr
    assert live.status() == "paused"
    # 78000000+128M is boot memory: refused (exit 3) even with --force.
    assert out[0] == live.cli(*args, exit_code=3)
