"""
Kdump-compressed vmcores read by mminspect itself
-------------------------------------------------

drgn opens kdump-compressed files (makedumpfile's format, signature
``KDUMP   ``) through libkdumpfile, which takes the architecture from the
header's utsname and the page size from VMCOREINFO ``PAGESIZE``, and uses
that page size as the file's block size. QEMU's ``dump-guest-memory`` in a
kdump format (``virsh dump --memory-only --format kdump-zlib`` too) breaks
both on arm64: its header names the machine ``Unknown`` with no sysname,
and its blocks are always 64 KiB (the largest arm64 page), so a 4K or 16K
kernel's dump does not open, or opens and faults on every read. QEMU before
8.2 also writes only makedumpfile's *flattened* form (records of offset,
size, data), which libkdumpfile reads slowly if at all.

:class:`KdumpFile` reads such files, plain or flattened: the header, the
sub-header's VMCOREINFO, the dumpable-page bitmap and one page descriptor
per dumped block, inflating zlib blocks on demand (a few cached). A
:class:`drgn.Program` gets its physical memory from it as memory segments
(:meth:`KdumpFile.program`), so everything above drgn is unchanged.
:func:`own_reader_needed` says when a file goes this way; makedumpfile's
own output from an arm64 kdump kernel (a real header, blocks of the kernel's
page size) stays with libkdumpfile, which also knows lzo, snappy and zstd.
"""

import bisect
import functools
import os
import struct
import zlib
from typing import List, Optional, Tuple

import numpy as np

from mminspect.errors import MMInspectError

__all__ = ("KdumpFile", "own_reader_needed")

KDUMP_SIGNATURE = b"KDUMP   "
FLAT_SIGNATURE = b"makedumpfile\0"
FLAT_HEADER_SIZE = 4096
#: struct page_desc: offset, size, flags, page_flags
PAGE_DESC = np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"), ("page_flags", "<u8")])
#: page_desc.flags bits (makedumpfile's diskdump_mod.h)
COMPRESSED = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}
UTS_LEN = 65
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
#: blocks kept inflated: a table walk touches a few, a memmap scan streams
CACHED_BLOCKS = 64
#: VMCOREINFO is one page at most (VMCOREINFO_BYTES); anything near a MiB is not one.
MAX_VMCOREINFO = 1 << 20


