"""A tiny busybox initramfs with a command agent on the serial console.

Contents: /bin/busybox (from Debian's busybox-static:arm64, fetched with
``apt-get download`` and cached; the package has it at bin/busybox or, usr-merged,
usr/bin/busybox), the kernel's modules that must be loaded
(qemu_fw_cfg, so that ``-device vmcoreinfo`` gets the guest's VMCOREINFO), /init,
/bin/agent and /bin/capture-truth. The cpio (newc) archive is written in Python,
so no cpio binary is needed.

Agent protocol (one line each way, on the serial console, after
``@@AGENT READY <release>``):

* host -> guest: ``<id> <base64 of a shell script>``; a long script is sent as
  ``+ <base64 chunk>`` lines first, then the ``<id> <last chunk>`` line; an id
  starting with "." runs the script inside the agent's shell (PID 1) instead of
  a child shell, so that no extra process exists while it runs;
* guest -> host: ``@@OUT <id>``, the script's stdout in base64, ``@@ERR <id>``,
  its stderr in base64, ``@@END <id> <exit status>``.

The kernel's console log level is dropped to 1 once the agent runs, so kernel
messages do not interleave with the agent's lines (dmesg keeps them all).
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from .cache import RecipeError, cache_dir, progress, sha256_file, write_json
from .debs import extract_members
from .model import KernelFiles

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /truth /sbin /usr/bin /usr/sbin /mnt
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tmpfs tmpfs /tmp
for m in $(cat /lib/modules/load-order 2>/dev/null); do
    insmod /lib/modules/$m.ko || echo "@@INIT insmod $m failed"
done
[ -x /etc/rc.local ] && /etc/rc.local  # a richer initramfs's own steps (vmcores.userspace)
echo "@@INIT done $(cat /proc/uptime)"
exec /bin/busybox sh /bin/agent
"""

AGENT = r"""#!/bin/busybox sh
# mminspect guest agent: runs scripts sent by the host on the serial console.
stty -echo 2>/dev/null
dmesg -n 1
cd /
echo
echo "@@AGENT READY $(cat /proc/sys/kernel/osrelease)"
buf=
: > /tmp/.out
: > /tmp/.err
mkfifo /tmp/.wait
while read -r id chunk; do
    case "$id" in
        "") continue ;;
        +) buf="$buf$chunk"; continue ;;
    esac
    echo "$buf$chunk" | base64 -d > /tmp/.cmd 2>/dev/null
    buf=
    case "$id" in
        .*) . /tmp/.cmd > /tmp/.out 2> /tmp/.err < /dev/null ;;  # in the agent's own process
        *) /bin/busybox sh /tmp/.cmd > /tmp/.out 2> /tmp/.err < /dev/null ;;
    esac
    rc=$?
    # Only builtins from here on when the output is empty (as after an in-agent
    # command): the host may pause and dump the guest as soon as it reads @@END,
    # and no short-lived process may be around then.
    echo "@@OUT $id"
    [ -s /tmp/.out ] && base64 /tmp/.out
    echo "@@ERR $id"
    [ -s /tmp/.err ] && base64 /tmp/.err
    echo "@@END $id $rc"
done
echo "@@AGENT EOF"
"""

# Ground truth, recorded inside the guest; $1 is the scenario name. Runs with
# nothing else alive in the guest but the agent's shell.
CAPTURE = r"""#!/bin/busybox sh
T=/truth/$1
rm -rf "$T"
mkdir -p "$T/memory"
cat /proc/uptime > "$T/uptime"
# The debugfs page-table dumps first, while the fewest things have changed.
for f in kernel_page_tables efi_page_tables; do
    [ -r /sys/kernel/debug/$f ] && cat /sys/kernel/debug/$f > "$T/$f"
done
for f in vmstat meminfo iomem cmdline version zoneinfo buddyinfo pagetypeinfo cpuinfo modules; do
    cat /proc/$f > "$T/$f" 2>/dev/null
done
cat /sys/devices/system/memory/block_size_bytes > "$T/memory/block_size_bytes"
# Shell builtins for the many small sysfs files: a fork costs ~20 ms under TCG.
dirs=
for d in /sys/devices/system/memory/memory*; do dirs="$dirs $T/memory/${d##*/}"; done
mkdir -p $dirs
for d in /sys/devices/system/memory/memory*; do
    for f in state valid_zones phys_index removable phys_device online; do
        [ -r "$d/$f" ] && read -r v < "$d/$f" && echo "$v" > "$T/memory/${d##*/}/$f"
    done
done
dmesg > "$T/dmesg"
echo "_text _stext _etext _sdata _edata _end __init_begin __init_end swapper_pg_dir idmap_pg_dir
tramp_pg_dir init_mm efi_mm vmemmap memstart_addr kimage_voffset mem_section vmcoreinfo_data
init_uts_ns _totalram_pages vm_node_stat vm_zone_stat" | tr ' ' '\n' > /tmp/.syms
grep -wF -f /tmp/.syms /proc/kallsyms > "$T/kallsyms_subset"
cat /sys/kernel/vmcoreinfo > "$T/sys_kernel_vmcoreinfo" 2>/dev/null
uname -a > "$T/uname"
cat /proc/uptime > "$T/uptime_end"
"""

