"""
Sparse memory sections and memory blocks
----------------------------------------

The kernel's ``mem_section`` table (SPARSEMEM_EXTREME) read from what
VMCOREINFO exports (``SYMBOL(mem_section)``, ``LENGTH(mem_section)``,
``SIZE(mem_section)``, ``OFFSET(mem_section.section_mem_map)``,
``NUMBER(SECTION_SIZE_BITS)``), so it works without debug info: which
sections are present, online, and early (boot memory, ``SECTION_IS_EARLY``,
which arm64 refuses to offline since v5.7). Memory blocks (sysfs
``memoryN``) are the default ``memory_block_size_bytes()`` on arm64: one
section each, grouped by ``memory_block_size`` when the kernel says
otherwise.
"""

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from mminspect.errors import MMInspectError
from mminspect.target.base import TargetFault

__all__ = ("SECTION_IS_EARLY", "SECTION_IS_ONLINE", "Section", "memory_block_size", "read_sections")

# include/linux/mmzone.h: the low bits of section_mem_map (stable since v5.x).
SECTION_MARKED_PRESENT = 1 << 0
SECTION_HAS_MEM_MAP = 1 << 1
SECTION_IS_ONLINE = 1 << 2
SECTION_IS_EARLY = 1 << 3


@dataclass(frozen=True)
class Section:
    """One present memory section."""

    nr: int
    start: int  #: physical address
    size: int
    flags: int

    @property
    def online(self) -> bool:
        return bool(self.flags & SECTION_IS_ONLINE)

    @property
    def early(self) -> bool:
        return bool(self.flags & SECTION_IS_EARLY)

    def as_dict(self) -> Dict[str, int]:
        return {"nr": self.nr, "start": self.start, "size": self.size, "flags": self.flags}


def read_sections(kernel) -> List[Section]:
    """Every present section, in physical order.

    :raises MMInspectError: when VMCOREINFO does not describe mem_section
    """
    info = kernel.vmcoreinfo
    t = kernel.target
    try:
        root_sym = int(info["SYMBOL(mem_section)"], 16)
        nr_roots = int(info["LENGTH(mem_section)"])
        ms_size = int(info["SIZE(mem_section)"])
        off_map = int(info["OFFSET(mem_section.section_mem_map)"])
        section_bits = int(info["NUMBER(SECTION_SIZE_BITS)"])
    except (KeyError, ValueError):
        raise MMInspectError(f"{t.name}: VMCOREINFO does not describe mem_section") from None
    per_root = kernel.regime.page_size // ms_size  # SECTIONS_PER_ROOT
    try:
        # VMCOREINFO_SYMBOL_ARRAY(mem_section): the value is the roots array.
        roots = np.frombuffer(t.read_virt(root_sym, nr_roots * 8), dtype="<u8")
    except TargetFault as e:
        raise MMInspectError(f"cannot read mem_section: {e}") from None
    out: List[Section] = []
    for ri, root in enumerate(roots.tolist()):
        if not root:
            continue
        try:
            raw = t.read_virt(root, per_root * ms_size)
        except TargetFault:
            continue
        words = np.frombuffer(raw, dtype="<u8").reshape(per_root, ms_size // 8)[:, off_map // 8]
        for i in np.nonzero(words & np.uint64(SECTION_MARKED_PRESENT))[0].tolist():
            nr = ri * per_root + i
            out.append(Section(nr, nr << section_bits, 1 << section_bits, int(words[i]) & 0x1F))
    return out


def memory_block_size(kernel, sections: List[Section]) -> int:
    """``memory_block_size_bytes()``: the kernel's variable when debug info has
    it, else one section (arm64 does not override the default)."""
    addr = kernel.target.symbol("memory_block_size")
    if addr is not None:
        try:
            value = int.from_bytes(kernel.target.read_virt(addr, 8), "little")
            if value:
                return value
        except TargetFault:
            pass
    return sections[0].size if sections else 1 << int(kernel.vmcoreinfo.get("NUMBER(SECTION_SIZE_BITS)", 27))
