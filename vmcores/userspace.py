"""An arm64 Debian userspace that runs mminspect inside the guest.

``mminspect -k`` reads the kernel it runs on through /proc/kcore: to prove it,
the tool must run inside an arm64 guest, as root, as on an arm64 server. This
module builds that guest's root file system, without running any arm64 code on
the host and without root:

* **packages**: python3, python3-drgn, python3-numpy, python3-click and
  python3-tabulate with their Depends, resolved by apt from the package lists of
  the recipe's own Debian sid state (``kernels._sid_opts()``: arm64 only, the
  system's apt configuration untouched) as if installing onto an empty arm64
  system (``Dir::State::status`` an empty file), fetched with ``apt-get
  download`` and cached;
* **unpacking**: each .deb's data archive is read in Python (ar, then tar),
  leaving out what a command-line Python does not need (documentation, man
  pages, locales, tests, __pycache__, headers, gconv, the packages listed in
  ``SKIP_PACKAGES``); no maintainer script runs, so the few things they would
  do (the /bin, /lib, /sbin symlinks of merged /usr) are done here;
* **mminspect**: the project's own wheel (``pip wheel --no-deps``), unpacked
  into /usr/lib/python3/dist-packages with its dist-info (so drgn finds the
  ``drgn.plugins`` entry point and ``%mminspect`` exists) and its console
  scripts written as /usr/bin wrappers;
* **initramfs**: the packages as one cached gzip'ed cpio (newc, written in
  Python by :func:`vmcores.initramfs._cpio_newc`), followed, per boot, by a
  second small archive with busybox, the agent and /init of
  :mod:`vmcores.initramfs`, the kernel's modules and the mminspect wheel. The
  kernel unpacks concatenated archives one after the other.

The kernel's debug info (the vmlinux a distribution ships in its -dbg package)
is too big for an initramfs (411 MB for Debian's 7.2 cloud kernel). It reaches
the guest as a read-only virtio disk: an ext4 image made without root
(``mke2fs -d``) holding ``lib/modules/RELEASE/vmlinux``, mounted at
/usr/lib/debug, where drgn's default search looks, as when the -dbg package is
installed.

Cache layout (``$MMINSPECT_CACHE/userspace/``)::

    sid-arm64/debs/*.deb             the packages (kept: the rootfs is remade from them)
    sid-arm64/rootfs.cpio.gz         the unpacked, stripped packages
    sid-arm64/userspace.json         packages, versions, sha256, sizes
    wheels/<source hash>/*.whl       mminspect's wheel for a state of the source tree
    debuginfo/<kernel id>.ext4       the vmlinux, for /usr/lib/debug
    modules/<kernel id>/*.ko         modules the userspace needs (virtio_blk)
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .cache import RecipeError, cache_dir, progress, read_json, sha256_file, write_json
from .initramfs import Entry, _cpio_newc, agent_entries
from .debs import data_tar, extract_members, postinst_alternatives
from .kernels import KernelFiles, _apt_download, _run, _sid_opts

#: What mminspect needs in the guest (Debian package names).
PACKAGES = ("python3", "python3-drgn", "python3-numpy", "python3-click", "python3-tabulate")
#: Depends that a command-line Python run never touches: the package manager
#: and its configuration, time zones, C headers of numpy, MIME and network
#: tables, readline's inputrc. Their absence is recorded in userspace.json.
SKIP_PACKAGES = frozenset({"dpkg", "debconf", "tzdata", "python3-numpy-dev", "media-types", "netbase",
                           "readline-common", "libc-gconv-modules-extra"})
#: Paths left out of every package (matched against the path without "./").
SKIP_PATHS = re.compile(
    r"^usr/share/(doc|man|info|locale|lintian|bug|bash-completion|gcc|gdb|pixmaps|applications|"
    r"python3/debian_defaults|binfmts)/"
    r"|(^|/)__pycache__/|\.pyc$|\.a$|^usr/include/|^usr/lib/[^/]+/gconv/"
    r"|^usr/lib/python3\.\d+/(test|idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data)/"
    r"|^usr/lib/python3/dist-packages/numpy/(.+/)?tests/"
    r"|^usr/lib/python3/dist-packages/numpy/_core/include/"
    r"|^usr/lib/python3/dist-packages/drgn/.*\.pyi$"
)
#: Modules the userspace loads before mounting the debug-info disk.
MODULES = ("virtio_blk",)
NAME = "sid-arm64"
DEBUG_MOUNT = "/usr/lib/debug"

# The userspace's own additions to /init, run before the agent starts: the
# debug-info disk (when the kernel has a virtio disk for it) mounted read-only
# where drgn looks, and an unprivileged user for the permission checks.
RC_LOCAL = r"""#!/bin/sh
for m in $(cat /lib/modules/userspace-load-order 2>/dev/null); do
    insmod /lib/modules/$m.ko 2>/dev/null
