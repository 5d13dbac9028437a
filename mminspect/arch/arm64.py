"""
arm64 stage-1 translation regime
--------------------------------

The arm64 translation regime of a kernel, derived from what the kernel itself
records (VMCOREINFO ``PAGESIZE``, ``NUMBER(VA_BITS)``, ``NUMBER(TCR_EL1_T1SZ)``,
``NUMBER(MAX_PHYSMEM_BITS)``), never from a table of kernel versions.

A :class:`Regime` knows the granule, the configured and the running VA size,
the number of levels the MMU really walks (an LPA2 build on a CPU without LPA2
walks one level less: the kernel folds the top level at run time), the shift
and size of every level, which levels may hold blocks, and how to pull the
output address out of a descriptor (LPA on 64K puts OA[51:48] in bits 15:12;
LPA2 puts OA[51:50] in bits 9:8, which are SH bits when LPA2 is off).

Levels are numbered as the architecture numbers them: the last level is 3,
the top is ``4 - levels`` (``-1`` for a 5-level 4K/52 walk). Names follow the
kernel's (and its ptdump's): the top level is always ``PGD``, the last
``PTE``, and in between ``P4D``, ``PUD``, ``PMD`` counted from the bottom.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from mminspect.bits import U64

__all__ = (
    "MT_NAMES",
    "PTE_AF",
    "PTE_CONT",
    "PTE_GP",
    "PTE_NG",
    "PTE_PXN",
    "PTE_RDONLY",
    "PTE_SHARED",
    "PTE_TABLE_BIT",
    "PTE_USER",
    "PTE_UXN",
    "PTE_VALID",
    "PTDUMP_MASK",
    "Regime",
    "TABLE_APTABLE_RO",
    "TABLE_APTABLE_NOEL0",
    "TABLE_PXN",
    "TABLE_UXN",
    "decode_prot",
    "levels_for",
    "regime_from_tcr",
    "ttbr_baddr",
)

# Descriptor bits, as arch/arm64/include/asm/pgtable-hwdef.h names them.
PTE_VALID = 1 << 0
PTE_TABLE_BIT = 1 << 1
PTE_ATTRINDX_MASK = 7 << 2
PTE_USER = 1 << 6  # AP[1]
PTE_RDONLY = 1 << 7  # AP[2]
PTE_SHARED = 3 << 8  # SH[1:0]; OA[51:50] under LPA2
PTE_AF = 1 << 10
PTE_NG = 1 << 11
PTE_GP = 1 << 50  # BTI guarded page
PTE_DBM = 1 << 51  # also PTE_WRITE
PTE_CONT = 1 << 52
PTE_PXN = 1 << 53
PTE_UXN = 1 << 54
# Table descriptor attributes (ignored by the MMU below the leaf).
TABLE_PXN = 1 << 59
TABLE_UXN = 1 << 60
TABLE_APTABLE_NOEL0 = 1 << 61
TABLE_APTABLE_RO = 1 << 62

# Memory types by MAIR index, as arch/arm64/include/asm/memory.h numbers them
# (MT_NORMAL=0, MT_NORMAL_TAGGED=1, MT_NORMAL_NC=2, MT_DEVICE_nGnRnE=3,
# MT_DEVICE_nGnRE=4) and as ptdump prints them.
MT_NAMES = {
    0: "MEM/NORMAL",
    1: "MEM/NORMAL-TAGGED",
    2: "MEM/NORMAL-NC",
    3: "DEVICE/nGnRnE",
    4: "DEVICE/nGnRE",
}

# arch/arm64/mm/ptdump.c pte_bits[]: (mask, value, set, clear), in print order.
_PTDUMP_BITS: Tuple[Tuple[int, int, str, Optional[str]], ...] = (
    (PTE_VALID, PTE_VALID, " ", "F"),
    (PTE_USER, PTE_USER, "USR", "   "),
    (PTE_RDONLY, PTE_RDONLY, "ro", "RW"),
    (PTE_PXN, PTE_PXN, "NX", "x "),
    (PTE_SHARED, PTE_SHARED, "SHD", "   "),
    (PTE_AF, PTE_AF, "AF", "  "),
    (PTE_NG, PTE_NG, "NG", "  "),
    (PTE_CONT, PTE_CONT, "CON", "   "),
    (PTE_TABLE_BIT, PTE_TABLE_BIT, "   ", "BLK"),
    (PTE_UXN, PTE_UXN, "UXN", "   "),
    (PTE_GP, PTE_GP, "GP", "  "),
    (PTE_ATTRINDX_MASK, 3 << 2, "DEVICE/nGnRnE", None),
    (PTE_ATTRINDX_MASK, 4 << 2, "DEVICE/nGnRE", None),
    (PTE_ATTRINDX_MASK, 2 << 2, "MEM/NORMAL-NC", None),
    (PTE_ATTRINDX_MASK, 0 << 2, "MEM/NORMAL", None),
    (PTE_ATTRINDX_MASK, 1 << 2, "MEM/NORMAL-TAGGED", None),
)

#: The bits ptdump looks at (ptdump_initialize() ORs every pte_bits mask).
PTDUMP_MASK = 0
for _mask, _val, _set, _clear in _PTDUMP_BITS:
    PTDUMP_MASK |= _mask


def decode_prot(prot: int) -> str:
    """
    Render descriptor bits the way arch/arm64/mm/ptdump.c ``dump_prot()``
    does: one token per ``pte_bits[]`` entry, each preceded by a space.

    >>> decode_prot(0x00e8000000000f03 & PTDUMP_MASK)
    '   RW NX SHD AF NG     BLK UXN    MEM/NORMAL'
    """
    out = []
    for mask, val, set_, clear in _PTDUMP_BITS:
        s = set_ if (prot & mask) == val else clear
        if s is not None:
            out.append(" " + s)
    return "".join(out)


def levels_for(page_shift: int, va_bits: int) -> int:
    """Number of translation levels for a granule and VA size
    (``ARM64_HW_PGTABLE_LEVELS(va_bits)`` in pgtable-hwdef.h)."""
    return (va_bits - 4) // (page_shift - 3)


def _level_shift(page_shift: int, hw_level: int) -> int:
    # ARM64_HW_PGTABLE_LEVEL_SHIFT(n) = (PAGE_SHIFT - 3) * (4 - n) + 3
    return (page_shift - 3) * (4 - hw_level) + 3


@dataclass(frozen=True)
class Regime:
    """
    One arm64 translation regime.

    :param page_shift: 12, 14 or 16 (``PAGESIZE`` in VMCOREINFO)
    :param va_bits: the build's ``VA_BITS`` (``NUMBER(VA_BITS)``)
    :param vabits_actual: the running VA size, ``64 - TCR_EL1.T1SZ``
    :param pa_bits: ``MAX_PHYSMEM_BITS`` (48 or 52)
    """

    page_shift: int
    va_bits: int
    vabits_actual: int
    pa_bits: int = 48
    # Derived.
    levels: int = field(init=False)
    build_levels: int = field(init=False)
    lpa2: bool = field(init=False)
    lpa: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.page_shift not in (12, 14, 16):
            raise ValueError(f"unsupported granule: 2^{self.page_shift} bytes")
        if not 36 <= self.vabits_actual <= 52 or not 36 <= self.va_bits <= 52:
            raise ValueError(f"unsupported VA size: {self.vabits_actual}/{self.va_bits} bits")
        object.__setattr__(self, "levels", levels_for(self.page_shift, self.vabits_actual))
        object.__setattr__(self, "build_levels", levels_for(self.page_shift, self.va_bits))
        # For 4K and 16K, DS (LPA2) is enabled if and only if the kernel runs
        # with 52-bit VAs (arch/arm64/kernel/pi/map_kernel.c).
        object.__setattr__(self, "lpa2", self.page_shift != 16 and self.vabits_actual == 52)
        # 64K with PA_BITS_52 always encodes OA[51:48] in bits 15:12.
        object.__setattr__(self, "lpa", self.page_shift == 16 and self.pa_bits == 52)

    # -- geometry ---------------------------------------------------------
    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def entries_per_table(self) -> int:
        return 1 << (self.page_shift - 3)

    @property
    def top_level(self) -> int:
        """Architectural number of the level the MMU starts at."""
        return 4 - self.levels

    @property
    def folded(self) -> bool:
        """True when an LPA2 build runs with its top level folded away."""
        return self.levels < self.build_levels

    def shift(self, level: int) -> int:
        """VA shift of a level: each entry maps ``1 << shift(level)`` bytes."""
        return _level_shift(self.page_shift, level)

    def root_entries(self, index_bits: Optional[int] = None) -> int:
        """
        Entries in a root table (``PTRS_PER_PGD``). For a 64K/52 build on a
        CPU without LVA the kernel still indexes swapper_pg_dir with the
        build's 52-bit PTRS_PER_PGD (TTBR1 is offset instead), so init_mm is
        walked with ``index_bits=va_bits``; when the top level is folded the
        root is the next level's full table.
        """
        bits = self.vabits_actual
        if index_bits is not None and not self.folded:
            bits = max(bits, index_bits)
        return 1 << (bits - self.shift(self.top_level))

    def block_levels(self) -> Tuple[int, ...]:
        """Levels whose descriptors may be blocks, as the MMU allows them."""
        if self.page_shift == 12:
            return (0, 1, 2) if self.lpa2 else (1, 2)
        if self.page_shift == 14:
            return (1, 2) if self.lpa2 else (2,)
        return (1, 2) if self.lpa else (2,)

    def level_name(self, level: int) -> str:
        """The kernel's name of a level: PGD at the top, then from the bottom
        PTE, PMD, PUD, P4D (folded levels take the name of the one above)."""
        if level == self.top_level:
            return "PGD"
        return ("PTE", "PMD", "PUD", "P4D")[3 - level]

    def cont_entries(self, level: int) -> int:
        """Entries in one contiguous run (CONT_PTES / CONT_PMDS)."""
        if level == 3:
            return {12: 16, 14: 128, 16: 32}[self.page_shift]
        return {12: 16, 14: 32, 16: 32}[self.page_shift]

    # -- output address ----------------------------------------------------
    @property
    def oa_mask(self) -> int:
        """Descriptor bits that hold the output address."""
        low_top = 50 if (self.pa_bits == 52 and self.page_shift != 16) else 48
        mask = ((1 << low_top) - 1) & ~(self.page_size - 1)
        if self.lpa2:
            mask |= PTE_SHARED
        if self.lpa:
            mask |= 0xF << 12
        return mask

    def desc_to_phys(self, desc: int) -> int:
        """``__pte_to_phys()``: the output address of one descriptor."""
        low_top = 50 if (self.pa_bits == 52 and self.page_shift != 16) else 48
        pa = desc & ((1 << low_top) - 1) & ~(self.page_size - 1)
        if self.lpa2:
            pa |= (desc & PTE_SHARED) << 42
        elif self.lpa:
            pa |= (desc & (0xF << 12)) << 36
        return pa

    def descs_to_phys(self, descs: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`desc_to_phys` over a ``uint64`` array."""
        low_top = 50 if (self.pa_bits == 52 and self.page_shift != 16) else 48
        pa = descs & np.uint64(((1 << low_top) - 1) & ~(self.page_size - 1))
        if self.lpa2:
            pa |= (descs & np.uint64(PTE_SHARED)) << np.uint64(42)
        elif self.lpa:
            pa |= (descs & np.uint64(0xF << 12)) << np.uint64(36)
        return pa

    def ttbr1_va(self, offset: int, index_bits: Optional[int] = None) -> int:
        """Sign-extend an offset in the TTBR1 half into a kernel VA."""
        bits = index_bits if (index_bits and not self.folded) else self.vabits_actual
        return ((~0 << bits) | offset) & U64

    def describe(self) -> str:
        """One line, e.g. ``4K pages, 48-bit VA (build 52), 4 levels, LPA2 off``."""
        s = f"{self.page_size // 1024}K pages, {self.vabits_actual}-bit VA"
        if self.va_bits != self.vabits_actual:
            s += f" (build {self.va_bits})"
        s += f", {self.levels} levels"
        if self.folded:
            s += " (top level folded at run time)"
        if self.lpa2:
            s += ", LPA2"
        if self.lpa:
            s += ", LPA"
        return s

    def as_dict(self) -> Dict[str, object]:
        return {
            "page_size": self.page_size,
            "va_bits": self.va_bits,
            "vabits_actual": self.vabits_actual,
            "pa_bits": self.pa_bits,
            "levels": self.levels,
            "folded": self.folded,
            "lpa2": self.lpa2,
            "lpa": self.lpa,
        }


def regime_from_tcr(tcr: int) -> Optional[Regime]:
    """The regime TCR_EL1 sets up for TTBR1: the granule from TG1, the VA
    size from T1SZ, 52-bit output addresses with DS (LPA2) or IPS = 0b110;
    None for a value no Linux kernel writes."""
    t1sz = (tcr >> 16) & 0x3F
    shift = {1: 14, 2: 12, 3: 16}.get((tcr >> 30) & 3)
    if shift is None or not 12 <= t1sz <= 28:
        return None
    ds = bool((tcr >> 59) & 1)
    ips52 = ((tcr >> 32) & 7) == 6
    try:
        return Regime(shift, 64 - t1sz, 64 - t1sz, 52 if (ds or ips52) else 48)
    except ValueError:
        return None


def ttbr_baddr(ttbr: int, pa_bits: int) -> int:
    """The table address in a TTBRn_EL1 value (BADDR; with 52-bit PAs its
    bits 51:48 are TTBR bits 5:2)."""
    if pa_bits == 52:
        return (ttbr & (((1 << 48) - 1) & ~0x3F)) | ((ttbr & 0x3C) << 46)
    return ttbr & (((1 << 48) - 1) & ~1)
