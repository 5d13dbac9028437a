"""A live arm64 guest for tests: booted, left running, reachable through QMP and
QEMU's gdbstub.

    from vmcores.live import live_guest
    with live_guest("debian-6.1-cloud-arm64") as lg:
        prog = drgn.Program(); prog.set_qemu_qmp(str(lg.qmp_socket))
        prog.load_debug_info([str(lg.kernel.vmlinux)])
        subprocess.run(["gdb-multiarch", "-batch", "-ex", f"target remote 127.0.0.1:{lg.gdb_port}", ...])
        with lg.paused():          # guest stopped while the block runs
            ...
        d = lg.dump(tmp_path / "d")  # truth + ELF dump of the paused guest, a vmcores.Dump
        lg.sh("cat /proc/meminfo")   # run a shell script in the guest
        lg.hotadd(); lg.hotremove()  # 1 GiB pc-dimm

``qmp_socket`` is a QMP monitor of its own for the caller (drgn ``--qemu``); the
recipe's own QMP connection is another socket. The guest runs only the agent
(PID 1, busybox sh) on its serial console.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .cache import RecipeError
from .kernels import KernelFiles, ensure_kernel
from .qemu import GiB, Guest, free_tcp_port
from .scenarios import Dump, capture, supported_scenarios


@dataclass
class LiveGuest:
    kernel: KernelFiles
    guest: Guest
    qmp_socket: Path  # for the caller's own QMP client (drgn --qemu SOCKET)
    gdb_port: int | None  # QEMU gdbstub on 127.0.0.1
    workdir: Path

    @property
    def pid(self) -> int:
        """The QEMU process id (for /proc/PID/mem readers)."""
        return self.guest.pid

    @property
    def console_log(self) -> Path:
        return self.guest.console_log

    def sh(self, script: str, timeout: float = 60.0) -> str:
        """Run a shell script in the guest; its stdout (raises on non-zero exit)."""
        return self.guest.sh(script, timeout)

    def run(self, script: str, timeout: float = 60.0, check: bool = True) -> tuple[int, bytes, bytes]:
        return self.guest.run(script, timeout, check)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Keep the guest stopped (QMP stop ... cont) while the block runs."""
        self.guest.stop()
        try:
            yield
        finally:
            self.guest.cont()

    def hotadd(self, size: int = GiB, ident: str = "dimm0") -> dict:
        why = supported_scenarios(self.kernel)["hotadd"]
        if why:
            raise RecipeError(f"{self.kernel.kernel_id}: cannot hot-add: {why}")
        return self.guest.hotadd(size, ident)

    def hotremove(self, ident: str = "dimm0") -> dict:
        return self.guest.hotremove(ident)

    def dump(self, out: Path, label: str = "live") -> Dump:
        """Record the truth, pause, write an ELF dump, resume: ``out/{vmcore,
        truth/,meta.json}`` (not in the cache), returned as a Dump."""
        out = Path(out)
        dimm = self.guest.dimms[-1] if self.guest.dimms else None
        meta = capture(self.guest, self.kernel, label, out, dimm=dimm)
        return Dump(self.kernel.kernel_id, label, out, out / "vmcore", self.kernel.vmlinux, out / "truth", meta)


@contextmanager
def live_guest(
    kernel_id: str = "debian-6.1-cloud-arm64",
    *,
    kernel: KernelFiles | None = None,
    cpu: str | None = None,
    memory: str = "1G",
    smp: int = 2,
    gdb: bool = True,
    append: str = "",
    workdir: Path | None = None,
    userspace: bool = False,
    boot_timeout: float = 180.0,
) -> Iterator[LiveGuest]:
    """Boot a guest (about 3 to 6 s under TCG once the kernel is cached) and
    yield a :class:`LiveGuest`; QEMU is ended on exit. With ``userspace``, the
    guest runs :mod:`vmcores.userspace`'s Debian arm64 Python with mminspect
    installed and the kernel's vmlinux under /usr/lib/debug."""
    kf = kernel or ensure_kernel(kernel_id)
    port = free_tcp_port() if gdb else None
    more = {}
    if userspace:
        from . import userspace as us  # noqa: PLC0415

        more = {"initramfs": us.build_userspace_initramfs, "extra_args": us.guest_args(kf)}
    g = Guest(kf, workdir=workdir, cpu=cpu, memory=memory, smp=smp, gdb_port=port, extra_qmp=True,
              append=append, boot_timeout=boot_timeout, **more)
    with g:
        assert g.extra_qmp_path is not None
        yield LiveGuest(kf, g, g.extra_qmp_path, port, g.workdir)
