"""Kernel registry: which arm64 kernels the recipe can boot, and how to get them.

Two kinds of kernel:

* ``debian``: Debian's packaged arm64 kernels with their ``-dbg`` vmlinux, fetched
  with ``apt-get download`` (the arm64 foreign architecture must be enabled and
  ``apt-get update`` run), unpacked with ``dpkg-deb`` and kept, with checksums,
  under ``$MMINSPECT_CACHE/kernels/<kernel-id>/``.
* ``built``: debug kernels built from source by ``vmcores.build`` (another
  module, imported lazily so this one works without it).

Every kernel is handed out as a :class:`KernelFiles`, the one shape both kinds
share; it and :class:`KernelSpec` live in :mod:`vmcores.model`, which
``vmcores.build`` imports (so build does not import this module, which
imports build lazily).
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .cache import RecipeError, cache_dir, kernels_dir, progress, read_json, sha256_file, write_json
from .debs import extract_members
from .model import CPU_MAX, DEFAULT_CPU, KernelFiles, KernelSpec

__all__ = ["CPU_MAX", "DEFAULT_CPU", "KernelFiles", "KernelSpec", "cached_kernel", "ensure_kernel", "get_spec",
           "kernel_ids", "registry"]

# The Debian kernels. The ABI number (6.1.0-NN) is whatever the registry has
# newest when the kernel is first fetched; the cache then keeps it (see
# kernel.json), and MMINSPECT_DEBIAN_ABI_<ID> (ID upper-cased, "-"/"." -> "_")
# pins another one, e.g. MMINSPECT_DEBIAN_ABI_DEBIAN_6_1_CLOUD_ARM64=53.
_SPECS: list[KernelSpec] = [
    KernelSpec(
        "debian-6.1-cloud-arm64",
        "debian",
        "Debian 12 bookworm linux-image-6.1.0-NN-cloud-arm64 (4K pages, 48-bit VA, 4 levels; "
        "ACPI memory hotplug built in)",
        flavour="cloud-arm64",
    ),
    KernelSpec(
        "debian-6.1-arm64",
        "debian",
        "Debian 12 bookworm linux-image-6.1.0-NN-arm64, the generic flavour (4K pages, 48-bit "
        "VA, 4 levels; no CONFIG_ACPI_HOTPLUG_MEMORY, so boot scenario only)",
        flavour="arm64",
    ),
    KernelSpec(
        "debian-6.1-rt-arm64",
        "debian",
        "Debian 12 bookworm linux-image-6.1.0-NN-rt-arm64, PREEMPT_RT (4K pages, 48-bit VA, "
        "4 levels; spinlock_t is an rt_mutex, so page->ptl points to a kmem_cache object; no "
        "CONFIG_ACPI_HOTPLUG_MEMORY, so boot scenario only)",
        flavour="rt-arm64",
    ),
    KernelSpec(
        "debian-sid-cloud-arm64",
        "debian",
        "Debian sid linux-binary-*-cloud-arm64, the newest kernel (4K pages, 52-bit VA with LPA2: "
        "5 levels on -cpu max; ACPI memory hotplug built in)",
        cpu=CPU_MAX,
        flavour="cloud-arm64",
        layout="sid",
        series="",
    ),
    KernelSpec(
        "debian-sid-cloud-arm64-a57",
        "debian",
        "Debian sid linux-binary-*-cloud-arm64 on a CPU without LPA2 (cortex-a57): the 52-bit "
        "build runs with 48-bit VAs, its top level folded at run time (4 levels of a 5-level "
        "build; TCR_EL1.T1SZ says so); ACPI memory hotplug built in",
        flavour="cloud-arm64",
        layout="sid",
        series="",
    ),
    KernelSpec(
        "debian-sid-cloud-arm64-numa",
        "debian",
        "Debian sid linux-binary-*-cloud-arm64 on cortex-a57 with two NUMA nodes (one CPU and "
        "half the RAM each), booted from a device tree without UEFI, so no efi_mm and no ACPI "
        "memory hot-plug: boot scenario only",
        flavour="cloud-arm64",
        layout="sid",
        series="",
        numa_nodes=2,
    ),
    KernelSpec(
        "debian-sid-arm64",
        "debian",
        "Debian sid linux-binary-*-arm64, the newest generic flavour (4K pages, 52-bit VA with "
        "LPA2 on -cpu max; no CONFIG_ACPI_HOTPLUG_MEMORY, so boot scenario only)",
        cpu=CPU_MAX,
        flavour="arm64",
        layout="sid",
        series="",
    ),
    KernelSpec(
        "debian-sid-arm64-16k-a76",
        "debian",
        "Debian sid linux-binary-*-arm64-16k on a CPU with 16K pages but no LPA2 (cortex-a76): "
        "the 52-bit build runs with 47-bit VAs, 3 levels of 4 (top level folded at run time); "
        "no CONFIG_ACPI_HOTPLUG_MEMORY, so boot scenario only",
        cpu="cortex-a76",
        flavour="arm64-16k",
        layout="sid",
        series="",
    ),
    KernelSpec(
        "debian-sid-arm64-16k",
        "debian",
        "Debian sid linux-binary-*-arm64-16k (16 KiB pages; -cpu max, as cortex-a57 has no 16K "
        "granule; no CONFIG_ACPI_HOTPLUG_MEMORY, so boot scenario only)",
        cpu=CPU_MAX,
        flavour="arm64-16k",
        layout="sid",
        series="",
    ),
]


def _built_ids() -> list[str]:
    try:
        from . import build  # noqa: PLC0415  (written by another helper; optional)
    except ImportError:
        return []
    return list(getattr(build, "KERNELS", []))


def registry() -> dict[str, KernelSpec]:
    specs = {s.kernel_id: s for s in _SPECS}
    for kid in _built_ids():
        specs.setdefault(kid, KernelSpec(kid, "built", f"debug kernel built by vmcores.build ({kid})"))
    return specs


def kernel_ids() -> list[str]:
    return list(registry())


def get_spec(kernel_id: str) -> KernelSpec:
    specs = registry()
    if kernel_id not in specs:
        raise RecipeError(f"unknown kernel id {kernel_id!r}; known: {', '.join(specs)}")
    return specs[kernel_id]


# --------------------------------------------------------------------------- cache


def kernel_dir(kernel_id: str) -> Path:
    return kernels_dir() / kernel_id


def cached_kernel(kernel_id: str) -> KernelFiles | None:
    """The cached kernel, or None (never downloads or builds)."""
    spec = get_spec(kernel_id)
    if spec.kind == "built":
        try:
            from . import build  # noqa: PLC0415
        except ImportError:
            return None
        cached = getattr(build, "cached_kernel", None)
        if cached is not None:
            return cached(kernel_id)
        return None
    d = kernel_dir(kernel_id)
    meta = d / "kernel.json"
    if not meta.exists():
        return None
    info = read_json(meta)
    kf = KernelFiles(
        kernel_id=kernel_id,
        image=d / info["files"]["image"],
        vmlinux=d / info["files"]["vmlinux"],
        modules={k: d / v for k, v in info["files"]["modules"].items()},
        config=d / info["files"]["config"],
        cpu=spec.cpu,
        append=spec.append,
        numa_nodes=spec.numa_nodes,
        release=info.get("release"),
        info=info,
    )
    for p in (kf.image, kf.vmlinux, kf.config, *kf.modules.values()):
        if not p.exists():
            return None
    return kf


def ensure_kernel(kernel_id: str) -> KernelFiles:
    """The kernel's files, fetching (Debian) or building (built) them if needed."""
    spec = get_spec(kernel_id)
    if spec.kind == "built":
        try:
            from . import build  # noqa: PLC0415
        except ImportError as e:
            raise RecipeError(f"{kernel_id}: vmcores.build is not available ({e})") from None
        return build.ensure_kernel(kernel_id)
    kf = cached_kernel(kernel_id)
    if kf is not None:
        return kf
    return _fetch_debian(spec)


