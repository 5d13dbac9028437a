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


class CoreFile:
    """Reads of physical memory from an ELF vmcore's ``PT_LOAD`` segments."""

    def __init__(self, path: str, segments: List[Segment]) -> None:
        self.path = path
        self._file = open(path, "rb", buffering=0)
        self._starts = [s[0] for s in segments]
        self._segments = segments

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
