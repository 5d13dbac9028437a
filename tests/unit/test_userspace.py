"""vmcores.userspace's pieces that need no network: a .deb read in Python
(members, data archive, postinst alternatives), the tree's cpio entries
(parents first, symlinks kept, left-out paths), and a wheel unpacked with its
console scripts."""

import io
import stat
import tarfile
import zipfile

from vmcores.debs import data_tar, deb_members, postinst_alternatives
from vmcores.userspace import SKIP_PATHS, Tree, wheel_entries


def _tar(files: dict, mode="w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):  # ("link", target)
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755 if name.endswith(".so.3") else 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb(path, data: dict, postinst: str = "") -> None:
    members = [("debian-binary", b"2.0\n"),
               ("control.tar.xz", _tar({"./control": b"Package: x\n", **({"./postinst": postinst.encode()}
                                                                         if postinst else {})})),
               ("data.tar.xz", _tar(data))]
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, blob in members:
            f.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode())
            f.write(blob + (b"\n" if len(blob) % 2 else b""))


def test_deb_read_in_python(tmp_path):
    deb = tmp_path / "libblas3_1_arm64.deb"
    _deb(deb, {"./usr/lib/aarch64-linux-gnu/blas/libblas.so.3": b"\x7fELF", "./usr/share/doc/x/copyright": b"c"},
         "#!/bin/sh\nupdate-alternatives --install /usr/lib/aarch64-linux-gnu/libblas.so.3 \\\n"
         "    libblas.so.3-aarch64-linux-gnu /usr/lib/aarch64-linux-gnu/blas/libblas.so.3 10\n")
    assert [n for n, _ in deb_members(deb)] == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    assert postinst_alternatives(deb) == [("/usr/lib/aarch64-linux-gnu/libblas.so.3", "libblas.so.3-aarch64-linux-gnu",
                                           "/usr/lib/aarch64-linux-gnu/blas/libblas.so.3", 10)]
    tree = Tree({})
    sizes: dict = {}
    with data_tar(deb) as tf:
        tree.add_tar(tf, "libblas3", sizes)
    assert set(tree.files) == {"usr/lib/aarch64-linux-gnu/blas/libblas.so.3"}  # the doc left out
    assert sizes == {"libblas3": 4} and tree.skipped_bytes == 1


def test_tree_entries_parents_first():
    tree = Tree({"usr/lib/python3/dist-packages/m/__init__.py": (stat.S_IFREG | 0o644, b"x = 1\n"),
                 "lib": (stat.S_IFLNK | 0o777, b"usr/lib")})
    names = [e[0] for e in tree.entries()]
    assert names == ["lib", "usr", "usr/lib", "usr/lib/python3", "usr/lib/python3/dist-packages",
                     "usr/lib/python3/dist-packages/m", "usr/lib/python3/dist-packages/m/__init__.py"]
    assert stat.S_ISLNK(tree.entries()[0][1]) and tree.entries()[0][2] == b"usr/lib"
    for path in ("usr/share/man/man1/x.1.gz", "usr/lib/python3/dist-packages/numpy/_core/tests/t.py",
                 "usr/lib/python3.14/test/x.py", "a/__pycache__/b.pyc"):
        assert SKIP_PATHS.search(path), path
    assert not SKIP_PATHS.search("usr/lib/python3/dist-packages/numpy/_core/multiarray.py")


def test_wheel_entries(tmp_path):
    whl = tmp_path / "mminspect-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("mminspect/__init__.py", "")
        zf.writestr("mminspect-0.1.0.dist-info/entry_points.txt",
                    "[console_scripts]\nmminspect = mminspect.cli:main\n\n[drgn.plugins]\nmminspect = mminspect.drgn_plugin\n")
    got = {e[0]: e for e in wheel_entries(whl)}
    assert "usr/lib/python3/dist-packages/mminspect-0.1.0.dist-info/entry_points.txt" in got
    name, mode, data, _, _ = got["usr/bin/mminspect"]
    assert mode & 0o111 and data.startswith(b"#!/usr/bin/python3\n") and b"from mminspect.cli import main" in data
    assert "usr/bin/drgn" not in got  # only console scripts become wrappers
