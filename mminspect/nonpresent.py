"""
Non-present user entries, decoded as the kernel encodes them
------------------------------------------------------------

A user page-table entry whose valid bit is clear is not necessarily empty:
the kernel keeps swap entries, migration entries, device-private entries,
hardware-poison entries, PTE markers (uffd-wp on a none pte, guard regions,
poisoned swap-in) and present-but-invalid entries (PROT_NONE, NUMA hinting,
a PMD being split) in it. What each bit means depends on the era:

- v5.19 570ef363509b ("arm64/pgtable: support __HAVE_ARCH_PTE_SWP_EXCLUSIVE")
  to v6.9 (the Debian 6.1 kernels): bit 2 remembers PG_anon_exclusive, the
  swap type is bits 3..7, the offset bits 8..57; ``PTE_PROT_NONE`` (bit 58)
  marks a present entry that faults; a PMD being split carries
  ``PMD_PRESENT_INVALID`` (bit 59).
- v6.10 (Ryan Roberts' series: b28c74e25967 "arm64/mm: generalize
  PMD_PRESENT_INVALID for all levels", f0f5863a0fb0 "arm64/mm: Remove
  PTE_PROT_NONE bit", 55564814a838 "arm64/mm: Move PTE_PRESENT_INVALID to
  overlay PTE_NG", 5b32510af77b "arm64/mm: Add uffd write-protect support")
  and later: ``PTE_PRESENT_INVALID`` is ``PTE_NG`` (bit 11) at every level,
  the swap type moves to bits 6..10 and the offset to bits 12..61, and bit 3
  keeps the uffd-wp state of a swapped page (``PTE_SWP_UFFD_WP``; bit 58,
  ``PTE_UFFD_WP``, on a present one).

The granule does not change the encoding (the offset field starts at bit 12
or 8 whatever the page size). The layout is a set of macros, in no DWARF and
no VMCOREINFO, so the era is taken from OSRELEASE and :attr:`SwapEncoding.
evidence` says so.

Which swap types are special is read from the kernel: ``MAX_SWAPFILES`` is
the length of ``swap_info[]`` (DWARF), and the types above it are, in
include/linux/swap.h order, hardware poison, three migration types, the
device-private types (4 in 6.1 with ``SWP_DEVICE_EXCLUSIVE_READ``, 3 later),
the PTE marker and, in v6.0..v6.4, ``SWP_SWAPIN_ERROR`` (6.1's swap.h).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from mminspect.target.base import symbol_size

__all__ = ("SwapEncoding", "decode_nonpresent")

#: include/linux/swap.h MAX_SWAPFILES_SHIFT (5 since v2.6).
MAX_SWAPFILES_SHIFT = 5


@dataclass(frozen=True)
class SwapEncoding:
    """How this kernel encodes non-present user entries (see the module
    docstring): the bit positions, and the name of every swap type that is
    not a swap file."""

    era: str  #: "v5.19" or "v6.10"
    type_shift: int
    offset_shift: int
    offset_bits: int
    exclusive_bit: int
    #: bit of a present-but-invalid entry (PROT_NONE/NUMA hinting), None: none
    present_invalid_bit: int
    #: PMD_PRESENT_INVALID of the v5.19 era (a PMD being split), else None
    pmd_present_invalid_bit: Optional[int]
    swp_uffd_wp_bit: Optional[int]
    uffd_wp_bit: Optional[int]
    max_swapfiles: int
    special: Dict[int, str] = field(default_factory=dict)
    #: PTE marker bits by name (include/linux/swapops.h of the era)
    markers: Tuple[Tuple[int, str], ...] = ()
    page_shift: int = 12
    #: MAX_PHYSMEM_BITS: SWP_PFN_BITS is MAX_PHYSMEM_BITS - PAGE_SHIFT
    pa_bits: int = 48
    evidence: Tuple[str, ...] = ()

    @classmethod
    def detect(cls, kernel) -> "SwapEncoding":
        t = kernel.target
        ver = kernel.version
        ev: List[str] = []
        if ver >= (6, 10):
            enc = dict(era="v6.10", type_shift=6, offset_shift=12, offset_bits=50, exclusive_bit=2,
                       present_invalid_bit=11, pmd_present_invalid_bit=None, swp_uffd_wp_bit=3,
                       uffd_wp_bit=58)
            ev.append(f"OSRELEASE {ver[0]}.{ver[1]} >= 6.10: swap type in bits 6-10, offset 12-61, "
                      "PTE_PRESENT_INVALID = PTE_NG (55564814a838), uffd-wp bits 3/58 (5b32510af77b); "
                      "macros only, not in DWARF")
        else:
            enc = dict(era="v5.19", type_shift=3, offset_shift=8, offset_bits=50, exclusive_bit=2,
                       present_invalid_bit=58, pmd_present_invalid_bit=59, swp_uffd_wp_bit=None,
                       uffd_wp_bit=None)
            ev.append(f"OSRELEASE {ver[0]}.{ver[1]} < 6.10: swap type in bits 3-7, offset 8-57, "
                      "PTE_PROT_NONE bit 58, PMD_PRESENT_INVALID bit 59 (570ef363509b); macros only")
        size = symbol_size(t, "swap_info")
        if size:
            max_swapfiles = size // 8
            ev.append(f"MAX_SWAPFILES = {max_swapfiles} (DWARF: sizeof(swap_info) / 8)")
        else:
            max_swapfiles = 22 if ver < (6, 5) else 24
            ev.append(f"MAX_SWAPFILES = {max_swapfiles} assumed (no DWARF for swap_info[])")
        special: Dict[int, str] = {}
        nxt = max_swapfiles
        rest = (1 << MAX_SWAPFILES_SHIFT) - max_swapfiles
        hwpoison = t.symbol("memory_failure") is not None or not t.has_debug_info
        swapin_error = (6, 0) <= ver < (6, 5)  # SWP_SWAPIN_ERROR: 6.1's swap.h
        names: List[str] = []
        if hwpoison:
            names.append("hwpoison")
        names += ["migration read", "migration read-exclusive", "migration write"]
        device = rest - len(names) - 1 - (1 if swapin_error else 0)
        dev_names = (["device-private write", "device-private read", "device-exclusive write",
                      "device-exclusive read"] if ver < (6, 3) or device == 4
                     else ["device-private write", "device-private read", "device-exclusive"])
        names += dev_names[: max(device, 0)]
        names.append("pte marker")
        if swapin_error:
            names.append("swapin error")
        for name in names:
            special[nxt] = name
            nxt += 1
        ev.append("types above MAX_SWAPFILES: " + ", ".join(f"{k} {v}" for k, v in special.items()))
        markers: Tuple[Tuple[int, str], ...] = ((0, "uffd-wp"),)
        if ver >= (6, 5):
            markers += ((1, "poisoned"),)
        if ver >= (6, 13):
            markers += ((2, "guard"),)
        return cls(max_swapfiles=max_swapfiles, special=special, markers=markers,
                   page_shift=kernel.regime.page_shift, pa_bits=kernel.regime.pa_bits, evidence=tuple(ev), **enc)

    def as_dict(self) -> Dict[str, object]:
        return {"era": self.era, "max_swapfiles": self.max_swapfiles,
                "special": {str(k): v for k, v in self.special.items()}, "evidence": list(self.evidence)}


def decode_nonpresent(desc: int, level_is_leaf_capable: bool, enc: SwapEncoding) -> Dict[str, object]:
    """
    What a user entry whose valid bit is clear means, as ``pte_present()``,
    ``is_swap_pte()`` and ``pte_to_swp_entry()`` of the kernel's era read it:
    ``{"kind": "none" | "present-invalid" | "swap" | "migration" | "device-private"
    | "hwpoison" | "pte-marker" | "swapin-error", ...}`` with the swap type and
    offset, the PFN a migration/device/hwpoison entry holds, and the flag bits.

    >>> decode_nonpresent(0x1238, True, enc)   # v5.19 era: type 7, offset 0x12
    {'kind': 'swap', 'type': 7, 'offset': 18, ...}
    """
    if desc == 0:
        return {"kind": "none", "meaning": "pte_none(): nothing mapped, nothing remembered"}
    out: Dict[str, object] = {}
    pi = enc.present_invalid_bit
    pmdpi = enc.pmd_present_invalid_bit
    if desc & (1 << pi) or (pmdpi is not None and desc & (1 << pmdpi) and level_is_leaf_capable):
        # pte_present(): a mapping that faults on purpose (PROT_NONE, NUMA
        # hinting, a PMD being split): the PFN is still in the entry.
        out["kind"] = "present-invalid"
        out["meaning"] = ("pte_present() but not valid: PROT_NONE or NUMA-hinting (the access faults; "
                          "the page stays mapped)")
        if enc.uffd_wp_bit is not None and desc & (1 << enc.uffd_wp_bit):
            out["uffd_wp"] = True
        return out
    typ = (desc >> enc.type_shift) & 0x1F
    offset = (desc >> enc.offset_shift) & ((1 << enc.offset_bits) - 1)
    out.update(type=typ, offset=offset, exclusive=bool(desc & (1 << enc.exclusive_bit)))
    if enc.swp_uffd_wp_bit is not None:
        out["uffd_wp"] = bool(desc & (1 << enc.swp_uffd_wp_bit))
    special = enc.special.get(typ)
    if special is None:
        if typ >= enc.max_swapfiles:
            out["kind"] = "unknown"
            out["meaning"] = f"swap type {typ} is not one this kernel defines"
            return out
        out["kind"] = "swap"
        out["meaning"] = f"swapped out: swap device {typ} (swap_info[{typ}]), slot {offset:#x}"
        return out
    # PFN swap entries keep a PFN in the low SWP_PFN_BITS of the offset;
    # migration entries add young/dirty bits above it (swapops.h SWP_MIG_*).
    pfn_bits = enc.pa_bits - enc.page_shift
    pfn = offset & ((1 << pfn_bits) - 1)
    if special.startswith("migration"):
        out["kind"] = "migration"
        out["pfn"] = pfn
        out["young"] = bool(offset >> pfn_bits & 1)
        out["dirty"] = bool(offset >> (pfn_bits + 1) & 1)
        out["meaning"] = f"{special} entry: page {pfn:#x} is being migrated; a fault waits for it"
    elif special.startswith("device"):
        out["kind"] = "device-private"
        out["pfn"] = pfn
        out["meaning"] = f"{special} entry: device memory page {pfn:#x} (ZONE_DEVICE), not CPU-addressable"
    elif special == "hwpoison":
        out["kind"] = "hwpoison"
        out["pfn"] = pfn
        out["meaning"] = f"hardware-poisoned page {pfn:#x}: an access gets SIGBUS"
    elif special == "pte marker":
        out["kind"] = "pte-marker"
        names = [name for bit, name in enc.markers if offset >> bit & 1]
        out["markers"] = names
        out["meaning"] = "PTE marker (" + (", ".join(names) or f"bits {offset:#x}") + "): a none pte that remembers"
    else:
        out["kind"] = "swapin-error"
        out["meaning"] = "SWP_SWAPIN_ERROR: swap-in failed; an access gets SIGBUS"
    out["special"] = special
    return out