done
if [ -b /dev/vda ]; then
    mkdir -p %(mnt)s && mount -t ext4 -o ro,noload /dev/vda %(mnt)s || echo "@@INIT mount /dev/vda failed"
fi
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
chmod 1777 /tmp
""" % {"mnt": DEBUG_MOUNT}

PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n"
GROUP = "root:x:0:\nuser:x:1000:\n"

D755, F755, F644 = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777



def userspace_dir() -> Path:
    return cache_dir() / "userspace"


# --------------------------------------------------------------------------- packages


def _apt_sid(*args: str) -> subprocess.CompletedProcess:
    """apt-get on the recipe's sid state, as if onto an empty arm64 system."""
    empty = userspace_dir() / "empty-status"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("")
    opts = [*_sid_opts(), "-o", f"Dir::State::status={empty}", "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures::=arm64", "-o", "APT::Sandbox::User=root"]
    return _run(["apt-get", "-q", *opts, *args])


def resolve_packages() -> list[tuple[str, str, str]]:
    """(package, version, architecture) of PACKAGES and every package they
    Depend on (Recommends left out), in apt's install order."""
    out = _apt_sid("-s", "--no-install-recommends", "install", *PACKAGES).stdout
    pkgs = []
    for m in re.finditer(r"^Inst (\S+) \((\S+) .*\[(\w+)\]\)", out, re.M):
        pkgs.append((m.group(1), m.group(2), m.group(3)))
    if not any(p[0] == "python3-drgn" for p in pkgs):
        raise RecipeError("apt resolved no python3-drgn for arm64 in sid: " + (out.strip().splitlines() or ["?"])[-1])
    return pkgs


@dataclass
class Tree:
    """A file tree being assembled for a cpio archive: path -> (mode, data)."""

    files: dict[str, tuple[int, bytes]]
    skipped_bytes: int = 0

    def add_tar(self, tf: tarfile.TarFile, owner: str, by_pkg: dict[str, int]) -> None:
        links = []
        for m in tf:
            path = m.name.lstrip("./").rstrip("/")
            if not path:
                continue
            if SKIP_PATHS.search(path + ("/" if m.isdir() else "")):
                self.skipped_bytes += m.size
                continue
            if m.isdir():
                self.files.setdefault(path, (D755, b""))
            elif m.issym():
                self.files[path] = (LNK, m.linkname.encode())
            elif m.islnk():
                links.append((path, m.linkname.lstrip("./")))
            elif m.isfile():
                data = tf.extractfile(m).read()
                self.files[path] = (stat.S_IFREG | (m.mode & 0o7777), data)
                by_pkg[owner] = by_pkg.get(owner, 0) + len(data)
        for path, target in links:
            if target in self.files:
                self.files[path] = self.files[target]

    def entries(self) -> list[Entry]:
        """Every path with its parents before it, as cpio entries."""
        out: list[Entry] = []
        seen: set[str] = set()
        for path in sorted(self.files):
            parts = path.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    mode = self.files.get(d, (D755, b""))[0]
                    out.append((d, mode if stat.S_ISDIR(mode) else D755, b"", 0, 0))
            if path not in seen:
                seen.add(path)
                mode, data = self.files[path]
                out.append((path, mode, data, 0, 0))
        return out


