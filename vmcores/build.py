"""Small arm64 debug kernels for the vmcore recipe.

Each kernel id names a Debian ``linux-source-X.Y`` package and a config
fragment in ``vmcores/configs/<kernel-id>.config``.  A kernel is built with
the cross compiler from gcc-aarch64-linux-gnu as ``make tinyconfig`` plus the
fragment (merged with ``scripts/kconfig/merge_config.sh -m``, then ``make
olddefconfig``; every line of the fragment must survive) and ``make Image``.
Everything is built in (no modules).

Building takes minutes, so each kernel is also committed in compressed form in
``vmcores/kernels/<kernel-id>/``:

  Image.xz      the arm64 Image (EFI stub; edk2 boots it via ``qemu -kernel``)
  vmlinux.xz    vmlinux cut down to what drgn and gdb need for types and
                symbols: section headers, build-ID note, .symtab/.strtab,
                .debug_info (deduplicated by dwz), .debug_abbrev, .debug_str,
                .debug_line_str; code and data are NOBITS because the vmcore
                supplies memory (see minimise_vmlinux)
  config        the full .config
  BUILDINFO.json  source package version, compiler, build time, config facts
  SHA256SUMS    sha256 of the compressed and of the uncompressed files

``ensure_kernel(kernel_id)`` returns the unpacked files from the cache
(``$MMINSPECT_CACHE`` or ``~/.cache/mminspect``, under ``kernels/<id>/``),
unpacking the committed artifacts (sha256-checked) when the cache is missing
or stale, and building from source only when there is no committed artifact.

Kernels (KernelFiles.cpu is the QEMU -cpu to boot each with):

  debug-6.12-4k   4K pages, VA 48, 4 levels                      cortex-a57
  debug-6.12-4k-kasan  the same with generic KASAN (inline)     cortex-a57
  debug-6.12-16k  16K pages, VA 48, 4 levels, 2-entry PGD        cortex-a76
                  (cortex-a57 has no 16K granule: the EFI stub refuses)
  debug-6.12-64k  64K pages, VA 52 (FEAT_LVA), PA 52, 3 levels,   max
                  1024-entry PGD (other CPUs fall back to VA 48)
  debug-6.1-4k    Linux 6.1, 4K pages, VA 48, 4 levels            cortex-a57

All: DEBUG_SPINLOCK (spinlock_t is 24 bytes, so split PTE/PMD ptlocks are
page_ptl_cachep objects with magic 0xdead4ead), DEBUG_VM, PTDUMP_DEBUGFS,
DEBUG_WX, ACPI memory hot-add/remove, EFI runtime, KASLR (with a
virtio-rng-pci seed), fw_cfg built in (VMCOREINFO for -device vmcoreinfo).

Unpack into the cache and check in drgn (cheap, what CI may run):

    python -m vmcores.build --verify all

Build from source (one command; writes <cache>/build/<id>/build.log; the
unpacked source and build tree take about 1.7 GB + 0.45 GB per kernel):

    python -m vmcores.build --rebuild debug-6.12-4k

and to refresh the committed artifacts as well (every refresh adds about
8 MB per kernel to git history, so only when the kernel must change):

    python -m vmcores.build --rebuild --clean --update-artifacts debug-6.12-4k

Host packages needed for a build (Debian 12): gcc-aarch64-linux-gnu,
binutils-aarch64-linux-gnu, make, bc, bison, flex, libssl-dev, libelf-dev,
perl, xz-utils, dwz (optional: without it vmlinux.xz is about twice as big),
and linux-source-6.12 / linux-source-6.1.  Unpacking the committed artifacts
needs only Python's lzma module.

Loading the vmlinux in drgn 0.3.0: with a vmcore, ``set_core_dump()`` then
``load_debug_info([vmlinux])``.  Without a core, ``load_debug_info()``
ignores the file (no module matches it); see :func:`drgn_program`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __package__:
    from .cache import RecipeError
    from .model import KernelFiles
else:  # run as a script: python vmcores/build.py
    sys.path.insert(0, str(HERE.parent))
    from vmcores.cache import RecipeError
    from vmcores.model import KernelFiles
CONFIG_DIR = HERE / "configs"
ARTIFACT_DIR = HERE / "kernels"

ARCH_ENV = {"ARCH": "arm64", "CROSS_COMPILE": "aarch64-linux-gnu-"}
OBJCOPY = "aarch64-linux-gnu-objcopy"

# Committed files must stay small (the repository's artifact budget).
MAX_ARTIFACT_FILE = 25 * 1000 * 1000

# Sections of vmlinux kept in the minimised copy (besides the section header
# table itself and .shstrtab, which objcopy always writes).  Everything
# allocated becomes NOBITS (``--only-keep-debug``): drgn reads memory from
# the vmcore, not from vmlinux.
KEEP_SECTIONS = (
    ".debug_info",
    ".debug_abbrev",
    ".debug_str",
    ".debug_str_offsets",
    ".debug_line_str",  # DW_FORM_line_strp names of compilation units (DWARF 5)
    ".debug_addr",
    ".debug_types",
    ".symtab",
    ".strtab",
)


@dataclass(frozen=True)
class BuildSpec:
    kernel_id: str
    source_package: str  # Debian package that ships /usr/src/<package>.tar.xz
    cpu: str  # a QEMU -cpu that supports the granule (and VA size) of the kernel


# KernelFiles (the shape handed to the recipe) is defined in vmcores.model.
SPECS: dict[str, BuildSpec] = {
    s.kernel_id: s
    for s in (
        # 4 KiB granule, 48-bit VA, 4 levels.
        BuildSpec("debug-6.12-4k", "linux-source-6.12", "cortex-a57"),
        # The same plus generic KASAN (shadow mapped through the shared
        # kasan_early_shadow_* tables).
        BuildSpec("debug-6.12-4k-kasan", "linux-source-6.12", "cortex-a57"),
        # 16 KiB granule, 48-bit VA, 4 levels with a 2-entry PGD.  Cortex-A57
        # has no 16 KiB granule (the EFI stub refuses to boot); A76 has.
        BuildSpec("debug-6.12-16k", "linux-source-6.12", "cortex-a76"),
        # 64 KiB granule, 52-bit VA (FEAT_LVA), 3 levels with a 1024-entry
        # PGD.  Only "max" has FEAT_LVA in QEMU 7.2; on other CPUs the kernel
        # falls back to 48-bit VA.
        BuildSpec("debug-6.12-64k", "linux-source-6.12", "max"),
        # Linux 6.1: old page_type encoding, PG_table.
        BuildSpec("debug-6.1-4k", "linux-source-6.1", "cortex-a57"),
    )
}

# Kernel ids with committed artifacts (ensure_kernel never builds these in CI).
KERNELS: list[str] = [k for k in SPECS if (ARTIFACT_DIR / k / "SHA256SUMS").exists()]


class BuildError(RecipeError):
    pass


# ---------------------------------------------------------------------------
# paths, hashing, locking


def cache_dir() -> Path:
    env = os.environ.get("MMINSPECT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mminspect"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            sums[name.lstrip("*")] = digest
    return sums


def write_sums(path: Path, sums: dict[str, str]) -> None:
    path.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def xz_compress(src: Path, dst: Path) -> None:
    # xz(1) is much faster than lzma in-process for -9e on large inputs and
    # gives the same format; fall back to lzma if it is missing.
    if shutil.which("xz"):
        with open(dst, "wb") as out:
            subprocess.run(["xz", "-9e", "-T1", "-c", str(src)], stdout=out, check=True)
    else:
        with open(src, "rb") as i, lzma.open(dst, "wb", preset=9 | lzma.PRESET_EXTREME) as o:
            shutil.copyfileobj(i, o, 1 << 20)


def xz_decompress(src: Path, dst: Path) -> None:
    with lzma.open(src, "rb") as i, open(dst, "wb") as o:
        shutil.copyfileobj(i, o, 1 << 20)


# ---------------------------------------------------------------------------
# config fragments

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X -> value; 'n' for '# CONFIG_X is not set'."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        m = _SET.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def fragment_path(kernel_id: str) -> Path:
    return CONFIG_DIR / f"{kernel_id}.config"


def check_fragment(fragment: Path, dotconfig: Path) -> list[str]:
    """Lines of the fragment that the final .config does not honour."""
    want = parse_config(fragment.read_text())
    have = parse_config(dotconfig.read_text())
    bad = []
    for opt, val in want.items():
        got = have.get(opt, "n")  # absent means unset (or its deps are off)
        if val == "n":
            if got not in ("n", ""):
                bad.append(f"{opt}: wanted unset, got {got}")
        elif got != val:
            bad.append(f"{opt}: wanted {val}, got {'unset' if got == 'n' else got}")
    return bad


def config_facts(dotconfig: Path) -> dict:
    c = parse_config(dotconfig.read_text())
    page_size = next(
        (sz * 1024 for sz in (4, 16, 64) if c.get(f"CONFIG_ARM64_{sz}K_PAGES") == "y"), None
    )
    if "CONFIG_SPLIT_PTLOCK_CPUS" in c:  # before 6.11: NR_CPUS >= SPLIT_PTLOCK_CPUS
        split_pte = c.get("CONFIG_SMP") == "y" and int(c.get("CONFIG_NR_CPUS", "1")) >= int(
            c["CONFIG_SPLIT_PTLOCK_CPUS"]
        )
        split_pmd = split_pte and c.get("CONFIG_ARCH_ENABLE_SPLIT_PMD_PTLOCK") == "y"
    else:
        split_pte = c.get("CONFIG_SPLIT_PTE_PTLOCKS") == "y"
        split_pmd = c.get("CONFIG_SPLIT_PMD_PTLOCKS") == "y"
    return {
        "page_size": page_size,
        "va_bits": int(c["CONFIG_ARM64_VA_BITS"]) if "CONFIG_ARM64_VA_BITS" in c else None,
        "pa_bits": int(c["CONFIG_ARM64_PA_BITS"]) if "CONFIG_ARM64_PA_BITS" in c else None,
        "pgtable_levels": int(c["CONFIG_PGTABLE_LEVELS"]) if "CONFIG_PGTABLE_LEVELS" in c else None,
        "split_pte_ptlocks": split_pte,
        "split_pmd_ptlocks": split_pmd,
        "debug_spinlock": c.get("CONFIG_DEBUG_SPINLOCK") == "y",
        "lpa2": c.get("CONFIG_ARM64_LPA2") == "y",
        "randomize_base": c.get("CONFIG_RANDOMIZE_BASE") == "y",
        "modules": c.get("CONFIG_MODULES") == "y",
    }


# ---------------------------------------------------------------------------
# building from source


def _run(cmd, log, cwd=None, env=None) -> None:
    log.write(f"\n$ {' '.join(map(str, cmd))}\n")
    log.flush()
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    if r.returncode:
        raise BuildError(f"{' '.join(map(str, cmd))} failed ({r.returncode}); see {log.name}")


def _pkg_version(package: str) -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    if r.returncode or not r.stdout.strip():
        raise BuildError(f"{package} is not installed (apt-get install {package})")
    return r.stdout.strip()


def _check_tools() -> None:
    missing = [
        t
        for t in ("aarch64-linux-gnu-gcc", OBJCOPY, "make", "bc", "bison", "flex", "xz", "perl")
        if not shutil.which(t)
    ]
    if missing:
        raise BuildError(
            "missing build tools: " + ", ".join(missing) + " (apt-get install "
            "gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu make bc bison flex "
            "libssl-dev libelf-dev xz-utils)"
        )


def source_tree(package: str) -> tuple[Path, str]:
    """Unpack /usr/src/<package>.tar.xz once per package version."""
    version = _pkg_version(package)
    tarball = Path("/usr/src") / f"{package}.tar.xz"
    if not tarball.exists():
        raise BuildError(f"{tarball} missing (apt-get install {package})")
    base = cache_dir() / "src" / f"{package}_{version}"
    tree = base / package
    with locked(cache_dir() / "src" / f".{package}.lock"):
        if not (base / ".complete").exists():
            if base.exists():
                shutil.rmtree(base)
            tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=base.parent))
            subprocess.run(["tar", "-xJf", str(tarball), "-C", str(tmp)], check=True)
            tmp.rename(base)
            (base / ".complete").touch()
    return tree, version


def minimise_vmlinux(src: Path, dst: Path) -> dict:
    """Cut vmlinux down to what drgn (and gdb) need for types and symbols.

    1. ``objcopy --only-keep-debug``: code and data become NOBITS (the vmcore
       supplies memory); section headers, notes (build ID), .symtab and
       .strtab stay.
    2. ``dwz``, if installed: moves the type DIEs that every compilation
       unit repeats into shared partial units (drgn and gdb follow
       DW_TAG_imported_unit); .debug_info shrinks by about 55%.
    3. Drop the DWARF that only serves line numbers, locations, ranges and
       unwinding (.debug_line, .debug_loclists, .debug_rnglists,
       .debug_frame, .debug_aranges).

    Returns what was done, for BUILDINFO."""
    r = subprocess.run(
        [OBJCOPY, "--only-keep-debug", "--remove-section=.comment", str(src), str(dst)],
        capture_output=True, text=True,
    )
    if r.returncode:
        raise BuildError(f"objcopy --only-keep-debug failed: {r.stderr}")
    done = {"only_keep_debug": True, "dwz": None}
    dwz = shutil.which("dwz")
    if dwz:
        r = subprocess.run([dwz, "-L", "none", "-l", "none", str(dst)], capture_output=True, text=True)
        if r.returncode:
            raise BuildError(f"dwz failed: {r.stderr.strip()}")
        done["dwz"] = subprocess.run(
            [dwz, "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    drop = [s for s in _section_names(dst) if s.startswith(".debug_") and s not in KEEP_SECTIONS]
    if drop:
        cmd = [OBJCOPY] + [f"--remove-section={s}" for s in drop] + [str(dst)]
        subprocess.run(cmd, check=True, capture_output=True)
    done["removed_sections"] = drop
    done["kept_sections"] = [s for s in _section_names(dst) if s in KEEP_SECTIONS]
    return done


def _section_names(path: Path) -> list[str]:
    r = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-W", "-S", str(path)],
        capture_output=True, text=True, check=True,
    )
    names = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)", line)
        if m:
            names.append(m.group(1))
    return names


def drgn_program(vmlinux: Path, core: Path | None = None):
    """A drgn Program with vmlinux's types and symbols, with or without a
    vmcore.

    drgn 0.3.0 matches the files given to load_debug_info() against the
    program's modules; a Program without a core has none, so the file would
    be ignored ("did not match any loaded modules").  Without a core the
    vmlinux is therefore attached as an extra module (link-time addresses)."""
    import drgn  # noqa: PLC0415

    prog = drgn.Program()
    if core is not None:
        prog.set_core_dump(str(core))
        prog.load_debug_info([str(vmlinux)])
    else:
        mod = prog.extra_module("vmlinux", create=True)
        mod.try_file(str(vmlinux), force=True)
        if mod.debug_file_status != drgn.ModuleFileStatus.HAVE:
            raise BuildError(f"drgn did not take {vmlinux} as debug info")
    return prog


def drgn_facts(vmlinux: Path) -> dict:
    """Check the vmlinux in drgn and read a few facts; {} without drgn."""
    try:
        import drgn
    except ImportError:
        return {}
    prog = drgn_program(vmlinux)
    spinlock = drgn.sizeof(prog.type("spinlock_t"))
    facts = {
        "drgn_version": drgn.__version__,
        "sizeof_spinlock_t": spinlock,
        "sizeof_struct_page": drgn.sizeof(prog.type("struct page")),
        # ALLOC_SPLIT_PTLOCKS: page->ptl is a pointer to a page_ptl_cachep object
        "ptl_allocated": spinlock > 8,
        "page_ptl_cachep": prog["page_ptl_cachep"].address_ is not None,
        "swapper_pg_dir": hex(prog.symbol("swapper_pg_dir").address),
        "PG_reserved": prog.constant("PG_reserved").value_(),
    }
    # Fail here rather than in a test if the minimised file lost something.
    prog.type("struct mm_struct")
    prog["init_mm"]
    return facts


def build_from_source(
    kernel_id: str, jobs: int | None = None, out_dir: Path | None = None, clean: bool = False
) -> Path:
    """Configure and build one kernel out of tree in <cache>/build/<id>/, then
    write its artifacts to out_dir (default <cache>/artifacts/<id>).
    clean=True starts from an empty build directory.  Returns out_dir."""
    spec = SPECS[kernel_id]
    _check_tools()
    fragment = fragment_path(kernel_id)
    if not fragment.exists():
        raise BuildError(f"no config fragment {fragment}")
    tree, version = source_tree(spec.source_package)
    bdir = cache_dir() / "build" / kernel_id
    if clean and bdir.exists():
        shutil.rmtree(bdir)
    incremental = (bdir / "vmlinux").exists()
    bdir.mkdir(parents=True, exist_ok=True)
    out_dir = out_dir or cache_dir() / "artifacts" / kernel_id
    jobs = jobs or os.cpu_count() or 1
    env = dict(os.environ, **ARCH_ENV)
    # Reproducible identity strings (uname -v).
    env.update(
        KBUILD_BUILD_USER="mminspect",
        KBUILD_BUILD_HOST="mminspect",
        KBUILD_BUILD_VERSION="1",
        KBUILD_BUILD_TIMESTAMP=datetime.datetime.fromtimestamp(
            (Path("/usr/src") / f"{spec.source_package}.tar.xz").stat().st_mtime,
            datetime.timezone.utc,
        ).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    logpath = bdir / "build.log"
    with open(logpath, "w") as log:
        log.write(f"kernel {kernel_id}: {spec.source_package} {version}, build dir {bdir}\n")
        t0 = time.monotonic()
        _run(["make", f"O={bdir}", "tinyconfig"], log, cwd=tree, env=env)
        _run(
            ["scripts/kconfig/merge_config.sh", "-m", "-O", bdir, bdir / ".config", fragment],
            log, cwd=tree, env=env,
        )
        _run(["make", f"O={bdir}", "olddefconfig"], log, cwd=tree, env=env)
        bad = check_fragment(fragment, bdir / ".config")
        if bad:
            msg = f"olddefconfig did not keep {len(bad)} option(s) of {fragment.name}:\n  " + "\n  ".join(bad)
            log.write(msg + "\n")
            raise BuildError(msg)
        t1 = time.monotonic()
        before = (bdir / "vmlinux").stat().st_mtime_ns if incremental else None
        _run(["make", f"O={bdir}", f"-j{jobs}", "Image"], log, cwd=tree, env=env)
        t2 = time.monotonic()
        # Remember how long the last real build took: a later no-op make
        # (e.g. only re-packing the artifacts) must not report 2 seconds.
        record = bdir / ".mminspect-make.json"
        if before is None or (bdir / "vmlinux").stat().st_mtime_ns != before or not record.exists():
            record.write_text(json.dumps(
                {"seconds": round(t2 - t1), "incremental": incremental, "jobs": jobs}
            ))
        made = json.loads(record.read_text())
        gcc = subprocess.run(
            ["aarch64-linux-gnu-gcc", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0]
        log.write(f"\nconfig {t1 - t0:.0f} s, make Image {t2 - t1:.0f} s (-j{jobs})\n")

    image = bdir / "arch/arm64/boot/Image"
    vmlinux = bdir / "vmlinux"
    if (bdir / ".config").read_text().count("\nCONFIG_MODULES=y"):
        raise BuildError("CONFIG_MODULES=y is not supported; build everything in")

    with tempfile.TemporaryDirectory(dir=cache_dir()) as td:
        td = Path(td)
        small = td / "vmlinux"
        minimised = minimise_vmlinux(vmlinux, small)
        facts = config_facts(bdir / ".config")
        facts.update(drgn_facts(small))
        info = {
            "kernel_id": kernel_id,
            "source_package": spec.source_package,
            "source_version": version,
            "kernel_release": (bdir / "include/config/kernel.release").read_text().strip(),
            "compiler": gcc,
            "make_jobs": made["jobs"],
            "build_seconds": made["seconds"],  # make -jN Image, the last time it built vmlinux
            "build_incremental": made["incremental"],
            "host_cpus": os.cpu_count(),
            "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu": spec.cpu,
            "image_bytes": image.stat().st_size,
            "vmlinux_bytes": vmlinux.stat().st_size,
            "vmlinux_min_bytes": small.stat().st_size,
            "vmlinux_minimised": minimised,
            "facts": facts,
        }
        write_artifacts(out_dir, image, small, bdir / ".config", info)
    with open(logpath, "a") as log:
        log.write(json.dumps(info, indent=2) + "\n")
    return out_dir


def write_artifacts(out_dir: Path, image: Path, vmlinux: Path, config: Path, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.iterdir():
        f.unlink()
    sums = {
        "Image": sha256_file(image),
        "vmlinux": sha256_file(vmlinux),
    }
    xz_compress(image, out_dir / "Image.xz")
    xz_compress(vmlinux, out_dir / "vmlinux.xz")
    shutil.copyfile(config, out_dir / "config")
    (out_dir / "BUILDINFO.json").write_text(json.dumps(info, indent=2) + "\n")
    for name in ("Image.xz", "vmlinux.xz", "config", "BUILDINFO.json"):
        sums[name] = sha256_file(out_dir / name)
        size = (out_dir / name).stat().st_size
        if size > MAX_ARTIFACT_FILE:
            raise BuildError(f"{out_dir / name} is {size} bytes, over the {MAX_ARTIFACT_FILE} limit")
    write_sums(out_dir / "SHA256SUMS", sums)


# ---------------------------------------------------------------------------
# cache


def _install(art: Path, kdir: Path) -> None:
    """Unpack artifacts from art into kdir, checking every sha256."""
    sums = read_sums(art / "SHA256SUMS")
    for name in ("Image.xz", "vmlinux.xz", "config", "BUILDINFO.json"):
        if sha256_file(art / name) != sums[name]:
            raise BuildError(f"sha256 mismatch: {art / name}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{kdir.name}.", dir=kdir.parent))
    try:
        xz_decompress(art / "Image.xz", tmp / "Image")
        xz_decompress(art / "vmlinux.xz", tmp / "vmlinux")
        for name in ("Image", "vmlinux"):
            if sha256_file(tmp / name) != sums[name]:
                raise BuildError(f"sha256 mismatch after unpacking {art / (name + '.xz')}")
        shutil.copyfile(art / "config", tmp / "config")
        shutil.copyfile(art / "BUILDINFO.json", tmp / "BUILDINFO.json")
        shutil.copyfile(art / "SHA256SUMS", tmp / "SHA256SUMS")
        tmp.chmod(0o755)
        if kdir.exists():
            shutil.rmtree(kdir)
        tmp.rename(kdir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _files(kernel_id: str, kdir: Path) -> KernelFiles:
    info = json.loads((kdir / "BUILDINFO.json").read_text())
    return KernelFiles(
        kernel_id=kernel_id,
        image=kdir / "Image",
        vmlinux=kdir / "vmlinux",
        modules={},
        config=kdir / "config",
        cpu=SPECS[kernel_id].cpu,
        release=info.get("kernel_release"),
        info=info,
    )


def _cache_ok(kdir: Path, art: Path | None) -> bool:
    stamp = kdir / "SHA256SUMS"
    names = ("Image", "vmlinux", "config", "BUILDINFO.json", "SHA256SUMS")
    if not all((kdir / n).exists() for n in names):
        return False
    if art is not None and (art / "SHA256SUMS").read_bytes() != stamp.read_bytes():
        return False  # committed artifact changed since it was unpacked
    return True


def _committed(kernel_id: str) -> Path | None:
    d = ARTIFACT_DIR / kernel_id
    return d if (d / "SHA256SUMS").exists() else None


def cached_kernel(kernel_id: str) -> KernelFiles | None:
    """The unpacked kernel if the cache holds it (and it matches the
    committed artifact); never unpacks or builds."""
    kdir = cache_dir() / "kernels" / kernel_id
    if kernel_id in SPECS and _cache_ok(kdir, _committed(kernel_id)):
        return _files(kernel_id, kdir)
    return None


def ensure_kernel(
    kernel_id: str, *, rebuild: bool = False, jobs: int | None = None, clean: bool = False
) -> KernelFiles:
    """Unpacked kernel files in <cache>/kernels/<kernel_id>/.

    Order: the cache (if it matches the committed artifact), then the
    committed artifact in vmcores/kernels/<id>/ (sha256-checked), then a
    build from source.  rebuild=True always builds from source."""
    if kernel_id not in SPECS:
        raise KeyError(f"unknown kernel id {kernel_id!r}; known: {', '.join(SPECS)}")
    kroot = cache_dir() / "kernels"
    kdir = kroot / kernel_id
    art = _committed(kernel_id)
    with locked(kroot / f".{kernel_id}.lock"):
        if not rebuild and _cache_ok(kdir, art):
            return _files(kernel_id, kdir)
        if rebuild or art is None:
            art = build_from_source(kernel_id, jobs=jobs, clean=clean)
        _install(art, kdir)
        return _files(kernel_id, kdir)


def verify_kernel(kf: KernelFiles) -> list[str]:
    """Re-derive the facts of an unpacked kernel (config and drgn) and list
    the differences from its BUILDINFO.json."""
    want = kf.info.get("facts", {})
    have = config_facts(kf.config)
    try:
        have.update(drgn_facts(kf.vmlinux))
    except Exception as e:  # noqa: BLE001  (report any drgn failure)
        return [f"drgn: {type(e).__name__}: {e}"]
    bad = [
        f"{key}: BUILDINFO {want[key]!r}, now {have.get(key)!r}"
        for key in want
        if key != "drgn_version" and have.get(key) != want[key]
    ]
    if not have.get("ptl_allocated", True):
        bad.append("spinlock_t is not bigger than a pointer: ptlocks are not allocated")
    return bad


# ---------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vmcores.build",
        description="Unpack (or build) mminspect's arm64 debug kernels.",
    )
    ap.add_argument("kernel_ids", nargs="*", metavar="KERNEL_ID",
                    help=f"one of {', '.join(SPECS)}, or 'all' (the committed ones)")
    ap.add_argument("--rebuild", action="store_true", help="build from source even if cached or committed")
    ap.add_argument("--clean", action="store_true", help="with --rebuild: empty the build directory first")
    ap.add_argument("--update-artifacts", action="store_true",
                    help="with --rebuild: write the result to vmcores/kernels/<id>/ (for committing)")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    ap.add_argument("--list", action="store_true", help="list kernel ids and their state")
    ap.add_argument("--verify", action="store_true",
                    help="after unpacking, load the vmlinux in drgn and compare with BUILDINFO facts")
    args = ap.parse_args(argv)

    if args.list or not args.kernel_ids:
        for k, s in SPECS.items():
            state = "committed" if k in KERNELS else "source only"
            cached = "cached" if (cache_dir() / "kernels" / k / "SHA256SUMS").exists() else ""
            print(f"{k:18} {s.source_package:18} cpu={s.cpu:11} {state} {cached}")
        return 0
    ids = list(KERNELS) if args.kernel_ids == ["all"] else args.kernel_ids
    for k in ids:
        if k not in SPECS:
            ap.error(f"unknown kernel id {k}")
    for k in ids:
        try:
            if args.update_artifacts:
                if not args.rebuild:
                    ap.error("--update-artifacts needs --rebuild")
                out = build_from_source(k, jobs=args.jobs, out_dir=ARTIFACT_DIR / k, clean=args.clean)
                with locked(cache_dir() / "kernels" / f".{k}.lock"):
                    _install(out, cache_dir() / "kernels" / k)
                kf = _files(k, cache_dir() / "kernels" / k)
            else:
                kf = ensure_kernel(k, rebuild=args.rebuild, jobs=args.jobs, clean=args.clean)
        except BuildError as e:
            print(f"{k}: {e}", file=sys.stderr)
            return 1
        print(f"{k}: image={kf.image} vmlinux={kf.vmlinux} config={kf.config} cpu={kf.cpu}")
        if args.verify:
            bad = verify_kernel(kf)
            if bad:
                print(f"{k}: verify FAILED: " + "; ".join(bad), file=sys.stderr)
                return 1
            print(f"{k}: verify ok ({json.dumps(kf.info['facts'], sort_keys=True)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
