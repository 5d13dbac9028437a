"""
The benchmark's kernels: built once, cached
-------------------------------------------

Each kernel is a :func:`mminspect.synthetic.make_server_kernel` written as an
ELF vmcore that drgn opens, cached under ``$MMINSPECT_CACHE/bench`` (default
``~/.cache/mminspect/bench``) in a directory named by regime, size, mode and
generator version, with:

- ``vmcore``: the dump (a sparse file: the memmap is covered as a hole);
- ``tables.npy``: the sorted PAs of every init_mm table page (the baseline
  reads exactly these);
- ``meta.json``: what was built (:class:`~mminspect.synthetic.ServerFacts`),
  build and write times, file sizes.

A rerun finds the directory and builds nothing.
"""

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

__all__ = ("BenchKernel", "GEN_VERSION", "cache_root", "ensure_kernel", "hotadd_for", "parse_size", "size_label")

#: Bump when make_server_kernel or the writer change what they produce.
GEN_VERSION = 1
GiB = 1 << 30
TiB = 1 << 40


def parse_size(text: str) -> int:
    """``16G``, ``256G``, ``1T``, ``4T`` (binary units) to bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"M": 1 << 20, "G": GiB, "T": TiB}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def size_label(size: int) -> str:
    if size % TiB == 0:
        return f"{size // TiB}T"
    if size % GiB == 0:
        return f"{size // GiB}G"
    return f"{size >> 20}M"


def hotadd_for(size: int) -> int:
    """Hot-added memory at the top of RAM: 64 GiB (the big simulate-remove
    block) when the kernel has room for it, else a quarter of RAM."""
    return 64 * GiB if size >= 256 * GiB else max(GiB, size // 4 // GiB * GiB)


def cache_root() -> Path:
    env = os.environ.get("MMINSPECT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "mminspect") / "bench"


@dataclass
class BenchKernel:
    """A cached benchmark kernel."""

    dir: Path
    meta: Dict

    @property
    def core(self) -> str:
        return str(self.dir / "vmcore")

    @property
    def tables_npy(self) -> str:
        return str(self.dir / "tables.npy")

    @property
    def label(self) -> str:
        return f"{size_label(self.meta['linear_size'])} {self.meta['mode']}"


def _expected_bytes(size: int, mode: str) -> int:
    """Data the dump holds (not its apparent size)."""
    if mode == "page":
        return size // 512 + size // 4096 // 8 + (64 << 20)
    return 256 << 20


def ensure_kernel(size: int, mode: str, regime: str = "4k-va48", rebuild: bool = False,
                  log=print) -> BenchKernel:
    """Return the cached kernel, building and writing it first if needed."""
    from mminspect.synthetic import REGIMES_BY_NAME, make_server_kernel, write_server_vmcore

    if mode not in ("page", "block"):
        raise ValueError("mode is page or block")
    key = f"{regime}-{size_label(size)}-{mode}-g{GEN_VERSION}"
    d = cache_root() / key
    meta_path = d / "meta.json"
    if meta_path.exists() and not rebuild:
        return BenchKernel(d, json.loads(meta_path.read_text()))
    d.parent.mkdir(parents=True, exist_ok=True)
    need = _expected_bytes(size, mode)
    free = shutil.disk_usage(d.parent).free
    if free < need * 1.2 + (1 << 30):
        raise RuntimeError(f"{key}: needs about {need >> 30} GiB of disk, {free >> 30} GiB free")
    tmp = d.parent / (key + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    log(f"building {key} ...")
    t0 = time.perf_counter()
    built = make_server_kernel(REGIMES_BY_NAME[regime], size, granular=(mode == "page"),
                               hotadd=hotadd_for(size))
    t1 = time.perf_counter()
    vf = write_server_vmcore(tmp / "vmcore", built)
    t2 = time.perf_counter()
    s = built.server
    np.save(tmp / "tables.npy", s.table_pas)
    np.save(tmp / "typed.npy", s.typed)
    np.save(tmp / "reserved.npy", s.reserved)
    meta = {
        "key": key,
        "regime": regime,
        "mode": mode,
        "generator_version": GEN_VERSION,
        **s.as_dict(),
        "page_size": built.regime.page_size,
        "root_efi_pa": s.efi_pgd,
        "build_seconds": round(t1 - t0, 3),
        "write_seconds": round(t2 - t1, 3),
        "file_size": vf.file_size,
        "file_bytes_on_disk": os.stat(vf.path).st_blocks * 512,
        "segments": len(vf.segments),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)
    log(f"  built in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s: "
        f"{meta['file_bytes_on_disk'] >> 20} MiB on disk, {meta['n_tables']} table pages")
    return BenchKernel(d, meta)


def warm(path: str, chunk: int = 8 << 20) -> int:
    """Read the data extents of a (sparse) file once so that every stage
    starts with it in the page cache, as a post-mortem on a fresh dump does
    after its first pass. Returns the bytes read."""
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        off = 0
        while off < end:
            try:
                off = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, off, os.SEEK_HOLE)
            while off < hole:
                n = len(os.pread(fd, min(chunk, hole - off), off))
                if not n:
                    break
                total += n
                off += n
            off = hole
    finally:
        os.close(fd)
    return total


def load_tables(k: BenchKernel) -> np.ndarray:
    return np.load(k.tables_npy)


def find_kernel(key: str) -> Optional[BenchKernel]:
    d = cache_root() / key
    if (d / "meta.json").exists():
        return BenchKernel(d, json.loads((d / "meta.json").read_text()))
    return None
