"""
Work in a forked child
----------------------

:func:`in_child` runs a function in a child process forked from this one,
while the caller goes on, and hands back its result later. The child starts
with everything the parent holds (the opened dump, the decoded layouts), so
nothing is pickled on the way in; only the result comes back, through a pipe.

The audit uses it to scan the memmap (16 GiB of struct pages at 1 TiB of
RAM, bound by memory bandwidth and outside the GIL) while the parent walks
and classifies the roots (bound by the CPU and the GIL): threads cannot
overlap the two, processes can.
"""

import os
import pickle
import threading
from typing import Callable, Optional, TypeVar

__all__ = ("in_child", "peak_rss_kib")

T = TypeVar("T")


def in_child(fn: Callable[[], T]) -> Optional[Callable[[], T]]:
    """Start ``fn()`` in a forked child and return a function that waits for
    it and returns its result (re-raising what it raised, as a RuntimeError
    naming the exception). None when this process cannot fork safely: no
    ``os.fork``, or other threads running (a child of a threaded process may
    inherit locks that nobody will release)."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send, and leave without the parent's atexit
        os.close(rfd)
        try:
            try:
                data = pickle.dumps((True, fn()), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as e:  # noqa: B036 - everything goes back to the parent
                data = pickle.dumps((False, f"{type(e).__name__}: {e}"))
            with os.fdopen(wfd, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(wfd)

    def join() -> T:
        with os.fdopen(rfd, "rb") as f:
            data = f.read()  # before waitpid: a full pipe would block the child
        _, status = os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"child process {pid} died ({os.waitstatus_to_exitcode(status)})")
        ok, value = pickle.loads(data)
        if not ok:
            raise RuntimeError(value)
        return value

    return join


def peak_rss_kib() -> int:
    """This process's peak resident set (``VmHWM``, KiB; 0 when unknown):
    a child reports its own, which the parent's does not include."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
