"""
Physical memory straight from an ELF vmcore file
------------------------------------------------

drgn returns every read as a new bytes object and holds the GIL while it
copies, so a scan of a whole memmap (16 GiB of struct pages at 1 TiB of RAM)
runs on one CPU. An uncompressed ELF vmcore (``/proc/vmcore`` copied out,
``makedumpfile -E``, QEMU ``dump-guest-memory`` without ``-z``) holds
physical memory as it was: every ``PT_LOAD`` segment maps ``p_memsz`` bytes
at ``p_paddr``, the first ``p_filesz`` of them stored at ``p_offset`` and the
rest zeros (makedumpfile's excluded pages). :class:`CoreFile` reads that into
buffers the caller reuses, with :func:`os.preadv`, which releases the GIL, so
several threads can read at once.

Only such files qualify: :meth:`CoreFile.open` returns None for
kdump-compressed files, /proc/kcore and anything that is not an aarch64
ELF64 little-endian core.

A whole-memmap scan can be larger than the page cache (16 GiB of struct
pages at 1 TiB of RAM). :meth:`CoreFile.start_scan` tells the kernel the
file is read sequentially (a larger read-ahead window); each chunk is asked
for before it is touched (:meth:`CoreFile.prefetch`: POSIX_FADV_WILLNEED, so
a mapped chunk is read in large requests, not one page fault at a time) and,
when the scan is larger than :data:`STREAM_FRACTION` of RAM, dropped from the
page cache once read (:meth:`CoreFile.release`: POSIX_FADV_DONTNEED), so
that neither the scan nor the cache it leaves grows with the dump.
"""

import bisect
import mmap
import os
import struct
from typing import List, Optional, Tuple

import numpy as np

from mminspect.target.base import TargetFault
from mminspect.target.elf import PT_LOAD, core_phdrs

__all__ = ("CoreFile",)

ET_CORE = 4
EM_AARCH64 = 183
#: p_paddr of a segment with no physical address (kcore's vmalloc, modules ...)
NO_PADDR = (1 << 64) - 1

#: (start PA, end PA, end PA of the bytes stored in the file, file offset of start)
Segment = Tuple[int, int, int, int]

