"""The in-guest tests' guest: vmcores.userspace booted under QEMU, driven
through the serial-console agent, with command times recorded."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from click.testing import CliRunner

from mminspect.cli import main as cli_main

TIMEOUT = 1800  # one command under TCG on a loaded 2-CPU host


class InGuest:
    def __init__(self, lg):
        self.lg = lg
        self.vmlinux = str(lg.kernel.vmlinux)
        self.socket = str(lg.qmp_socket)
        self.times: dict = {}  # label -> seconds, printed when the guest ends

    def run(self, script: str, label: str | None = None, timeout: float = TIMEOUT):
        """(status, stdout, stderr) of a shell script run in the guest as root."""
        t = time.monotonic()
        rc, out, err = self.lg.run(script, timeout=timeout, check=False)
        if label:
            self.times[label] = round(time.monotonic() - t, 1)
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def ok(self, script: str, label: str | None = None) -> str:
        rc, out, err = self.run(script, label)
        assert rc == 0, f"{script}: exit {rc}\n{err[-2000:]}"
        assert "Traceback" not in err, err
        return out

    def host(self, *args: str) -> str:
        """The shell CLI on the host, reading the same guest through QMP."""
        argv = [args[0], "--qemu", self.socket, "-s", self.vmlinux, *args[1:]]
        r = CliRunner().invoke(cli_main, argv)
        assert r.exit_code in (0, 1), r.output
        return r.stdout

    def vmstat_refreshed(self) -> int:
        """nr_page_table_pages after vm.stat_refresh, read with shell builtins
        in the agent's own process (no process is born to read it), one
        second after the last process exited (as the recipe's EXACT_VMSTAT)."""
        out = self.lg.guest.run("read -t 1 x <> /tmp/.wait\n"  # RCU-deferred frees of exited processes land
                                "echo 1 > /proc/sys/vm/stat_refresh\n"
                                "while read -r k v; do [ $k = nr_page_table_pages ] && echo $v; done < /proc/vmstat\n"
                                "true", in_agent=True)[1].decode()
        return int(out.split()[0])


def boot_userspace_guest(kernel_id: str):
    """Boot ``kernel_id`` with the userspace; yield an InGuest (a generator
    for module-scoped fixtures). Skips with the reason when it cannot."""
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed")
    import vmcores
    from vmcores.live import live_guest
    from vmcores.scenarios import env_make_kernels

    kf = vmcores.cached_kernel(kernel_id)
    if kf is None:
        if kernel_id not in env_make_kernels():
            pytest.skip(f"kernel {kernel_id} is not cached (python -m vmcores make --kernel {kernel_id}, "
                        f"or MMINSPECT_MAKE_VMCORES={kernel_id})")
        try:
            kf = vmcores.ensure_kernel(kernel_id)
        except vmcores.RecipeError as e:
            pytest.skip(f"cannot fetch {kernel_id}: {e}")
    t = time.monotonic()
    from vmcores import userspace

    try:  # the packages (apt) and the wheel (pip): a machine without them skips
        userspace.ensure_rootfs()
        userspace.ensure_wheel()
    except vmcores.RecipeError as e:
        pytest.skip(f"cannot build the arm64 userspace: {e}")
    ctx = live_guest(kernel_id, kernel=kf, userspace=True, memory="2G", gdb=False, boot_timeout=900)
    lg = ctx.__enter__()  # a guest that does not boot is a failure, not a skip
    g = InGuest(lg)
    g.times["boot (initramfs built, guest up)"] = round(time.monotonic() - t, 1)
    try:
        yield g
    finally:
        ctx.__exit__(None, None, None)
        print(f"\n{kernel_id}: in-guest command times (s): " + json.dumps(g.times))


def ptdump_sections(ptdump: str) -> dict:
    """ptdump text -> {marker: [lines]} (the lines after each ---[ marker ]---)."""
    out: dict = {}
    cur = "start"
    for line in ptdump.splitlines():
        m = re.fullmatch(r"---\[ (.*) \]---", line)
        if m:
            cur = m.group(1)
            out.setdefault(cur, [])
        else:
            out.setdefault(cur, []).append(line)
    return out
