"""
Stages on a dump that is not in the page cache
----------------------------------------------

On a dump bigger than the page cache (or one just copied in, or a machine
whose cache other files fill) the audit's memmap scan reads from the file
system, not from memory. These stages evict the dump from the page cache
before every timed run (``POSIX_FADV_DONTNEED`` on the whole file: clean
pages only, no root needed), so each run reads every byte anew:

=====================  =====================================================
``read-memmap-cold``   the baseline: a plain sequential read of the memmap
                       bytes the audit scans, 16 MiB ``preadv`` at a time,
                       one thread, no read-ahead hint; it drops what it read
                       (so that the baseline itself does not flush the
                       machine's page cache: dropping clean pages is cheap)
``audit-cold``         the NR_PAGETABLE audit, whose scan reads ahead
                       (``POSIX_FADV_WILLNEED``) and, on scans larger than a
                       quarter of RAM, drops behind (``POSIX_FADV_DONTNEED``)
=====================  =====================================================

Both report ``cached_after_mib``: how much of the dump the page cache holds
after the run (``mincore()`` over the file), which drop-behind keeps small.
"""

import ctypes
import mmap
import os
from typing import List, Tuple

U64 = (1 << 64) - 1
CHUNK = 16 << 20


def evict(path: str) -> None:
    """Drop the file's clean pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_bytes(path: str) -> int:
    """Bytes of ``path`` in the page cache (mincore() over 1 GiB windows)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    page = mmap.PAGESIZE
    total = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        window = 1 << 30
        for off in range(0, size, window):
            n = min(window, size - off)
            m = mmap.mmap(f.fileno(), n, prot=mmap.PROT_READ, offset=off)
            try:
                vec = ctypes.create_string_buffer((n + page - 1) // page)
                if libc.mincore(ctypes.c_void_p(_address(m)), n, vec) == 0:
                    total += sum(b & 1 for b in vec.raw) * page
            finally:
                m.close()
    return total


def _address(m: mmap.mmap) -> int:
    """The address of a read-only map (ctypes cannot take a buffer of one)."""
    import numpy as np

    a = np.frombuffer(m, dtype=np.uint8)
    addr = a.__array_interface__["data"][0]
    del a
    return addr


def memmap_pieces(kernel) -> List[Tuple[int, int]]:
    """(PA, bytes) of the memmap the audit scans, in its order, merged."""
    from mminspect.classify import classifier_for

    c = classifier_for(kernel)
    pages = c.pages
    size = pages.layout.size
    out: List[Tuple[int, int]] = []
    for lo, hi in c.memory.pfn_ranges(c.shift):
        va = (pages.vmemmap + lo * size) & U64
        for _, n, pa in pages._pieces(va, (hi - lo) * size):
            if pa is None:
                continue
            if out and out[-1][0] + out[-1][1] == pa:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((pa, n))
    return out


def stage_read_memmap_cold(kernel, meta, tables):
    core = kernel.target.core_file
    pieces = memmap_pieces(kernel)
    buf = bytearray(CHUNK)
    view = memoryview(buf)

    def run():
        n = 0
        fd = core._file.fileno()
        for pa, length in pieces:
            for off in range(0, length, CHUNK):
                k = min(CHUNK, length - off)
                core.readinto(pa + off, view[:k])
                for foff, fn in core._stored(pa + off, k):
                    os.posix_fadvise(fd, foff, fn, os.POSIX_FADV_DONTNEED)
                n += k
        return n

    def check(n):
        return {"bytes": n, "cached_after_mib": cached_bytes(core.path) >> 20, "ok": n == sum(x for _, x in pieces)}

    return run, check, lambda: evict(core.path)


def stage_audit_cold(kernel, meta, tables):
    from bench.stages import stage_audit

    run, check = stage_audit(kernel, meta, tables)
    path = kernel.target.core_file.path

    def check_cold(res):
        out = check(res)
        out["cached_after_mib"] = cached_bytes(path) >> 20
        out["memmap_mib"] = sum(n for _, n in memmap_pieces(kernel)) >> 20
        return out

    return run, check_cold, lambda: evict(path)
