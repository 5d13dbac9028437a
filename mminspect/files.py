"""
The user's files: what mminspect reads and what it writes
---------------------------------------------------------

One home for the rules that keep a user's files safe:

- **Inputs are regular files** (:func:`check_input`), or one of the
  character devices mminspect documents (``/proc/kcore``). A FIFO, socket,
  directory or block device is refused in one line *before* it is opened:
  opening a FIFO blocks until a writer comes, which may be never.
- **An output never aliases an input** (:func:`check_output`): the output's
  resolved path and its device and inode (when it exists) are compared with
  every input's, so ``./DUMP``, ``a/../DUMP``, ``//DUMP``, a symbolic link
  or a hard link to the dump are all seen, with or without ``--force``.
- **Outputs appear whole or not at all** (:func:`atomic_output`): the data
  goes to a uniquely named temporary file in the output's directory (never a
  fixed ``NAME.tmp``, which could be the user's own file), is fsynced, and is
  renamed onto the name. On any error, and on SIGINT, SIGTERM or SIGHUP, the
  temporary file is removed and nothing appears at the name. ``--force``
  replaces a regular file only: never a directory, device node, FIFO, socket
  or symbolic link.
"""

import atexit
import contextlib
import os
import signal
import stat
import secrets
import threading
from typing import IO, Iterable, Iterator, List, Optional, Set, Tuple

from mminspect.errors import MMInspectError

__all__ = ("DEVICE_INPUTS", "Interrupted", "atomic_output", "check_input", "check_output", "same_file",
           "remove_partials", "signals_raise", "target_files")

#: Character devices mminspect reads on purpose (``-k``: the running kernel).
DEVICE_INPUTS = ("/proc/kcore", "/proc/vmcore")

