"""
Writing the map without harming the user's files
------------------------------------------------

The map is written as every mminspect output is (:mod:`mminspect.files`):
never over an input (resolved paths and ``(st_dev, st_ino)``, with or
without ``--force``), over an existing regular file only with ``--force``,
through a uniquely named temporary file that is fsynced and then put in
place, and removed on any error or signal.
"""

import io
from typing import IO, Callable, Iterable, Optional

from mminspect.files import atomic_output, check_output

__all__ = ("check_output", "write_output")


def write_output(path: str, write: Callable[[IO[str]], None], force: bool,
                 inputs: Iterable[Optional[str]] = ()) -> int:
    """Write the text ``write(file)`` produces to ``path``, whole or not at
    all; returns the bytes written."""
    with atomic_output(path, inputs, force) as f:
        text = io.TextIOWrapper(f, encoding="utf-8")
        write(text)
        text.flush()
        text.detach()
        return f.tell()
