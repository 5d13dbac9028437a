"""
Evidence bundles
----------------

A bundle is an ELF core (ET_CORE, EM_AARCH64) that drgn opens like any
vmcore: a VMCOREINFO note, PT_LOAD segments holding only the physical pages
mminspect read, and one more note, ``MMINSPECT``, carrying the answers about
symbols, type layout and constants that the analysis needed, as JSON. So a
bundle opens with no vmlinux, and is small enough for a mailing list.
"""

import json
import struct
from typing import BinaryIO, Dict, Iterable, Optional, Tuple

from mminspect.errors import MMInspectError
from mminspect.mm.blocks import Block
from mminspect.target.drgn import DrgnTarget, _one_line
from mminspect.target.elf import PT_LOAD, PT_NOTE, core_notes

__all__ = ("BundleTarget", "read_bundle_note", "write_bundle")

NOTE_NAME = b"MMINSPECT"
NOTE_TYPE = 0x4D4D
SCHEMA = "mminspect.bundle/1"
EM_AARCH64 = 183


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name0 = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name0), len(desc), ntype) + pad(name0) + pad(desc)


def write_bundle(
    f: BinaryIO,
    vmcoreinfo: Dict[str, str],
    answers: Dict[str, object],
    pages: Iterable[Tuple[int, bytes]],
    phys_to_virt,
) -> int:
    """
    Write a bundle to the binary file ``f`` (see
    :func:`mminspect.files.atomic_output`): ``pages`` are (physical
    address, bytes) runs in address order. Returns the file size.
    """
    info = "".join(f"{k}={v}\n" for k, v in vmcoreinfo.items()).encode()
    notes = _note(b"VMCOREINFO", 0, info) + _note(
        NOTE_NAME, NOTE_TYPE, json.dumps({"schema": SCHEMA, **answers}, sort_keys=True).encode()
    )
    runs = list(pages)
    phnum = 1 + len(runs)
    offset = 64 + 56 * phnum
    phdrs = [struct.pack("<IIQQQQQQ", PT_NOTE, 0, offset, 0, 0, len(notes), 0, 4)]
    data_off = offset + len(notes)
    data_off += -data_off % 4096
    cur = data_off
    for pa, buf in runs:
        phdrs.append(
            struct.pack("<IIQQQQQQ", PT_LOAD, 7, cur, phys_to_virt(pa), pa, len(buf), len(buf), 0)
        )
        cur += len(buf)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9,
        4,  # ET_CORE
        EM_AARCH64,
        1,
        0,
        64,
        0,
        0,
        64,
        56,
        phnum,
        0,
        0,
        0,
    )
    head = ehdr + b"".join(phdrs) + notes
    f.write(head + b"\0" * (data_off - len(head)))
    for _, buf in runs:
        f.write(buf)
    return cur


def read_bundle_note(path: str) -> Optional[dict]:
    """The MMINSPECT note of an ELF core, or None when it is not a bundle.

    :raises MMInspectError: when the note is there but damaged (a bundle
        read as a plain dump would silently lose its answers)
    """
    try:
        notes = [desc for name, ntype, desc in core_notes(path) if name == NOTE_NAME and ntype == NOTE_TYPE]
    except (OSError, struct.error, ValueError):
        return None
    if not notes:
        return None
    try:
        note = json.loads(notes[0])
    except (UnicodeDecodeError, ValueError) as e:
        raise MMInspectError(f"{path}: damaged bundle (its MMINSPECT note is not JSON: {e})") from None
    if not isinstance(note, dict):
        raise MMInspectError(f"{path}: damaged bundle (its MMINSPECT note is not a JSON object)")
    for kind in _ANSWERS:
        table = note.get(kind, {})
        bad = [k for k, v in table.items() if not (v is None or isinstance(v, int) and not isinstance(v, bool))] \
            if isinstance(table, dict) else [kind]
        if bad:
            raise MMInspectError(f"{path}: damaged bundle (its {kind} answer for {bad[0]!r} is not a number)")
    return note


#: The answers a bundle's note holds, each a name -> integer (or null) table.
_ANSWERS = ("symbol", "sizeof", "offsetof", "constant", "symbol_size")


class BundleTarget(DrgnTarget):
    """A drgn target over a bundle, answering layout questions from its note."""

    def __init__(self, prog, name: str, note: dict) -> None:
        super().__init__(prog, name)
        if note.get("schema") != SCHEMA:
            raise MMInspectError(f"{name}: bundle schema {note.get('schema')!r}, expected {SCHEMA}")
        self.note = note

    @classmethod
    def open_bundle(cls, path: str, note: dict) -> "BundleTarget":
        import drgn

        prog = drgn.Program()
        try:
            prog.set_core_dump(path)
        except Exception as e:
            raise MMInspectError(f"{path}: damaged bundle ({_one_line(e)})") from None
        target = cls(prog, f"bundle {path}", note)
        target.opened_files = (path,)
        target.vmcoreinfo()
        return target

    @property
    def has_debug_info(self) -> bool:
        return bool(self.note.get("debug_info"))

    def _get(self, kind: str, key: str) -> Optional[int]:
        return self.note.get(kind, {}).get(key)

    def symbol(self, name: str) -> Optional[int]:
        value = self._get("symbol", name)
        if value is None:
            value = self.vmcoreinfo().get(f"SYMBOL({name})")
            return int(value, 16) if value is not None else None
        return value

    def sizeof(self, type_name: str) -> Optional[int]:
        return self._get("sizeof", type_name)

    def symbol_size(self, name: str) -> Optional[int]:
        return self._get("symbol_size", name)

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        return self._get("offsetof", f"{type_name}::{member}")

    def constant(self, name: str) -> Optional[int]:
        return self._get("constant", name)

    def variable(self, name: str):
        return None

    def memory_blocks(self, bsize, sections, section_bits, page_shift):
        """The memory blocks the full target showed at capture time."""
        recorded = self.note.get("memory_blocks")
        try:
            return None if recorded is None else [Block(**b) for b in recorded]
        except TypeError:
            raise MMInspectError(f"{self.name}: damaged bundle (its memory_blocks are not memory blocks)") from None
