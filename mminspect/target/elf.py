"""Just enough ELF64 reading to check a core file before drgn opens it."""

import os
import stat
import struct
from typing import Iterator, List, Optional, Tuple

from mminspect.errors import MMInspectError
from mminspect.files import check_input

__all__ = ("PT_LOAD", "PT_NOTE", "check_core_file", "core_notes", "core_phdrs", "truncation")

PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF

#: (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz)
Phdr = Tuple[int, int, int, int, int, int]


def core_phdrs(path: str) -> Optional[List[Phdr]]:
    """Program headers of a little-endian ELF64 file, or None if it is not one."""
    try:
        with open(path, "rb") as f:
            ehdr = f.read(64)
            if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
                return None
            phoff, shoff = struct.unpack_from("<QQ", ehdr, 32)
            (phnum,) = struct.unpack_from("<H", ehdr, 56)
            if phnum == PN_XNUM:  # more headers than e_phnum holds: sh_info of section 0
                f.seek(shoff + 44)
                sh_info = f.read(4)
                if len(sh_info) < 4:
                    return None
                (phnum,) = struct.unpack("<I", sh_info)
            f.seek(phoff)
            raw = f.read(min(56 * phnum, max(0, os.fstat(f.fileno()).st_size - phoff)))
    except OSError:
        return None
    out = []
    for i in range(len(raw) // 56):
        ptype, _, off, vaddr, paddr, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", raw, 56 * i)
        out.append((ptype, off, vaddr, paddr, filesz, memsz))
    return out


def core_notes(path: str) -> Iterator[Tuple[bytes, int, bytes]]:
    """(name, type, desc) of every note in an ELF64 file's PT_NOTE segments."""
    for ptype, off, _, _, filesz, _ in core_phdrs(path) or ():
        if ptype != PT_NOTE or filesz > 64 << 20:
            continue
        with open(path, "rb") as f:
            f.seek(off)
            notes = f.read(filesz)
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
            pos += 12
            name = notes[pos : pos + namesz].rstrip(b"\0")
            pos += namesz + (-namesz % 4)
            yield name, ntype, notes[pos : pos + descsz]
            pos += descsz + (-descsz % 4)


def truncation(path: str, size: int) -> Optional[Tuple[int, int]]:
    """(expected, actual) size when an ELF core is shorter than its program
    headers say, else None."""
    phdrs = core_phdrs(path)
    if not phdrs:
        return None
    expected = max((off + filesz for _, off, _, _, filesz, _ in phdrs), default=0)
    return (expected, size) if size < expected else None


def _check_headers(path: str) -> None:
    """Refuse an ELF64 core whose program headers cannot be right: entries
    not 56 bytes, or a PT_LOAD that wraps past 2^64 or stores more than it maps."""
    try:
        with open(path, "rb") as f:
            ehdr = f.read(64)
    except OSError as e:
        raise MMInspectError(f"{path}: cannot read ({e.strerror})") from None
    if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2:
        return  # not ELF64: kdump, a bundle's reader or drgn says what it is
    (phentsize,) = struct.unpack_from("<H", ehdr, 54)
    if phentsize != 56:
        raise MMInspectError(f"{path}: ELF header e_phentsize={phentsize}, not the 56 of ELF64; the file is damaged")
    for ptype, off, _, paddr, filesz, memsz in core_phdrs(path) or ():
        if ptype != PT_LOAD:
            continue
        if filesz > memsz:
            raise MMInspectError(f"{path}: a PT_LOAD stores {filesz} bytes but maps {memsz}; the file is damaged")
        if paddr != (1 << 64) - 1 and paddr + memsz > 1 << 64:
            raise MMInspectError(f"{path}: a PT_LOAD at physical {paddr:#x} of {memsz:#x} bytes wraps past 2^64; "
                                 "the file is damaged")


def check_core_file(path: str) -> None:
    """Refuse, in one line, a path that cannot be a whole vmcore."""
    st = check_input(path, "vmcore")
    if not stat.S_ISREG(st.st_mode):
        return  # /proc/kcore, /proc/vmcore: the kernel's, with no file size
    _check_headers(path)
    short = truncation(path, st.st_size)
    if short:
        raise MMInspectError(f"{path}: truncated vmcore ({short[1]} of {short[0]} bytes); copy it again in full")