#: What a file that is not a regular one is, in the user's words.
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived while an output was being written
    (the temporary file is already removed when this propagates)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def check_input(path: str, what: str = "file") -> os.stat_result:
    """
    Refuse, in one line, an input that is missing or not a regular file
    (``what`` names it: "vmcore", "vmlinux", "snapshot", "plugin file").
    Only ``stat()`` is called: nothing is opened.

    :return: the file's ``stat()``
    :raises MMInspectError: naming the path and what it is
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MMInspectError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise MMInspectError(f"{path}: no such file (a part of the path is not a directory)") from None
    except OSError as e:
        raise MMInspectError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if stat.S_ISREG(st.st_mode):
        return st
    if stat.S_ISCHR(st.st_mode) and os.path.realpath(path) in DEVICE_INPUTS:
        return st
    raise MMInspectError(f"{path}: is {_kind(st.st_mode)}, not a {what}; give a regular file")


def target_files(target) -> Tuple[str, ...]:
    """The files a target reads (its dump, its vmlinuxes), as far as it
    knows them: outputs are checked against these too."""
    return tuple(getattr(target, "files", ()) or ())


def same_file(a: str, b: str) -> bool:
    """True when paths ``a`` and ``b`` name the same file: equal once resolved
    (``./x``, ``a/../x``, ``//x``, symbolic links), or the same device and
    inode (hard links, bind mounts)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_output(path: str, inputs: Iterable[Optional[str]] = (), force: bool = False) -> None:
    """
    Refuse, in one line, an output that would destroy something: one that
    is an input (see :func:`same_file`), that exists without ``force``, that
    is not a regular file (with ``force`` too), or whose directory does not
    exist. Called before the work starts and again just before the rename.

    :raises MMInspectError: naming the path and the reason
    """
    if not path:
        raise MMInspectError("no output file given")
    for src in inputs:
        if src and same_file(path, src):
            raise MMInspectError(f"{path}: is the input {src}; refusing to overwrite what is being read"
                                 " (choose another output name)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise MMInspectError(f"{path}: cannot write here ({e.strerror})") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise MMInspectError(f"{path}: exists and is {_kind(st.st_mode)}; mminspect replaces "
                                 "only regular files (choose another output name)")
        if not force:
            raise MMInspectError(f"{path}: exists; choose another name or pass --force")
        if st.st_nlink > 1:
            raise MMInspectError(f"{path}: exists with {st.st_nlink} hard links; replacing it would "
                                 "separate them (choose another output name)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise MMInspectError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MMInspectError(f"{path}: cannot write in directory {parent} (permission denied)")


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Outputs this process has put in place, whole: an interrupt that comes
#: after one is reported with it ("... after FILE was written in full").
WRITTEN: List[str] = []
#: Temporary files being written. :func:`remove_partials` removes what an
#: interrupt left (one can land between a context manager's set-up and its
#: block, where no ``finally`` runs).
_PARTIAL: Set[str] = set()


def remove_partials() -> None:
    """Remove every temporary file an unfinished :func:`atomic_output` left
    (the front end calls this on its way out; also at exit)."""
    while _PARTIAL:
        with contextlib.suppress(OSError):
            os.unlink(_PARTIAL.pop())


atexit.register(remove_partials)


#: While above 0, the handlers of :func:`signals_raise` only note a signal
#: (in ``_pending``) and :func:`_held_back` raises it at the end of the
#: section. A signal mask would not do: the signal may be delivered to
#: another thread (drgn's, a scan's), and Python runs the handler in the
#: main thread at its next instruction, wherever that is.
_critical = 0
_pending: Optional[int] = None


@contextlib.contextmanager
def _held_back() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP held back until the block ends, so that
    creating, renaming and removing the temporary file is never cut short."""
    global _critical, _pending
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        if not _critical and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted`
    (so ``finally`` clauses run) instead of killing the process outright;
    inside :func:`_held_back` sections, once the section ends. Only the
    main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global _pending
        if _critical:
            _pending = signum
            return
        raise Interrupted(signum)

    old: List[Tuple[int, object]] = []
    try:
        for s in _SIGNALS:
            old.append((s, signal.signal(s, handler)))
        yield
    finally:
        for s, h in old:
            signal.signal(s, h)


@contextlib.contextmanager
def atomic_output(path: str, inputs: Iterable[Optional[str]] = (), force: bool = False) -> Iterator[IO[bytes]]:
    """
    A binary file object whose contents appear at ``path`` only if the block
    completes: written to a unique temporary file beside ``path``, fsynced,
    then linked into place (without ``force``: never over a file that
    appeared meanwhile) or renamed over the old regular file (with it).

    >>> with atomic_output("evidence.core", inputs=["vmcore"]) as f:
    ...     f.write(data)

    :raises MMInspectError: see :func:`check_output`, and for write errors
        (disk full ...), after removing the temporary file
    :raises Interrupted: on SIGINT, SIGTERM or SIGHUP, after removing it
    """
    inputs = [i for i in inputs if i]
    check_output(path, inputs, force)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = fd = None
    with signals_raise():
        try:
            with _held_back():
                tmp, fd = _create_temporary(directory, os.path.basename(path))
                _PARTIAL.add(tmp)
            with os.fdopen(fd, "wb") as f:
                fd = None
                yield f
                f.flush()
                os.fsync(f.fileno())
            check_output(path, inputs, force)
            with _held_back():
                if force:
                    os.replace(tmp, path)
                else:
                    _link_no_clobber(tmp, path)
                _PARTIAL.discard(tmp)
                tmp = None
                WRITTEN.append(path)
            _fsync_dir(directory)
        except FileExistsError:
            raise MMInspectError(f"{path}: appeared while writing; choose another name or pass --force") from None
        except OSError as e:
            raise MMInspectError(f"{path}: cannot write ({e.strerror or e}); nothing was written") from None
        finally:
            with _held_back():
                if fd is not None:
                    os.close(fd)
                if tmp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    _PARTIAL.discard(tmp)


def _create_temporary(directory: str, name: str) -> Tuple[str, int]:
    """A new file ``.NAME.PID.RANDOM.partial`` in ``directory`` (created
    with O_EXCL: never someone else's), mode 0666 less the umask as open()
    would give the output itself."""
    while True:
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue


def _link_no_clobber(tmp: str, path: str) -> None:
    """Put ``tmp`` at ``path`` unless something is there: a hard link fails
    with FileExistsError then; on a file system without hard links, a
    rename after one more check."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
