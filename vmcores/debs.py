"""Reading members out of Debian packages (.deb) without installing them."""

from __future__ import annotations

import io
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


def deb_members(deb: Path):
    """(name, bytes) of each member of a .deb (an ar archive)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise RecipeError(f"{deb.name}: not a .deb (no ar header)")
        while True:
            hdr = f.read(60)
            if len(hdr) < 60:
                return
            name = hdr[:16].decode().strip().rstrip("/")
            size = int(hdr[48:58].decode().strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            yield name, data


def data_tar(deb: Path) -> tarfile.TarFile:
    """The data archive of a .deb as a tarfile (gz, xz, bz2 or none read in
    Python; anything else through dpkg-deb --fsys-tarfile)."""
    for name, data in deb_members(deb):
        if name.startswith("data.tar"):
            if name.endswith((".gz", ".xz", ".bz2")) or name == "data.tar":
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
            raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
            return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    raise RecipeError(f"{deb.name}: no data.tar member")


def postinst_alternatives(deb: Path) -> list[tuple[str, str, str, int]]:
    """The ``update-alternatives --install LINK NAME PATH PRIORITY`` calls of a
    package's postinst (libblas3 and liblapack3 provide libblas.so.3 and
    liblapack.so.3 only that way)."""
    for name, data in deb_members(deb):
        if name.startswith("control.tar"):
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
                try:
                    script = tf.extractfile("./postinst").read().decode(errors="replace")
                except KeyError:
                    return []
            script = script.replace("\\\n", " ")
            return [(m.group(1), m.group(2), m.group(3), int(m.group(4))) for m in re.finditer(
                r"update-alternatives\s+--install\s+(/\S+)\s+(\S+)\s+(/\S+)\s+(\d+)", script)]
    return []
