"""Descriptor *encoding* for synthetic arm64 page tables (stage 1, as Linux writes them).

Only encoding lives here: output address -> descriptor bits, and attribute sets ->
descriptor bits.  The generator never decodes its own descriptors; it keeps the
ground truth separately, so it can serve as an oracle for a decoder.

Bit positions (arch/arm64/include/asm/pgtable-hwdef.h and pgtable-prot.h):

* type bits 1:0 (``11`` table / page, ``01`` block), AttrIndx 4:2, NS 5, AP[1]=USER 6,
  AP[2]=RDONLY 7, SH 9:8 (OA[51:50] under active LPA2), AF 10, nG 11, GP 50, DBM 51,
  CONT 52, PXN 53, UXN 54, software DIRTY 55 / SPECIAL 56 / DEVMAP 57.
* table descriptors: ``TABLE_AF`` 10 (newest kernels), PXNTable 59, UXNTable 60,
  APTable 62:61, NSTable 63.
* OA: bits 47:PAGE_SHIFT; 64K + LPA puts OA[51:48] in bits 15:12; active LPA2 puts
  OA[49:48] in 49:48 and OA[51:50] in 9:8.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .regime import (
    MT_DEVICE_nGnRE,
    MT_DEVICE_nGnRnE,
    MT_NORMAL,
    MT_NORMAL_NC,
    MT_NORMAL_TAGGED,
    Regime,
)

PTE_VALID = 1 << 0
PTE_TABLE_BIT = 1 << 1
PTE_TYPE_PAGE = 3
PMD_TYPE_TABLE = 3
PMD_TYPE_SECT = 1
PTE_NS = 1 << 5
PTE_USER = 1 << 6
PTE_RDONLY = 1 << 7
PTE_SHARED = 3 << 8
PTE_AF = 1 << 10
PTE_NG = 1 << 11
PTE_GP = 1 << 50
PTE_DBM = 1 << 51
PTE_WRITE = PTE_DBM
PTE_CONT = 1 << 52
PTE_PXN = 1 << 53
PTE_UXN = 1 << 54
PTE_DIRTY = 1 << 55
PTE_SPECIAL = 1 << 56
PTE_DEVMAP = 1 << 57

TABLE_AF = 1 << 10
TABLE_PXN = 1 << 59
TABLE_UXN = 1 << 60
TABLE_AP_SHIFT = 61
TABLE_NS = 1 << 63

ATTRINDX_SHIFT = 2


@dataclass(frozen=True)
class Prot:
    """Attributes of a leaf (page or block) descriptor.

    ``sh=None`` means the kernel's default: inner shareable (3) unless LPA2 is
    active, where ``PTE_MAYBE_SHARED`` is 0 and bits 9:8 carry OA[51:50].
    ``extra`` is OR-ed in verbatim (for software bits or deliberate oddities).
    """

    attrindx: int = MT_NORMAL
    ro: bool = False
    user: bool = False
    pxn: bool = True
    uxn: bool = True
    ng: bool = False
    af: bool = True
    sh: int | None = None
    gp: bool = False
    dbm: bool = True
    dirty: bool = False
    special: bool = False
    ns: bool = False
    extra: int = 0

    def bits(self, regime: Regime) -> int:
        """Attribute bits (no type bits, no OA)."""
        if not 0 <= self.attrindx < 8:
            raise ValueError("attrindx must be 0..7")
        b = self.attrindx << ATTRINDX_SHIFT
        if self.ns:
            b |= PTE_NS
        if self.user:
            b |= PTE_USER
        if self.ro:
            b |= PTE_RDONLY
        sh = self.sh
        if regime.lpa2_active:
            if sh:
                raise ValueError("SH bits 9:8 are OA[51:50] under active LPA2")
        else:
            b |= (3 if sh is None else sh) << 8
        if self.af:
            b |= PTE_AF
        if self.ng:
            b |= PTE_NG
        if self.gp:
            b |= PTE_GP
        if self.dbm:
            b |= PTE_DBM
        if self.pxn:
            b |= PTE_PXN
        if self.uxn:
            b |= PTE_UXN
        if self.dirty:
            b |= PTE_DIRTY
        if self.special:
            b |= PTE_SPECIAL
        return b | self.extra

    def with_(self, **kw) -> "Prot":
        return replace(self, **kw)


@dataclass(frozen=True)
class TableProt:
    """Hierarchical attributes written into the table descriptors on a path."""

    pxn: bool = False
    uxn: bool = True
    ap: int = 0
    ns: bool = False
    af: bool = False
    extra: int = 0

    def bits(self) -> int:
        if not 0 <= self.ap < 4:
            raise ValueError("APTable is 2 bits")
        b = self.ap << TABLE_AP_SHIFT
        if self.pxn:
            b |= TABLE_PXN
        if self.uxn:
            b |= TABLE_UXN
        if self.ns:
            b |= TABLE_NS
        if self.af:
            b |= TABLE_AF
        return b | self.extra


# Kernel prot presets (pgtable-prot.h, 6.12; PTE_MAYBE_NG off, i.e. no KPTI).
PAGE_KERNEL = Prot(dirty=True)
PAGE_KERNEL_RO = Prot(ro=True, dbm=False)
PAGE_KERNEL_ROX = Prot(ro=True, dbm=False, pxn=False)
PAGE_KERNEL_EXEC = Prot(pxn=False, dirty=True)
PAGE_KERNEL_TAGGED = Prot(attrindx=MT_NORMAL_TAGGED, dirty=True)
PROT_NORMAL_NC = Prot(attrindx=MT_NORMAL_NC)
PROT_DEVICE_nGnRE = Prot(attrindx=MT_DEVICE_nGnRE)
PROT_DEVICE_nGnRnE = Prot(attrindx=MT_DEVICE_nGnRnE)
PAGE_SHARED = Prot(user=True, ng=True, pxn=True, uxn=True, ro=True)   # user RW, clean
PAGE_SHARED_EXEC = Prot(user=True, ng=True, pxn=True, uxn=False, ro=True)
PAGE_READONLY = Prot(user=True, ng=True, ro=True, dbm=False)

PRESETS = {
    "PAGE_KERNEL": PAGE_KERNEL,
    "PAGE_KERNEL_RO": PAGE_KERNEL_RO,
    "PAGE_KERNEL_ROX": PAGE_KERNEL_ROX,
    "PAGE_KERNEL_EXEC": PAGE_KERNEL_EXEC,
    "PAGE_KERNEL_TAGGED": PAGE_KERNEL_TAGGED,
    "PROT_NORMAL_NC": PROT_NORMAL_NC,
    "PROT_DEVICE_nGnRE": PROT_DEVICE_nGnRE,
    "PROT_DEVICE_nGnRnE": PROT_DEVICE_nGnRnE,
    "PAGE_SHARED": PAGE_SHARED,
    "PAGE_SHARED_EXEC": PAGE_SHARED_EXEC,
    "PAGE_READONLY": PAGE_READONLY,
}

#: Table attributes Linux writes in ``alloc_init_*`` (UXNTable always; PXNTable for
#: ``NO_EXEC_MAPPINGS``, i.e. the linear map).
TABLE_KERNEL = TableProt()
TABLE_KERNEL_NOEXEC = TableProt(pxn=True)


class Encoder:
    """Encodes output addresses for one regime; scalar and vectorised (numpy)."""

    def __init__(self, regime: Regime):
        self.regime = regime
        ps = regime.page_shift
        top = 50 if regime.lpa2_active else 48
        self.low_mask = ((1 << top) - 1) & ~((1 << ps) - 1)
        self.max_pa = regime.max_pa

    def check_oa(self, oa: int, align: int) -> None:
        if oa % align:
            raise ValueError(f"output address {oa:#x} not aligned to {align:#x}")
        if not 0 <= oa < self.max_pa:
            raise ValueError(f"output address {oa:#x} does not fit in {self.regime.pa_bits} bits")

    def oa(self, oa: int) -> int:
        """Descriptor bits holding ``oa`` (which must be page aligned)."""
        r = self.regime
        d = oa & self.low_mask
        if r.lpa_active:
            d |= ((oa >> 48) & 0xF) << 12
        elif r.lpa2_active:
            d |= ((oa >> 50) & 0x3) << 8
        return d

    def oa_vec(self, oa: np.ndarray) -> np.ndarray:
        oa = oa.astype(np.uint64, copy=False)
        r = self.regime
        d = oa & np.uint64(self.low_mask)
        if r.lpa_active:
            d |= ((oa >> np.uint64(48)) & np.uint64(0xF)) << np.uint64(12)
        elif r.lpa2_active:
            d |= ((oa >> np.uint64(50)) & np.uint64(0x3)) << np.uint64(8)
        return d

    def leaf_type(self, level: int) -> int:
        return PTE_TYPE_PAGE if level == 3 else PMD_TYPE_SECT

    def leaf(self, oa: int, level: int, prot: Prot, cont: bool = False) -> int:
        return self.oa(oa) | self.leaf_type(level) | prot.bits(self.regime) | (PTE_CONT if cont else 0)

    def table(self, oa: int, tprot: TableProt) -> int:
        return self.oa(oa) | PMD_TYPE_TABLE | tprot.bits()

    def leaves_linear(self, oa0: int, step: int, count: int, attr_bits: int) -> np.ndarray:
        """``count`` descriptors for OAs ``oa0 + i*step`` with the given non-OA bits."""
        oas = np.uint64(oa0) + np.arange(count, dtype=np.uint64) * np.uint64(step)
        return self.oa_vec(oas) | np.uint64(attr_bits)
