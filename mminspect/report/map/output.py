"""
Writing the map without harming the user's files
------------------------------------------------

The output never aliases an input (the dump, a vmlinux): resolved paths and
``(st_dev, st_ino)`` are compared, with or without ``--force``. An existing
file is replaced only with ``--force``. The page is written to a uniquely
named temporary file in the output's directory, flushed to disk, then put
in place in one step (a hard link when the name must not exist, so a file
that appears meanwhile is not overwritten either; a rename with
``--force``); on any error the temporary file is removed and nothing
appears at the name.
"""

import os
import tempfile
from typing import Callable, IO, Iterable, Optional

from mminspect.errors import MMInspectError

__all__ = ("check_output", "write_output")


def _ident(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output(path: str, inputs: Iterable[Optional[str]], force: bool) -> None:
    """Refuse an output that is an input, or that exists without ``force``.

    :raises MMInspectError: with the one line the user sees
    """
    real = os.path.realpath(path)
    ident = _ident(path)
    for inp in inputs:
        if not inp:
            continue
        if os.path.realpath(inp) == real or (ident is not None and _ident(inp) == ident):
            raise MMInspectError(f"{path}: is the input {inp}; write the map somewhere else")
    if os.path.isdir(path):
        raise MMInspectError(f"{path}: is a directory; give a file name")
    if os.path.lexists(path) and not force:
        raise MMInspectError(f"{path}: exists; choose another name or pass --force")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise MMInspectError(f"{path}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise MMInspectError(f"{path}: cannot write in {parent}")


def write_output(path: str, write: Callable[[IO[str]], None], force: bool) -> int:
    """Write through ``write(file)`` to a temporary file beside ``path``,
    then put it at ``path``; returns the bytes written."""
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise MMInspectError(f"{path}: exists; choose another name or pass --force") from None
            except OSError:  # no hard links here (FAT, some network file systems)
                if os.path.lexists(path):
                    raise MMInspectError(f"{path}: exists; choose another name or pass --force") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        return size
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
