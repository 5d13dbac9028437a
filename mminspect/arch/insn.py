"""
Reading the kernel's own code
-----------------------------

Some era facts show only in the kernel's instructions: whether a function
calls NR_PAGETABLE accounting (an arm64 ``BL`` to ``__lruvec_stat_mod_folio``
...), or which messages it can print (an ``ADRP``/``ADD`` pair loading a
``printk`` format). :func:`function_calls` and :func:`function_strings` read
them from the dump, through any target that knows symbol sizes
(:class:`~mminspect.target.base.HasSymbolSizes`).
"""

import struct
from typing import Dict, Iterable, List, Optional

from mminspect.bits import U64
from mminspect.target.base import HasSymbolSizes, TargetFault, symbol_size

__all__ = ("function_calls", "function_strings")

#: BL imm26 (ARM DDI 0487, C6.2.35): 0b100101 in bits 31:26.
_BL_MASK, _BL = 0xFC000000, 0x94000000
#: ADRP Xd, label: 1 in bit 31, 0b10000 in bits 28:24.
_ADRP_MASK, _ADRP = 0x9F000000, 0x90000000
#: ADD Xd, Xn, #imm (64-bit, immediate): 0b1001000100 in bits 31:22.
_ADD_MASK, _ADD = 0xFF800000, 0x91000000


def _code(kernel, function: str) -> Optional[bytes]:
    """The instructions of ``function``, or None when unknown or unreadable."""
    t = kernel.target
    start, size = t.symbol(function), symbol_size(t, function)
    if start is None or not size:
        return None
    try:
        return t.read_virt(start, size)
    except TargetFault:
        return None


def function_calls(kernel, functions: Iterable[str], targets: Iterable[str]) -> Optional[Dict[str, str]]:
    """Which of ``functions`` contain an arm64 ``BL`` to one of ``targets``:
    {function: target}. None when the code cannot be read (no symbol sizes)."""
    t = kernel.target
    if not isinstance(t, HasSymbolSizes):
        return None
    addrs = {a: name for name in targets if (a := t.symbol(name)) is not None}
    found: Dict[str, str] = {}
    seen_any = False
    for fn in functions:
        code = _code(kernel, fn)
        if code is None:
            continue
        start = t.symbol(fn)
        seen_any = True
        for i, (insn,) in enumerate(struct.iter_unpack("<I", code[: len(code) // 4 * 4])):
            if insn & _BL_MASK != _BL:
                continue
            off = insn & 0x03FFFFFF
            if off & 0x02000000:
                off -= 1 << 26
            dest = start + 4 * i + 4 * off
            if dest in addrs:
                found[fn] = addrs[dest]
                break
    return found if seen_any else None


def _sign_extend(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def function_strings(kernel, function: str, limit: int = 160) -> Optional[List[str]]:
    """The C strings ``function`` loads the address of (an arm64 ``ADRP``
    followed by an ``ADD`` immediate on the same register, as the compiler
    emits for a ``printk`` format), read from the dump. None when the code
    cannot be read. Inlined helpers show up here with their caller: the
    leaf-split check, for one, has no symbol of its own."""
    t = kernel.target
    code = _code(kernel, function)
    if code is None:
        return None
    start = t.symbol(function)
    pages: Dict[int, int] = {}
    out: List[str] = []
    for i, (insn,) in enumerate(struct.iter_unpack("<I", code[: len(code) // 4 * 4])):
        pc = start + 4 * i
        if insn & _ADRP_MASK == _ADRP:
            imm = _sign_extend(((insn >> 5) & 0x7FFFF) << 2 | (insn >> 29) & 3, 21) << 12
            pages[insn & 31] = ((pc & ~0xFFF) + imm) & U64
        elif insn & _ADD_MASK == _ADD and (insn >> 5) & 31 in pages:
            addr = pages[(insn >> 5) & 31] + (((insn >> 10) & 0xFFF) << (12 if insn & (1 << 22) else 0))
            try:
                raw = t.read_virt(addr, limit)
            except TargetFault:
                continue
            text = raw.split(b"\0", 1)[0]
            # printk formats start with KERN_SOH and a level ("\0014").
            text = text[2:] if text[:1] == b"\x01" else text
            if len(text) >= 4 and all(32 <= c < 127 or c in (9, 10) for c in text):
                out.append(text.decode())
    return out