def ensure_rootfs(force: bool = False) -> Path:
    """The cached gzip'ed cpio of the stripped packages (built if missing)."""
    d = userspace_dir() / NAME
    out = d / "rootfs.cpio.gz"
    meta = d / "userspace.json"
    if out.exists() and meta.exists() and not force:
        return out
    t0 = time.monotonic()
    pkgs = resolve_packages()
    want = [p for p in pkgs if p[0] not in SKIP_PACKAGES]
    debdir = d / "debs"
    have = {p.name for p in debdir.glob("*.deb")} if debdir.exists() else set()
    missing = [p for p in want if not any(n.startswith(f"{p[0]}_") and n.endswith(f"_{p[2]}.deb") for n in have)]
    if missing:
        debdir.mkdir(parents=True, exist_ok=True)
        progress(f"apt-get download {len(missing)} arm64 packages from sid")
        _run(["apt-get", "-q", *_sid_opts(), "-o", "APT::Architecture=arm64", "-o", "APT::Sandbox::User=root",
              "download", *(f"{n}:{a}={v}" if a != "all" else f"{n}={v}" for n, v, a in missing)], cwd=debdir)
    t1 = time.monotonic()
    tree = Tree({})
    by_pkg: dict[str, int] = {}
    records = []
    alternatives: list[tuple[str, str, str, int]] = []
    for name, version, arch in want:
        debs = sorted(debdir.glob(f"{name}_*_{arch}.deb"))
        if not debs:
            raise RecipeError(f"apt-get download {name}: no .deb in {debdir}")
        deb = debs[-1]
        with data_tar(deb) as tf:
            tree.add_tar(tf, name, by_pkg)
        alternatives += postinst_alternatives(deb)
        records.append({"package": name, "version": version, "arch": arch, "deb": deb.name,
                        "deb_size": deb.stat().st_size, "deb_sha256": sha256_file(deb),
                        "unpacked_bytes": by_pkg.get(name, 0)})
    # Merged /usr (Debian since 12): the symlinks base-files' maintainer
    # scripts would make. The dynamic linker is found through /lib.
    for link in ("bin", "sbin", "lib"):
        tree.files[link] = (LNK, f"usr/{link}".encode())
    # What the postinst scripts' update-alternatives would link: the best
    # priority per name, as in auto mode.
    best: dict[str, tuple[int, str, str]] = {}
    for link, alt, path, prio in alternatives:
        if path.lstrip("/") in tree.files and (alt not in best or prio > best[alt][0]):
            best[alt] = (prio, link, path)
    for prio, link, path in best.values():
        tree.files[link.lstrip("/")] = (LNK, path.encode())
    entries = tree.entries()
    raw = _cpio_newc(entries)
    # No trailer-only second archive problem: each archive ends with its own
    # TRAILER!!!; the kernel starts the next one after it.
    d.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(gzip.compress(raw, compresslevel=6, mtime=0))
    tmp.replace(out)
    t2 = time.monotonic()
    files = sum(1 for e in entries if stat.S_ISREG(e[1]))
    write_json(meta, {
        "name": NAME,
        "packages": records,
        "skipped_packages": sorted({p[0] for p in pkgs} & SKIP_PACKAGES),
        "alternatives": {alt: {"link": link, "path": path} for alt, (_, link, path) in best.items()},
        "sizes": {"files": files, "unpacked": len(raw), "cpio_gz": out.stat().st_size,
                  "left_out_bytes": tree.skipped_bytes,
                  "debs": sum(r["deb_size"] for r in records)},
        "times": {"download_s": t1 - t0, "unpack_s": t2 - t1},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    progress(f"userspace {NAME}: {len(records)} packages, {files} files, {len(raw) >> 20} MiB unpacked, "
             f"{out.stat().st_size >> 20} MiB gzip'ed ({tree.skipped_bytes >> 20} MiB left out) in "
             f"{t2 - t0:.1f} s -> {out}")
    return out


def userspace_info() -> dict:
    return read_json(userspace_dir() / NAME / "userspace.json")


# --------------------------------------------------------------------------- mminspect


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _source_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([root / "pyproject.toml", *(root / "mminspect").rglob("*")]):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def ensure_wheel() -> Path:
    """mminspect's wheel for the source tree as it is now (cached by a hash
    of the sources)."""
    root = project_root()
    d = userspace_dir() / "wheels" / _source_hash(root)
    whl = sorted(d.glob("mminspect-*.whl")) if d.exists() else []
    if whl:
        return whl[-1]
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # Built from a copy, so that setuptools' build/ and egg-info never land in the tree.
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("mminspect", "vmcores"):
        shutil.copytree(root / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, src / name)
    progress("pip wheel --no-deps (mminspect)")
    # Build isolation needs setuptools and wheel from PyPI; without a network,
    # the environment's own setuptools may do (if it has bdist_wheel).
    for isolation in ([], ["--no-build-isolation"]):
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                            "-w", str(tmp), str(src)], capture_output=True, text=True)
        if r.returncode == 0:
            break
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        err = [l for l in r.stderr.strip().splitlines() if "error" in l.lower()] or ["?"]
        raise RecipeError(f"pip wheel of {root} failed: {err[0].strip()}")
    shutil.rmtree(src)
    if d.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(d)
    return sorted(d.glob("mminspect-*.whl"))[-1]