# --------------------------------------------------------------------------- Debian


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError:
        raise RecipeError(f"{cmd[0]} not found (this recipe needs a Debian host with apt and dpkg)") from None
    except subprocess.CalledProcessError as e:
        msg = (e.stderr or e.stdout or "").strip().splitlines()
        raise RecipeError(f"{' '.join(cmd[:3])}... failed: {msg[-1] if msg else e.returncode}") from None


# Debian sid is reached through an apt state of the recipe's own (sources, lists
# and package cache under $MMINSPECT_CACHE/apt-sid), restricted to arm64: the
# system's apt configuration is neither read for it nor changed.
SID_REFRESH_S = 24 * 3600


def _debian_mirror() -> str:
    """The Debian archive URI the system's apt sources already use."""
    uris = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not f.is_file() or f.suffix not in ("", ".list", ".sources"):
            continue
        for line in f.read_text(errors="replace").splitlines():
            uris += re.findall(r"(https?://\S+?/debian)/?(?:\s|$)", line.split("#", 1)[0])
    if not uris:
        raise RecipeError("no Debian archive URI (.../debian) found in /etc/apt/sources.list*")
    return uris[0]


def _sid_opts() -> list[str]:
    d = cache_dir() / "apt-sid"
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    src = d / "sources.list"
    src.write_text(f"deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                   f"{_debian_mirror()} sid main\n")
    opts = []
    for k, v in (("Dir::Etc::SourceList", src), ("Dir::Etc::SourceParts", d / "parts"),
                 ("Dir::State::Lists", d / "lists"), ("Dir::Cache", d / "cache")):
        opts += ["-o", f"{k}={v}"]
    stamp = d / "updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > SID_REFRESH_S:
        progress("apt-get update (private arm64-only sid source)")
        _run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", *opts, "update"])
        stamp.touch()
    return opts


def _apt_opts(spec: KernelSpec) -> list[str]:
    return _sid_opts() if spec.layout == "sid" else []


def _pkg_version(pkg: str, opts: list[str] = ()) -> str | None:
    """The candidate version of an arm64 package, or None if apt has none."""
    try:
        out = subprocess.run(
            ["apt-cache", *opts, "show", "--no-all-versions", f"{pkg}:arm64"], text=True, capture_output=True
        )
    except FileNotFoundError:
        raise RecipeError("apt-cache not found (this recipe needs a Debian host)") from None
    if out.returncode != 0:
        return None
    m = re.search(r"^Version: (\S+)", out.stdout, re.M)
    return m.group(1) if m else None


def _abi_env(kernel_id: str) -> str | None:
    return os.environ.get("MMINSPECT_DEBIAN_ABI_" + re.sub(r"[-.]", "_", kernel_id).upper())


def _search(pattern: str, opts: list[str] = ()) -> list[str]:
    out = _run(["apt-cache", *opts, "search", "--names-only", pattern]).stdout
    return [line.split(" ", 1)[0] for line in out.splitlines() if line.strip()]


def _resolve_bookworm(spec: KernelSpec) -> tuple[str, dict[str, str]]:
    """-> (abiname like 6.1.0-56, {role: package name}) for the newest ABI with a -dbg."""
    fl = re.escape(spec.flavour)
    rx = re.compile(rf"^linux-image-({re.escape(spec.series)}\.0-(\d+))-{fl}-unsigned$")
    cands = []
    for name in _search(rf"^linux-image-{re.escape(spec.series)}\.0-[0-9]+-{fl}-unsigned$"):
        m = rx.match(name)
        if m:
            cands.append((int(m.group(2)), m.group(1)))
    pin = _abi_env(spec.kernel_id)
    if pin:
        cands = [c for c in cands if str(c[0]) == pin]
    for _, abi in sorted(cands, reverse=True):
        pk = {
            "image": f"linux-image-{abi}-{spec.flavour}-unsigned",
            "dbg": f"linux-image-{abi}-{spec.flavour}-dbg",
        }
        vi, vd = _pkg_version(pk["image"]), _pkg_version(pk["dbg"])
        if vi and vi == vd:
            return abi, pk
    raise RecipeError(
        f"{spec.kernel_id}: apt knows no linux-image-{spec.series}.0-NN-{spec.flavour}-unsigned with a "
        "matching -dbg for arm64 (run: dpkg --add-architecture arm64 && apt-get update)"
    )


def _resolve_sid(spec: KernelSpec, opts: list[str]) -> tuple[str, dict[str, str]]:
    fl = re.escape(spec.flavour)
    rx = re.compile(rf"^linux-binary-(\d+\.\d+\.\d+\+deb\d+)-{fl}$")
    cands = [m.group(1) for name in _search(rf"^linux-binary-[0-9.]+\+deb[0-9]+-{fl}$", opts)
             if (m := rx.match(name))]
    pin = _abi_env(spec.kernel_id)
    if pin:
        cands = [c for c in cands if c == pin]
    for ver in sorted(cands, key=lambda v: [int(x) for x in re.findall(r"\d+", v)], reverse=True):
        pk = {
            "image": f"linux-binary-{ver}-{spec.flavour}",
            "modules": f"linux-modules-{ver}-{spec.flavour}",
            "base": f"linux-base-{ver}-{spec.flavour}",
            "dbg": f"linux-image-{ver}-{spec.flavour}-dbg",
        }
        vs = {_pkg_version(p, opts) for p in pk.values()}
        if None not in vs and len(vs) == 1:
            return ver, pk
    raise RecipeError(
        f"{spec.kernel_id}: apt knows no linux-binary-*-{spec.flavour} with modules, base and -dbg for arm64 in sid"
    )


def _apt_download(pkgs: list[str], dest: Path, opts: list[str] = ()) -> dict[str, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"apt-get download {' '.join(pkgs)}")
    _run(
        ["apt-get", "-q", "-o", "APT::Sandbox::User=root", *opts, "download", *(p + ":arm64" for p in pkgs)],
        cwd=dest,
    )
    found = {}
    for p in pkgs:
        debs = sorted(dest.glob(f"{p}_*_arm64.deb"))
        if not debs:
            raise RecipeError(f"apt-get download {p}: no .deb appeared in {dest}")
        found[p] = debs[-1]
    return found


def _fetch_debian(spec: KernelSpec) -> KernelFiles:
    if not shutil.which("dpkg-deb"):
        raise RecipeError("dpkg-deb not found (this recipe needs a Debian host)")
    opts = _apt_opts(spec)
    if spec.layout == "bookworm":
        abi, pk = _resolve_bookworm(spec)
    else:
        abi, pk = _resolve_sid(spec, opts)
    release = f"{abi}-{spec.flavour}"
    d = kernel_dir(spec.kernel_id)
    if d.exists():
        shutil.rmtree(d)
    work = d / "debs"
    debs = _apt_download(list(pk.values()), work, opts)
    packages = []
    for role, name in pk.items():
        deb = debs[name]
        packages.append(
            {
                "role": role,
                "package": name,
                "version": _pkg_version(name, opts),
                "deb": deb.name,
                "deb_size": deb.stat().st_size,
                "deb_sha256": sha256_file(deb),
            }
        )
    rel = re.escape(release)
    files: dict[str, Path] = {}
    mods_wanted = {f"mod:{m}": re.compile(rf"/{re.escape(m)}\.ko(\.xz)?$") for m in spec.modules}
    if spec.layout == "bookworm":
        progress(f"extracting {debs[pk['image']].name}")
        files |= extract_members(
            debs[pk["image"]],
            {
                "image": re.compile(rf"^boot/vmlinuz-{rel}$"),
                "config": re.compile(rf"^boot/config-{rel}$"),
                **mods_wanted,
            },
            d,
        )
    else:
        progress(f"extracting {debs[pk['image']].name}")
        files |= extract_members(debs[pk["image"]], {"image": re.compile(rf"modules/{rel}/vmlinuz$")}, d)
        progress(f"extracting {debs[pk['base']].name}")
        files |= extract_members(debs[pk["base"]], {"config": re.compile(rf"modules/{rel}/config$")}, d)
        progress(f"extracting {debs[pk['modules']].name}")
        files |= extract_members(debs[pk["modules"]], mods_wanted, d)
    progress(f"extracting vmlinux from {debs[pk['dbg']].name} (large)")
    files |= extract_members(debs[pk["dbg"]], {"vmlinux": re.compile(rf"^usr/lib/debug/(boot/vmlinux-{rel}|lib/modules/{rel}/vmlinux)$")}, d)
    modules = {}
    for key, path in list(files.items()):
        if key.startswith("mod:"):
            if path.suffix == ".xz":
                plain = path.with_suffix("")
                plain.write_bytes(lzma.decompress(path.read_bytes()))
                path.unlink()
                path = plain
            modules[key[4:]] = path
    if os.environ.get("MMINSPECT_KEEP_DEBS") != "1":
        shutil.rmtree(work)
    info = {
        "kernel_id": spec.kernel_id,
        "kind": "debian",
        "release": release,
        "packages": packages,
        "files": {
            "image": files["image"].name,
            "vmlinux": files["vmlinux"].name,
            "config": files["config"].name,
            "modules": {k: v.name for k, v in modules.items()},
        },
        "sha256": {p.name: sha256_file(p) for p in (files["image"], files["vmlinux"], files["config"], *modules.values())},
    }
    write_json(d / "kernel.json", info)
    progress(f"{spec.kernel_id}: cached {release} in {d}")
    kf = cached_kernel(spec.kernel_id)
    assert kf is not None
    return kf