class _Flattened:
    """The byte stream a flattened file describes: after a 4 KiB header,
    records of (offset, size) in big-endian int64 and ``size`` bytes,
    ended by an offset of -1. Reads map a logical offset to the file."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        records: List[Tuple[int, int, int]] = []  # (logical offset, size, file position)
        pos, end = FLAT_HEADER_SIZE, os.fstat(fd).st_size
        while True:
            head = os.pread(fd, 16, pos)
            if len(head) < 16:
                raise MMInspectError(f"{path}: truncated vmcore (flattened kdump file ends at byte "
                                     f"{end} before its end marker); copy it again in full")
            offset, size = struct.unpack(">qq", head)
            if offset < 0:
                break
            if size < 0:
                raise MMInspectError(f"{path}: flattened kdump record at byte {pos} has size {size}; "
                                     "the file is damaged")
            if pos + 16 + size > end:
                raise MMInspectError(f"{path}: truncated vmcore (a record needs bytes up to "
                                     f"{pos + 16 + size}, the file has {end}); copy it again in full")
            records.append((offset, size, pos + 16))
            pos += 16 + size
        records.sort()
        self._records = records
        self._starts = [r[0] for r in records]
        self.size = max((o + s for o, s, _ in records), default=0)

    def pread(self, size: int, offset: int) -> bytes:
        size = _bounded(size, offset, self.size)
        out = bytearray()
        while len(out) < size:
            at = offset + len(out)
            k = bisect.bisect_right(self._starts, at) - 1
            if k < 0 or at >= self._records[k][0] + self._records[k][1]:
                break  # a hole: nothing was written there
            start, length, fpos = self._records[k]
            out += os.pread(self.fd, min(size - len(out), start + length - at), fpos + at - start)
        return bytes(out)


class _Plain:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, _bounded(size, offset, self.size), offset)


def _bounded(size: int, offset: int, file_size: int) -> int:
    """What a read of ``size`` bytes at ``offset`` can return from a file of
    ``file_size`` bytes: memory follows the file's real size, never a size
    read from its header. A negative offset reads nothing."""
    if offset < 0 or size <= 0:
        return 0
    return max(0, min(size, file_size - offset))


class KdumpFile:
    """Physical memory and VMCOREINFO of a kdump-compressed file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "rb", buffering=0)  # closed with the last reference
        self._fd = self._file.fileno()
        try:
            self._parse()
        except BaseException:
            self._file.close()
            raise

    @staticmethod
    def kind(path: str) -> Optional[str]:
        """``"kdump"``, ``"flattened"`` (makedumpfile's stream form) or None."""
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            return None
        if head.startswith(KDUMP_SIGNATURE):
            return "kdump"
        return "flattened" if head.startswith(FLAT_SIGNATURE) else None

    def _parse(self) -> None:
        path = self.path
        self.flattened = self.kind(path) == "flattened"
        self._io = _Flattened(self._fd, path) if self.flattened else _Plain(self._fd)
        dh = self._io.pread(464, 0)
        if len(dh) < 464 or not dh.startswith(KDUMP_SIGNATURE):
            raise MMInspectError(f"{path}: not a kdump-compressed vmcore (no KDUMP header)")
        self.header_version = struct.unpack_from("<i", dh, 8)[0]
        uts = [dh[12 + i * UTS_LEN : 12 + (i + 1) * UTS_LEN].split(b"\0")[0].decode("ascii", "replace")
               for i in range(6)]
        self.sysname, self.machine = uts[0], uts[4]
        (self.block_size, sub_hdr_size, bitmap_blocks, max_mapnr) = struct.unpack_from("<iiII", dh, 428)
        bs = self.block_size
        if bs < 4096 or bs > 65536 or bs & (bs - 1):
            raise MMInspectError(f"{path}: kdump header block_size={bs}, not a power of two from 4096 to 65536 "
                                 "(an arm64 page or QEMU's 64 KiB block); the file is damaged")
        size = self._io.size
        if sub_hdr_size < 1 or (1 + sub_hdr_size) * bs > size:
            raise MMInspectError(f"{path}: kdump header sub_hdr_size={sub_hdr_size} blocks does not fit in the "
                                 f"{size}-byte file; the file is damaged or truncated")
        if bitmap_blocks < 2 or bitmap_blocks % 2 or (1 + sub_hdr_size + bitmap_blocks) * bs > size:
            raise MMInspectError(f"{path}: kdump header bitmap_blocks={bitmap_blocks} does not fit in the "
                                 f"{size}-byte file (or is not two equal halves); the file is damaged or truncated")
        sub = self._io.pread(104, bs)
        if len(sub) < 104:
            raise MMInspectError(f"{path}: truncated vmcore (no kdump sub-header); copy it again in full")
        vmci_off, vmci_size = struct.unpack_from("<qQ", sub, 32)
        if self.header_version >= 6:
            max_mapnr = struct.unpack_from("<Q", sub, 96)[0] or max_mapnr
        if vmci_off < 0 or vmci_size > MAX_VMCOREINFO:
            raise MMInspectError(f"{path}: kdump sub-header gives VMCOREINFO offset={vmci_off} size={vmci_size}; "
                                 "the file is damaged")
        self.vmcoreinfo = self._io.pread(vmci_size, vmci_off) if vmci_size else b""
        if len(self.vmcoreinfo) < vmci_size:
            raise MMInspectError(f"{path}: truncated vmcore (VMCOREINFO cut off); copy it again in full")
        # The second half of the bitmap marks the blocks that are in the file.
        half = bitmap_blocks * bs // 2
        bitmap = self._io.pread(half, (1 + sub_hdr_size) * bs + half)
        if len(bitmap) < half:
            raise MMInspectError(f"{path}: truncated vmcore (page bitmap cut off); copy it again in full")
        if max_mapnr > half * 8:
            raise MMInspectError(f"{path}: kdump header max_mapnr={max_mapnr} blocks, but its bitmap holds "
                                 f"{half * 8}; the file is damaged")
        self._bits = np.frombuffer(bitmap, dtype=np.uint8)[: (max_mapnr + 7) // 8]
        self.max_pfn = max_mapnr
        self._desc_off = (1 + sub_hdr_size + bitmap_blocks) * bs
        self.blocks = int(POPCOUNT[self._bits].sum(dtype=np.int64))
        need = self._data_end()
        if need > self._io.size:
            raise MMInspectError(f"{path}: truncated vmcore ({self._io.size} bytes; its pages need "
                                 f"{need}); copy it again in full")
        self._block = functools.lru_cache(maxsize=CACHED_BLOCKS)(self._read_block)

    def _data_end(self) -> int:
        """Where the last page's data ends. Data is written in PFN order after
        one shared zero block at its start, so the last descriptor that does
        not point at that block has it; descriptors are read backwards in
        chunks until one does (the zero tail of a hot-added DIMM, 16K
        descriptors at 64 KiB, is a few chunks), not all of them."""
        data_start = self._desc_off + self.blocks * PAGE_DESC.itemsize
        end, chunk = self.blocks, 4096
        while end > 0:
            start = max(0, end - chunk)
            raw = self._io.pread((end - start) * PAGE_DESC.itemsize, self._desc_off + start * PAGE_DESC.itemsize)
            desc = np.frombuffer(raw[: len(raw) - len(raw) % PAGE_DESC.itemsize], dtype=PAGE_DESC)
            if len(desc) < end - start:
                return data_start + 1  # the descriptors themselves are cut off
            real = np.flatnonzero(desc["offset"] > data_start)
            if len(real):
                return int(desc["offset"][real[-1]]) + int(desc["size"][real[-1]])
            end = start
        return data_start + (self.block_size if self.blocks else 0)

    @functools.cached_property
    def _index(self) -> Tuple[np.ndarray, np.ndarray]:
        """(page descriptors, rank of each bitmap byte's first block among
        the dumped ones): read only when this reader serves the dump."""
        n = self.blocks
        raw = self._io.pread(n * PAGE_DESC.itemsize, self._desc_off)
        if len(raw) < n * PAGE_DESC.itemsize:
            raise MMInspectError(f"{self.path}: truncated vmcore (page descriptors cut off); copy it again in full")
        desc = np.frombuffer(raw, dtype=PAGE_DESC)
        used = int(np.bitwise_or.reduce(desc["flags"])) if n else 0
        missing = [name for bit, name in COMPRESSED.items() if used & bit and name != "zlib"]
        if missing:
            raise MMInspectError(f"{self.path}: kdump pages compressed with {', '.join(missing)}, which "
                                 "mminspect's own kdump reader cannot inflate (only zlib)")
        return desc, np.concatenate(([0], np.cumsum(POPCOUNT[self._bits], dtype=np.int64)))

    def page_size(self) -> Optional[int]:
        """VMCOREINFO's PAGESIZE (the kernel's page size), or None."""
        for line in self.vmcoreinfo.decode("ascii", "replace").splitlines():
            if line.startswith("PAGESIZE="):
                return int(line.split("=", 1)[1])
        return None

    def runs(self) -> List[Tuple[int, int]]:
        """(start, end) physical ranges of the blocks the file holds."""
        bits = np.unpackbits(self._bits, bitorder="little")[: self.max_pfn].astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], bits, [0]))))
        bs = self.block_size
        return [(int(s) * bs, int(e) * bs) for s, e in zip(edges[::2], edges[1::2])]

    def _read_block(self, pfn: int) -> bytes:
        descs, rank = self._index
        byte = pfn >> 3
        below = int(self._bits[byte]) & ((1 << (pfn & 7)) - 1)
        desc = descs[int(rank[byte]) + bin(below).count("1")]
        offset, size = int(desc["offset"]), int(desc["size"])
        if offset < 0 or size > 2 * self.block_size or offset + size > self._io.size:
            raise MMInspectError(f"{self.path}: page descriptor of block {pfn:#x} (offset={offset}, size={size}) "
                                 f"lies outside the {self._io.size}-byte file; the file is damaged")
        data = self._io.pread(size, offset)
        if desc["flags"] & 0x1:
            try:
                data = zlib.decompress(data)
            except zlib.error as e:
                raise MMInspectError(f"{self.path}: block {pfn:#x} does not inflate ({e}); the file is damaged") from None
        if len(data) != self.block_size:
            raise MMInspectError(f"{self.path}: block {pfn:#x} holds {len(data)} bytes, not {self.block_size}")
        return data

    def read(self, address: int, count: int, offset: int = 0, physical: bool = True) -> bytes:
        """``count`` bytes of physical memory at ``address`` (a drgn
        memory segment's read function: every block is in the file)."""
        bs = self.block_size
        out = bytearray()
        while len(out) < count:
            at = address + len(out)
            pos = at % bs
            out += self._block(at // bs)[pos : pos + count - len(out)]
        return bytes(out)

    def program(self):
        """A drgn Program on this file's memory: arm64, VMCOREINFO from the
        file, page tables walked by drgn."""
        import drgn  # noqa: PLC0415

        if self.machine not in ("aarch64", "Unknown", "") or b"NUMBER(kimage_voffset)=" not in self.vmcoreinfo:
            name = self.machine if self.machine not in ("Unknown", "") else "non-arm64"
            raise MMInspectError(f"{self.path}: this is a {name} kernel; mminspect reads arm64 kernels")
        platform = drgn.Platform(drgn.Architecture.AARCH64,
                                 drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
        self._index  # noqa: B018  (a lzo or cut-off file fails here, in one line)
        prog = drgn.Program(platform)
        for start, end in self.runs():
            prog.add_memory_segment(start, end - start, self.read, True)
        prog.set_linux_kernel_custom(self.vmcoreinfo, False)
        return prog


def own_reader_needed(kd: KdumpFile) -> Optional[str]:
    """Why libkdumpfile would misread this file (so :class:`KdumpFile` reads
    it), or None when drgn can open it as it is."""
    if kd.flattened:
        return "flattened"
    if kd.sysname != "Linux":
        return "header without utsname (QEMU)"
    if kd.page_size() != kd.block_size:
        return f"blocks of {kd.block_size} bytes, kernel pages of {kd.page_size()}"
    return None
