"""Reading members out of Debian packages (.deb) without installing them."""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from .cache import RecipeError


def extract_members(deb: Path, wanted: dict[str, re.Pattern], dest: Path) -> dict[str, Path]:
    """Extract the members of a .deb whose paths match; stop reading as soon as
    every pattern has matched once (the -dbg packages are GBs uncompressed).
    Symlinks are skipped. -> {key: extracted path}."""
    got: dict[str, Path] = {}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                name = member.name.lstrip("./")
                for key, rx in wanted.items():
                    if key not in got and rx.search(name):
                        out = dest / Path(name).name
                        src = tf.extractfile(member)
                        with open(out, "wb") as f:
                            shutil.copyfileobj(src, f, 1 << 20)
                        got[key] = out
                if len(got) == len(wanted):
                    break
    finally:
        proc.kill()
        proc.wait()
    missing = set(wanted) - set(got)
    if missing:
        raise RecipeError(f"{deb.name}: no member matching {', '.join(wanted[k].pattern for k in missing)}")
    return got
