"""Where the recipe keeps big things, and small helpers around files.

Everything large (kernel packages, vmlinux files, vmcores) lives under the
cache directory, ``$MMINSPECT_CACHE`` or ``~/.cache/mminspect``; nothing of it
goes into git.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path


class RecipeError(Exception):
    """An expected failure (missing tool, package not in the registry, guest
    timeout...). The CLI prints it as one line, without a traceback."""


def cache_dir() -> Path:
    env = os.environ.get("MMINSPECT_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "mminspect"
    return base


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def vmcores_dir() -> Path:
    return cache_dir() / "vmcores"


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: Path):
    return json.loads(path.read_text())


_T0 = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr (quiet with MMINSPECT_QUIET=1)."""
    if os.environ.get("MMINSPECT_QUIET") == "1":
        return
    print(f"[vmcores {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total
