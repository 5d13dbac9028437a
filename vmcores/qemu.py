"""Booting an arm64 guest under QEMU (TCG, UEFI) and driving it over QMP and the
serial-console agent of :mod:`vmcores.initramfs`."""

from __future__ import annotations

import base64
import json
import queue
import re
import select
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from .cache import RecipeError, progress
from .initramfs import build_initramfs
from .kernels import KernelFiles

QEMU = "qemu-system-aarch64"
AAVMF_DIRS = [Path("/usr/share/AAVMF"), Path("/usr/share/qemu-efi-aarch64")]
APPEND = "console=ttyAMA0 memhp_default_state=online_movable panic=-1"
GiB = 1 << 30


def find_firmware() -> tuple[Path, Path]:
    for d in AAVMF_DIRS:
        code, vars_ = d / "AAVMF_CODE.fd", d / "AAVMF_VARS.fd"
        if code.exists() and vars_.exists():
            return code, vars_
    raise RecipeError("UEFI firmware AAVMF_CODE.fd/AAVMF_VARS.fd not found (apt-get install qemu-efi-aarch64)")


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if not path:
        raise RecipeError(f"{QEMU} not found (apt-get install qemu-system-arm)")
    return path


def qemu_version() -> str:
    out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "?"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:  # noqa: BLE001
        pass


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QMP:
    """A minimal synchronous QMP client over a Unix socket."""

    def __init__(self, path: Path, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RecipeError(f"QMP socket {path} did not come up") from None
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb", buffering=0)
        self.events: list[dict] = []
        self.greeting = self._read(timeout)
        self.execute("qmp_capabilities")

    def _read(self, timeout: float | None) -> dict:
        self.sock.settimeout(timeout)
        line = self.file.readline()
        if not line:
            raise RecipeError("QMP connection closed (QEMU exited?)")
        return json.loads(line)

    def execute(self, cmd: str, timeout: float = 120.0, **args) -> object:
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self._read(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise RecipeError(f"QMP {cmd}: no answer in {timeout:.0f} s") from None
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise RecipeError(f"QMP {cmd} failed: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def wait_event(self, name: str, timeout: float, match=lambda ev: True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name and match(ev):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise RecipeError(f"QMP event {name} did not come in {timeout:.0f} s")
            try:
                r = self._read(left)
            except TimeoutError:
                continue
            if "event" in r:
                self.events.append(r)

    def collect_events(self, done, timeout: float) -> tuple[list[dict], bool]:
        """Take every event queued or arriving until ``done(events so far)`` is
        true or ``timeout`` seconds pass -> (the events, whether ``done``)."""
        got, self.events = self.events, []
        deadline = time.monotonic() + timeout
        while not done(got):
            left = deadline - time.monotonic()
            # select() first: a socket read that times out mid-line leaves the
            # socket file unusable ("cannot read from timed out object").
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return got, False
            r = self._read(30.0)
            if "event" in r:
                got.append(r)
        return got, True

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class Guest:
    """One QEMU aarch64 guest booted on a kernel with the agent initramfs.

    Use as a context manager; ``start()`` boots and waits for the agent."""

    def __init__(
        self,
        kernel: KernelFiles,
        *,
        workdir: Path | None = None,
        memory: str = "1G",
        slots: int = 4,
        maxmem: str = "8G",
        smp: int = 2,
        cpu: str | None = None,
        gdb_port: int | None = None,
        extra_qmp: bool = False,
        append: str = "",
        boot_timeout: float = 180.0,
        initramfs=build_initramfs,
        extra_args: Sequence[str] = (),
    ):
        self.kernel = kernel
        self.cpu = cpu or kernel.cpu
        self.memory, self.slots, self.maxmem, self.smp = memory, slots, maxmem, smp
        self.gdb_port = gdb_port
        self.boot_timeout = boot_timeout
        #: (KernelFiles, out path) -> the initramfs written there: the busybox
        #: agent by default, vmcores.userspace's Python userspace for in-guest runs.
        self.initramfs = initramfs
        self.extra_args = list(extra_args)  # more QEMU arguments (a disk, ...)
        self.append = " ".join(x for x in (APPEND, kernel.append, append) if x)
        # Unix socket paths must be short: keep them in a private /tmp dir.
        self.sockdir = Path(tempfile.mkdtemp(prefix="mmi-qemu-"))
        self.workdir = Path(workdir) if workdir else self.sockdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.qmp_path = self.sockdir / "qmp.sock"
        # A second QMP monitor for other clients (drgn --qemu, tests): a QMP
        # socket serves one client at a time, and ours stays connected.
        self.extra_qmp_path = self.sockdir / "qmp-ext.sock" if extra_qmp else None
        self.console_log = self.workdir / "console.log"
        self.proc: subprocess.Popen | None = None
        self.qmp: QMP | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._seq = 0
        self.cmdline: list[str] = []
        self.boot_seconds: float | None = None
        self.release: str | None = None
        self.dimms: list[dict] = []

    # ----------------------------------------------------------------- lifecycle

    def build_cmdline(self) -> list[str]:
        code, vars_ = find_firmware()
        my_vars = self.workdir / "AAVMF_VARS.fd"
        shutil.copyfile(vars_, my_vars)
        initrd = self.initramfs(self.kernel, self.workdir / "initramfs.cpio.gz")
        cmd = [
            qemu_binary(),
            "-M", "virt", "-accel", "tcg,thread=multi", "-cpu", self.cpu, "-smp", str(self.smp),
            "-m", f"{self.memory},slots={self.slots},maxmem={self.maxmem}",
            "-drive", f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,file={my_vars}",
            "-device", "vmcoreinfo", "-device", "virtio-rng-pci",
            "-kernel", str(self.kernel.image), "-initrd", str(initrd), "-append", self.append,
            "-nographic", "-monitor", "none", "-serial", "stdio",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-no-reboot",
        ]
        cmd += self.extra_args
        if self.kernel.numa_nodes:
            cmd = self._numa(cmd, self.kernel.numa_nodes)
        if self.extra_qmp_path is not None:
            cmd += ["-qmp", f"unix:{self.extra_qmp_path},server=on,wait=off"]
        if self.gdb_port is not None:
            cmd += ["-gdb", f"tcp:127.0.0.1:{self.gdb_port}"]
        return cmd

    def _numa(self, cmd: list[str], nodes: int) -> list[str]:
        """``cmd`` with the RAM and CPUs split evenly over ``nodes`` NUMA nodes,
        booted from QEMU's device tree without UEFI (see KernelFiles.numa_nodes)."""
        cmd = list(cmd)
        cmd[cmd.index("virt")] = "virt,acpi=off"
        while "-drive" in cmd:
            i = cmd.index("-drive")
            del cmd[i : i + 2]
        m = re.fullmatch(r"(\d+)([MG])", self.memory)
        per = int(m.group(1)) * (1024 if m.group(2) == "G" else 1) // nodes
        for n in range(nodes):
            cpus = [c for c in range(self.smp) if c % nodes == n]
            cmd += ["-object", f"memory-backend-ram,id=node{n},size={per}M",
                    "-numa", f"node,nodeid={n},memdev=node{n}" + "".join(f",cpus={c}" for c in cpus)]
        return cmd

    def start(self) -> "Guest":
        self.cmdline = self.build_cmdline()
        progress(f"booting {self.kernel.kernel_id} (cpu {self.cpu}) under QEMU")
        self._log = open(self.console_log, "wb")
        self._stderr = open(self.workdir / "qemu.stderr", "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmdline, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._reader, daemon=True).start()
        self.qmp = QMP(self.qmp_path)
        line = self._expect(lambda l: l.startswith("@@AGENT READY"), self.boot_timeout, "the guest agent")
        self.release = line.split()[2] if len(line.split()) > 2 else None
        self.boot_seconds = time.monotonic() - t0
        progress(f"guest up in {self.boot_seconds:.1f} s ({self.release})")
        return self

    def _reader(self):
        buf = b""
        assert self.proc and self.proc.stdout
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                break
            self._log.write(chunk)
            self._log.flush()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for l in lines:
                self._lines.put(l.decode("utf-8", "replace").strip("\r"))
        self._lines.put("@@EOF")

    def _expect(self, pred, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RecipeError(f"timed out after {timeout:.0f} s waiting for {what} (see {self.console_log})")
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line == "@@EOF":
                raise RecipeError(f"QEMU exited while waiting for {what} (see {self.console_log}, "
                                  f"{self.workdir / 'qemu.stderr'})")
            if "Kernel panic" in line:
                raise RecipeError(f"guest kernel panic while waiting for {what} (see {self.console_log})")
            if pred(line):
                return line

    def close(self):
        if self.proc and self.proc.poll() is None:
            try:
                if self.qmp:
                    self.qmp.execute("quit", timeout=10)
            except (RecipeError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.qmp:
            self.qmp.close()
        for f in ("_log", "_stderr"):
            if hasattr(self, f):
                getattr(self, f).close()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------- agent

    def run(self, script: str, timeout: float = 60.0, check: bool = True,
            in_agent: bool = False) -> tuple[int, bytes, bytes]:
        """Run a shell script in the guest -> (status, stdout, stderr). With
        ``in_agent``, it runs inside the agent's own shell (no fork; it must not
        exit and should use shell builtins only)."""
        assert self.proc and self.proc.stdin
        self._seq += 1
        cid = f"{'.' if in_agent else ''}c{self._seq}"
        b64 = base64.b64encode(script.encode()).decode()
        chunks = [b64[i:i + 1024] for i in range(0, len(b64), 1024)] or [""]
        for c in chunks[:-1]:
            self.proc.stdin.write(f"+ {c}\n".encode())
        self.proc.stdin.write(f"{cid} {chunks[-1]}\n".encode())
        self.proc.stdin.flush()
        self._expect(lambda l: l == f"@@OUT {cid}", timeout, f"guest command {script[:40]!r}")
        out: list[str] = []
        out_lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self._expect(lambda l: True, max(1.0, deadline - time.monotonic()), "guest command output")
            if line == f"@@ERR {cid}":
                out, out_lines = out_lines, []
                continue
            if line.startswith(f"@@END {cid} "):
                err = out_lines
                rc = int(line.split()[2])
                break
            out_lines.append(line)
        stdout = base64.b64decode("".join(out))
        stderr = base64.b64decode("".join(err))
        if check and rc != 0:
            raise RecipeError(f"guest command {script.splitlines()[0][:60]!r} exited {rc}: "
                              f"{stderr.decode(errors='replace').strip()[-300:]}")
        return rc, stdout, stderr

    def sh(self, script: str, timeout: float = 60.0) -> str:
        return self.run(script, timeout)[1].decode(errors="replace")

    def fetch_dir(self, guest_dir: str, dest: Path, timeout: float = 120.0) -> None:
        """Copy a guest directory tree to ``dest`` (tar.gz through the agent)."""
        import tarfile
        import io

        data = self.run(f"cd {shlex.quote(guest_dir)} && tar -cf - . | gzip -c", timeout)[1]
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            tf.extractall(dest, filter="data")

    # ----------------------------------------------------------------- QMP helpers

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def stop(self) -> None:
        assert self.qmp
        self.qmp.execute("stop")

    def cont(self) -> None:
        assert self.qmp
        self.qmp.execute("cont")

    def kdump_formats(self) -> list[str]:
        """The kdump formats this QEMU writes for the guest (QMP
        query-dump-guest-memory-capability): kdump-zlib on Debian 12's 7.2,
        which is built without lzo and snappy."""
        assert self.qmp
        return [f for f in self.qmp.execute("query-dump-guest-memory-capability")["formats"]
                if f.startswith("kdump-")]

    def dump(self, path: Path, kdump: Sequence[str] = ()) -> dict:
        """Pause the guest, write an ELF dump (paging=false) to ``path`` and,
        in the same pause, one per ``kdump`` format (``kdump-zlib`` ...) to
        ``path.FORMAT``; resume. -> timings and sizes."""
        assert self.qmp
        path = Path(path)
        files = {"elf": path, **{fmt: path.with_name(f"{path.name}.{fmt}") for fmt in kdump}}
        for p in files.values():
            p.unlink(missing_ok=True)
        t0 = time.monotonic()
        self.qmp.execute("stop")
        t1 = time.monotonic()
        times = {}
        try:
            for fmt, p in files.items():
                t = time.monotonic()
                self.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{p}", format=fmt, timeout=600)
                times[fmt] = time.monotonic() - t
        finally:
            t2 = time.monotonic()
            self.qmp.execute("cont")
        return {"stop_s": t1 - t0, "dump_s": times["elf"],
                **{f"{fmt}_s": v for fmt, v in times.items() if fmt != "elf"},
                "paused_s": time.monotonic() - t0, "all_dumps_s": t2 - t1,
                "sizes": {fmt: p.stat().st_size for fmt, p in files.items()}}

    def memory_block_size(self) -> int:
        return int(self.sh("cat /sys/devices/system/memory/block_size_bytes").strip(), 16)

    def online_blocks(self) -> dict[int, str]:
        out = self.sh("for d in /sys/devices/system/memory/memory*; do echo ${d##*memory} $(cat $d/state); done")
        res = {}
        for line in out.splitlines():
            n, _, st = line.partition(" ")
            if n.isdigit():
                res[int(n)] = st.strip()
        return res

    def _wait_blocks(self, blocks: list[int], present: bool, timeout: float, state: str = "online") -> float:
        """Wait until every block is in ``state`` (``present``) or gone."""
        cond = " ".join(
            (f'[ "$(cat /sys/devices/system/memory/memory{n}/state 2>/dev/null)" = {state} ] || ok=0'
             if present else f"[ -e /sys/devices/system/memory/memory{n} ] && ok=0")
            for n in blocks
        )
        loops = int(timeout / 0.1)
        script = (f"i=0; while [ $i -lt {loops} ]; do ok=1; {cond}; [ $ok = 1 ] && exit 0; "
                  "usleep 100000; i=$((i+1)); done; exit 1")
        t0 = time.monotonic()
        rc = self.run(script, timeout + 30, check=False)[0]
        if rc != 0:
            raise RecipeError(f"memory blocks {blocks[0]}..{blocks[-1]} did not become "
                              f"{state if present else 'absent'} in {timeout:.0f} s")
        return time.monotonic() - t0

    def _settle(self, timeout: float) -> float:
        """Wait until MemTotal holds still for three polls 0.3 s apart: a block
        reads "online" before the guest has finished with the memory (a KASAN
        kernel under emulation was still adding pages to MemTotal, and mapping
        their shadow, when its blocks all read online)."""
        loops = int(timeout / 0.3)
        script = ("last=; same=0; i=0; while [ $i -lt %d ]; do "
                  "m=$(grep MemTotal /proc/meminfo); "
                  '[ "$m" = "$last" ] && same=$((same+1)) || same=0; '
                  "[ $same -ge 2 ] && exit 0; last=$m; usleep 300000; i=$((i+1)); done; exit 1") % loops
        t0 = time.monotonic()
        if self.run(script, timeout + 30, check=False)[0] != 0:
            raise RecipeError(f"MemTotal still changing after {timeout:.0f} s")
        return time.monotonic() - t0

    def hotadd(self, size: int = GiB, ident: str = "dimm0", timeout: float = 120.0, online: bool = True) -> dict:
        """Hot-add a pc-dimm of ``size`` bytes and wait until its blocks are
        online (or, not ``online``, present and offline: the guest's
        auto_online_blocks set to offline beforehand)."""
        assert self.qmp
        t0 = time.monotonic()
        self.qmp.execute("object-add", **{"qom-type": "memory-backend-ram", "id": f"mem-{ident}", "size": size})
        self.qmp.execute("device_add", driver="pc-dimm", id=ident, memdev=f"mem-{ident}")
        dev = next(d["data"] for d in self.qmp.execute("query-memory-devices")
                   if d.get("data", {}).get("id") == ident)
        bs = self.memory_block_size()
        blocks = list(range(dev["addr"] // bs, (dev["addr"] + dev["size"]) // bs))
        waited = self._wait_blocks(blocks, True, timeout, "online" if online else "offline")
        waited += self._settle(timeout)
        info = {"id": ident, "memdev": f"mem-{ident}", "addr": dev["addr"], "size": dev["size"],
                "slot": dev.get("slot"), "node": dev.get("node"), "blocks": blocks,
                "block_size": bs, "seconds": time.monotonic() - t0, "guest_wait_s": waited}
        self.dimms.append(info)
        return info

    def hotremove(self, ident: str = "dimm0", timeout: float = 120.0) -> dict:
        """device_del a DIMM, wait for QEMU's DEVICE_DELETED and for the guest's
        blocks to go, then drop the memory backend."""
        assert self.qmp
        info = next(d for d in self.dimms if d["id"] == ident)
        t0 = time.monotonic()
        self.qmp.execute("device_del", id=ident)
        self.qmp.wait_event("DEVICE_DELETED", timeout, lambda ev: ev.get("data", {}).get("device") == ident)
        waited = self._wait_blocks(info["blocks"], False, timeout) + self._settle(timeout)
        self.qmp.execute("object-del", id=info["memdev"])
        self.dimms.remove(info)
        return {**info, "seconds": time.monotonic() - t0, "guest_wait_s": waited}

    def describe(self) -> dict:
        """What meta.json says about this QEMU."""
        return {
            "qemu": qemu_version(),
            "cmdline": " ".join(shlex.quote(c) for c in self.cmdline),
            "cpu": self.cpu,
            "smp": self.smp,
            "memory": self.memory,
            "slots": self.slots,
            "maxmem": self.maxmem,
            "append": self.append,
            "gdb_port": self.gdb_port,
        }