def wheel_entries(whl: Path) -> list[Entry]:
    """The wheel unpacked into /usr/lib/python3/dist-packages, and a /usr/bin
    wrapper per console script (what pip would write)."""
    site = "usr/lib/python3/dist-packages"
    tree = Tree({})
    scripts: dict[str, str] = {}
    with zipfile.ZipFile(whl) as zf:
        for info in zf.infolist():
            if info.is_dir() or SKIP_PATHS.search(f"{site}/{info.filename}"):
                continue
            data = zf.read(info)
            tree.files[f"{site}/{info.filename}"] = (F644, data)
            if info.filename.endswith(".dist-info/entry_points.txt"):
                section = None
                for line in data.decode().splitlines():
                    line = line.strip()
                    if line.startswith("["):
                        section = line.strip("[]")
                    elif section == "console_scripts" and "=" in line:
                        name, _, target = (x.strip() for x in line.partition("="))
                        scripts[name] = target
    for name, target in scripts.items():
        mod, _, func = target.partition(":")
        tree.files[f"usr/bin/{name}"] = (F755, (
            f"#!/usr/bin/python3\nimport sys\nfrom {mod} import {func}\nsys.exit({func}())\n").encode())
    return [e for e in tree.entries() if e[0] not in ("usr", "usr/bin", "usr/lib")]


# --------------------------------------------------------------------------- kernel side


def _module_package(kf: KernelFiles) -> str | None:
    """The package with the kernel's modules: sid's linux-modules-*, bookworm's image package."""
    roles = {p.get("role"): p["package"] for p in kf.info.get("packages") or []}
    return roles.get("modules") or roles.get("image")


def ensure_modules(kf: KernelFiles) -> dict[str, Path]:
    """The MODULES this kernel builds as modules (name -> .ko), fetched from
    its Debian package and cached; built-in ones need nothing."""
    wanted = [m for m in MODULES if kf.config_value(_config_name(m)) == "m"]
    if not wanted:
        return {}
    d = userspace_dir() / "modules" / kf.kernel_id
    have = {m: d / f"{m}.ko" for m in wanted}
    if all(p.exists() for p in have.values()):
        return have
    pkg = _module_package(kf)
    if pkg is None:
        raise RecipeError(f"{kf.kernel_id}: {', '.join(wanted)} are modules, and no package to take them from")
    work = d / "debs"
    from .kernels import _apt_opts, get_spec  # noqa: PLC0415

    debs = _apt_download([pkg], work, _apt_opts(get_spec(kf.kernel_id)))
    got = extract_members(debs[pkg], {m: re.compile(rf"/{re.escape(m)}\.ko(\.xz)?$") for m in wanted}, d)
    for m, path in got.items():
        if path.suffix == ".xz":
            (d / f"{m}.ko").write_bytes(lzma.decompress(path.read_bytes()))
            path.unlink()
    shutil.rmtree(work)
    return have


def _config_name(module: str) -> str:
    return {"virtio_blk": "VIRTIO_BLK"}[module]


def has_debug_disk(kf: KernelFiles) -> bool:
    """Can this kernel mount the debug-info disk (a virtio disk with ext4)?"""
    return kf.config_value("VIRTIO_BLK") in ("y", "m") and kf.config_value("EXT4_FS") == "y"