# Run inside the agent's own shell (PID 1, no child process alive), last thing
# before the dump: wait a second for RCU-deferred page-table frees of processes
# that exited (7.x frees, and uncounts, them after a grace period), fold the per-CPU vmstat deltas into the global counters
# (vm.stat_refresh) and read /proc/vmstat with shell builtins only, so that the
# process set (and so the user page tables) is the one the dump will show.
# $SC is the scenario.
EXACT_VMSTAT = r"""read -t 1 x <> /tmp/.wait  # 1 s without a fork: deferred (RCU) page-table frees of exited processes land
echo 1 > /proc/sys/vm/stat_refresh
while IFS= read -r l; do echo "$l"; done < /proc/vmstat > "/truth/$SC/vmstat_refreshed"
"""


def _cpio_newc(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """entries: (name, mode, data, rdevmajor, rdevminor) -> a newc archive."""
    out = io.BytesIO()

    def pad4():
        out.write(b"\0" * (-out.tell() % 4))

    ino = 1
    for name, mode, data, rmaj, rmin in [*entries, ("TRAILER!!!", 0, b"", 0, 0)]:
        nb = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(nb), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(nb)
        pad4()
        out.write(data)
        pad4()
        ino += 1
    return out.getvalue()


#: Where busybox-static puts the binary: bin/busybox up to Debian 12, and
#: usr/bin/busybox in usr-merged suites (sid). Regular files only: a suite may
#: ship one path as a symlink to the other.
BUSYBOX_MEMBER = re.compile(r"^(usr/)?bin/busybox$")


def busybox_from_deb(deb: Path, out: Path) -> Path:
    """Copy the busybox binary out of a busybox-static .deb to ``out``,
    wherever the package puts it (see BUSYBOX_MEMBER)."""
    tmp = Path(tempfile.mkdtemp(prefix=".busybox-", dir=out.parent))
    try:
        got = extract_members(deb, {"busybox": BUSYBOX_MEMBER}, tmp)["busybox"]
        got.chmod(0o755)
        got.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def busybox_path() -> Path:
    """An aarch64 static busybox, from Debian's busybox-static:arm64 (cached)."""
    d = cache_dir() / "busybox"
    bb = d / "busybox"
    if bb.exists():
        return bb
    d.mkdir(parents=True, exist_ok=True)
    progress("apt-get download busybox-static:arm64")
    try:
        subprocess.run(
            ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", "busybox-static:arm64"],
            cwd=d, check=True, capture_output=True, text=True,
        )
    except FileNotFoundError:
        raise RecipeError("apt-get not found: cannot fetch busybox-static:arm64") from None
    except subprocess.CalledProcessError as e:
        raise RecipeError(
            "apt-get download busybox-static:arm64 failed (run: dpkg --add-architecture arm64 && "
            f"apt-get update): {e.stderr.strip().splitlines()[-1] if e.stderr.strip() else e.returncode}"
        ) from None
    deb = sorted(d.glob("busybox-static_*_arm64.deb"))[-1]
    busybox_from_deb(deb, bb)
    m = re.match(r"busybox-static_(.*)_arm64\.deb", deb.name)
    write_json(d / "busybox.json", {"deb": deb.name, "version": m.group(1).replace("%3a", ":") if m else None,
                                    "sha256": sha256_file(bb)})
    deb.unlink()
    return bb


Entry = tuple[str, int, bytes, int, int]  # (name, mode, data, rdevmajor, rdevminor) of _cpio_newc


def agent_entries(kernel: KernelFiles, prefix: str = "") -> list[Entry]:
    """The agent's files: device nodes, busybox, /init, the agent, the truth
    script and the kernel's modules with their load order; ``prefix`` ("usr/")
    puts bin/ and lib/ under /usr, for a merged-/usr root whose /bin and /lib
    are symlinks (vmcores.userspace)."""
    bb = busybox_path().read_bytes()
    f755, f644 = stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
    entries: list[Entry] = [
        ("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1),
        ("dev/null", stat.S_IFCHR | 0o666, b"", 1, 3),
        (f"{prefix}bin/busybox", f755, bb, 0, 0),
        (f"{prefix}bin/sh", stat.S_IFLNK | 0o777, b"busybox", 0, 0),
        ("init", f755, INIT.encode(), 0, 0),
        (f"{prefix}bin/agent", f755, AGENT.encode(), 0, 0),
        (f"{prefix}bin/capture-truth", f755, CAPTURE.encode(), 0, 0),
    ]
    order = []
    for name, path in kernel.modules.items():
        entries.append((f"{prefix}lib/modules/{name}.ko", f644, Path(path).read_bytes(), 0, 0))
        order.append(name)
    entries.append((f"{prefix}lib/modules/load-order", f644, ("\n".join(order) + "\n").encode(), 0, 0))
    return entries


def build_initramfs(kernel: KernelFiles, out: Path) -> Path:
    """Write a gzip'ed newc initramfs for this kernel to ``out``."""
    d755 = stat.S_IFDIR | 0o755
    entries: list[Entry] = [
        (name, d755, b"", 0, 0)
        for name in ("bin", "dev", "proc", "sys", "tmp", "truth", "lib", "lib/modules", "etc")
    ]
    entries += agent_entries(kernel)
    data = gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)
    out.write_bytes(data)
    return out