#: A scan of more than this share of RAM drops what it read behind it
#: (``MMINSPECT_DROP_BEHIND=1`` or ``0`` decides instead).
STREAM_FRACTION = 0.25


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CoreFile:
    """Reads of physical memory from an ELF vmcore's ``PT_LOAD`` segments."""

    def __init__(self, path: str, segments: List[Segment]) -> None:
        self.path = path
        self._file = open(path, "rb", buffering=0)
        self._starts = [s[0] for s in segments]
        self._segments = segments
        #: Drop chunks from the page cache once scanned (see :meth:`start_scan`).
        self.drop_behind = False

    @classmethod
    def open(cls, path: str) -> Optional["CoreFile"]:
        """The file's physical memory, or None when it is not an uncompressed
        aarch64 ELF core with physical addresses."""
        if os.path.realpath(path).startswith("/proc/"):
            return None  # /proc/kcore and /proc/vmcore are the kernel's, read through drgn
        try:
            with open(path, "rb") as f:
                ehdr = f.read(20)
        except OSError:
            return None
        if len(ehdr) < 20 or ehdr[:6] != b"\x7fELF\x02\x01":
            return None  # also kdump-compressed ("KDUMP   ") and flattened files
        if struct.unpack_from("<HH", ehdr, 16) != (ET_CORE, EM_AARCH64):
            return None
        loads = [(paddr, memsz, off, filesz)
                 for ptype, off, _, paddr, filesz, memsz in core_phdrs(path) or ()
                 if ptype == PT_LOAD and memsz and paddr != NO_PADDR]
        if not loads or not any(paddr for paddr, _, _, _ in loads):
            return None  # every p_paddr 0: the core records no physical addresses
        return cls(path, _flatten(loads))

    def readinto(self, address: int, buffer) -> None:
        """Fill ``buffer`` (any writable buffer) with the physical memory at
        ``address``.

        :raises TargetFault: when a byte of the range is not in the dump
        """
        view = memoryview(buffer).cast("B")
        size = len(view)
        pos = 0
        while pos < size:
            pa = address + pos
            k = bisect.bisect_right(self._starts, pa) - 1
            start, end, file_end, offset = self._segments[k] if k >= 0 else (0, 0, 0, 0)
            if pa >= end:
                raise TargetFault(address, size, True, f"{pa:#x} is in no segment of {self.path}")
            n = min(size - pos, end - pa)
            stored = max(0, min(n, file_end - pa))
            self._pread(view[pos : pos + stored], offset + pa - start, address, size)
            if stored < n:
                np.frombuffer(view[pos + stored : pos + n], dtype=np.uint8)[:] = 0
            pos += n

    def mapped(self, address: int, size: int) -> Optional[mmap.mmap]:
        """The physical memory at ``address`` mapped from the file (read
        only; the first ``address % PAGE`` bytes of the map precede it), or
        None unless one segment stores all of it. A scan that looks at one
        word per struct page reads it there without copying 16 GiB through
        a buffer first; the caller closes the map when done."""
        k = bisect.bisect_right(self._starts, address) - 1
        if k < 0:
            return None
        start, _, file_end, offset = self._segments[k]
        if address + size > file_end:
            return None
        pos = offset + address - start
        lead = pos % mmap.ALLOCATIONGRANULARITY
        try:
            return mmap.mmap(self._file.fileno(), size + lead, prot=mmap.PROT_READ, offset=pos - lead)
        except (OSError, ValueError):
            return None

    def start_scan(self, total: int) -> None:
        """A sequential scan of about ``total`` bytes begins: ask for a large
        read-ahead window, and decide whether it drops behind it."""
        force = os.environ.get("MMINSPECT_DROP_BEHIND")
        ram = _mem_total()
        self.drop_behind = force == "1" if force in ("0", "1") else bool(ram) and total > ram * STREAM_FRACTION
        self._advise(0, 0, "POSIX_FADV_SEQUENTIAL")

    def _stored(self, address: int, size: int) -> List[Tuple[int, int]]:
        """(file offset, length) of the bytes of ``[address, address+size)``
        stored in the file."""
        out = []
        end = address + size
        k = max(0, bisect.bisect_right(self._starts, address) - 1)
        while k < len(self._segments) and self._segments[k][0] < end:
            start, _, file_end, offset = self._segments[k]
            lo, hi = max(start, address), min(file_end, end)
            if lo < hi:
                out.append((offset + lo - start, hi - lo))
            k += 1
        return out

    def prefetch(self, address: int, size: int) -> None:
        """Start reading ``[address, address+size)`` from disk now, in large
        requests (POSIX_FADV_WILLNEED)."""
        for off, n in self._stored(address, size):
            self._advise(off, n, "POSIX_FADV_WILLNEED")

    def release(self, address: int, size: int) -> None:
        """Drop ``[address, address+size)`` from the page cache after a
        scan read it, when :meth:`start_scan` chose to (POSIX_FADV_DONTNEED:
        clean pages only, nothing is lost)."""
        if self.drop_behind:
            for off, n in self._stored(address, size):
                self._advise(off, n, "POSIX_FADV_DONTNEED")

    def _advise(self, offset: int, size: int, advice: str) -> None:
        code = getattr(os, advice, None)
        if code is not None:
            try:
                os.posix_fadvise(self._file.fileno(), offset, size, code)
            except OSError:
                pass  # a hint: file systems may not take it

    def _pread(self, view: memoryview, offset: int, address: int, size: int) -> None:
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            except OSError as e:
                raise TargetFault(address, size, True, f"{self.path}: {e.strerror}") from None
            if not got:
                raise TargetFault(address, size, True, f"{self.path} ends at {offset + done:#x}")
            done += got

    def close(self) -> None:
        self._file.close()


def _flatten(loads: List[Tuple[int, int, int, int]]) -> List[Segment]:
    """``(paddr, memsz, offset, filesz)`` segments as sorted, disjoint
    :data:`Segment`\\s. Where segments overlap (kexec_file dumps map the kernel
    image a second time) the later one wins, as it does in drgn."""
    out: List[Segment] = []
    for paddr, memsz, offset, filesz in loads:
        end = paddr + memsz
        # out[lo:hi] are the segments that can overlap [paddr, end)
        lo = max(bisect.bisect_left(out, (paddr,)) - 1, 0)
        hi = bisect.bisect_left(out, (end,))
        pieces = [(paddr, end, paddr + min(filesz, memsz), offset)]
        for s, e, fe, off in out[lo:hi]:
            if s < paddr:  # what lies below the new segment
                pieces.append((s, min(e, paddr), min(fe, paddr), off))
            if e > end:  # and above it
                cut = max(s, end)
                pieces.append((cut, e, max(cut, fe), off + cut - s))
        out[lo:hi] = sorted(pieces)
    return out