def ensure_debuginfo_disk(kf: KernelFiles) -> Path:
    """A read-only ext4 image with ``lib/modules/RELEASE/vmlinux`` (made by
    ``mke2fs -d``, no root needed), cached per kernel."""
    release = kf.release
    if not release:
        raise RecipeError(f"{kf.kernel_id}: release unknown, cannot place its vmlinux for drgn")
    d = userspace_dir() / "debuginfo"
    img = d / f"{kf.kernel_id}.ext4"
    stamp = d / f"{kf.kernel_id}.json"
    size = kf.vmlinux.stat().st_size
    if img.exists() and stamp.exists() and read_json(stamp).get("vmlinux_size") == size:
        return img
    mke2fs = shutil.which("mke2fs") or "/sbin/mke2fs"
    if not os.path.exists(mke2fs):
        raise RecipeError("mke2fs not found (apt-get install e2fsprogs)")
    stage = d / f".stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "lib" / "modules" / release).mkdir(parents=True)
    dest = stage / "lib" / "modules" / release / "vmlinux"
    try:
        os.link(kf.vmlinux, dest)
    except OSError:
        shutil.copyfile(kf.vmlinux, dest)
    tmp = img.with_name(img.name + ".tmp")
    tmp.unlink(missing_ok=True)
    mib = size // (1 << 20) + size // (1 << 20) // 20 + 32
    progress(f"mke2fs -d: {kf.kernel_id}'s vmlinux ({size >> 20} MiB) for {DEBUG_MOUNT}")
    try:
        _run([mke2fs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "debuginfo", "-E", "root_owner=0:0",
              "-d", str(stage), str(tmp), f"{mib}M"])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    tmp.replace(img)
    write_json(stamp, {"vmlinux": str(kf.vmlinux), "vmlinux_size": size, "release": release})
    return img


# --------------------------------------------------------------------------- initramfs


def build_userspace_initramfs(kf: KernelFiles, out: Path) -> Path:
    """The guest's initramfs: the cached package archive, then a small one
    with busybox, /init and the agent, the kernel's modules and mminspect."""
    rootfs = ensure_rootfs()
    whl = ensure_wheel()
    entries: list[Entry] = [
        (name, D755, b"", 0, 0)
        for name in ("dev", "proc", "sys", "tmp", "truth", "root", "etc", "usr/sbin", "usr/lib/modules", "mnt")
    ]
    entries += agent_entries(kf, prefix="usr/")
    entries += [
        ("etc/rc.local", F755, RC_LOCAL.encode(), 0, 0),
        ("etc/passwd", F644, PASSWD.encode(), 0, 0),
        ("etc/group", F644, GROUP.encode(), 0, 0),
    ]
    extra = ensure_modules(kf) if has_debug_disk(kf) else {}
    for name, path in extra.items():
        entries.append((f"usr/lib/modules/{name}.ko", F644, path.read_bytes(), 0, 0))
    entries.append(("usr/lib/modules/userspace-load-order", F644, ("\n".join(extra) + "\n").encode(), 0, 0))
    entries += wheel_entries(whl)
    if not has_debug_disk(kf):
        entries += debuginfo_entries(kf)
    second = gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        with open(rootfs, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
        f.write(b"\0" * (-f.tell() % 4))
        f.write(second)
    tmp.replace(out)
    return out


def debuginfo_entries(kf: KernelFiles) -> list[Entry]:
    """The vmlinux inside the initramfs, at /usr/lib/debug/lib/modules/RELEASE/
    vmlinux, for a kernel without a virtio disk (the debug kernels of
    vmcores.build: a 20 MB debug-info-only vmlinux)."""
    if not kf.release:
        raise RecipeError(f"{kf.kernel_id}: release unknown, cannot place its vmlinux for drgn")
    tree = Tree({f"{DEBUG_MOUNT.lstrip('/')}/lib/modules/{kf.release}/vmlinux": (F644, kf.vmlinux.read_bytes())})
    return [e for e in tree.entries() if e[0] not in ("usr", "usr/lib")]


def guest_args(kf: KernelFiles) -> list[str]:
    """QEMU arguments for the debug-info disk (none if the kernel cannot mount it)."""
    if not has_debug_disk(kf):
        return []
    img = ensure_debuginfo_disk(kf)
    return ["-drive", f"file={img},if=none,id=debuginfo,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=debuginfo"]
