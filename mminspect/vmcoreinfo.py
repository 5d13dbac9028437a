"""
What the kernel records, checked against itself
-----------------------------------------------

Every number mminspect takes from VMCOREINFO sizes something: the page size
sizes every table, ``SECTION_SIZE_BITS`` the loops over memory sections,
``TCR_EL1_T1SZ`` and ``VA_BITS`` the walk. A damaged or forged dump can say
anything, so :func:`check_vmcoreinfo` checks each number against arm64's
legal values and against the others *before* any of them is used, and
refuses in one line that names the field and its value:

- ``PAGESIZE`` is 4K, 16K or 64K, and agrees with the layout: the vmemmap
  (``NUMBER(VMEMMAP_START/END)``) holds one ``struct page`` per page of the
  linear map, and ``swapper_pg_dir`` is page-aligned (arch/arm64/kernel/
  vmlinux.lds.S aligns it to PAGE_SIZE), so a 64K claim on a 4K kernel shows;
- ``VA_BITS`` is one arm64 offers for that granule (arch/arm64/Kconfig), and
  ``64 - TCR_EL1_T1SZ`` equals it, or is the 48 (47 on 16K) a 52-bit build
  runs with on a CPU without LPA2/LVA;
- ``MAX_PHYSMEM_BITS`` is 48 or 52 (CONFIG_ARM64_PA_BITS), 52 only on 64K or
  a 52-bit VA build (ARM64_PA_BITS_52 depends on one of them);
- ``SECTION_SIZE_BITS`` is arm64's: 27 for 4K and 16K, 29 for 64K since
  v5.12 (commit f0b13ee23241 "arm64/sparsemem: reduce SECTION_SIZE_BITS"),
  30 before;
- ``PHYS_OFFSET`` (memstart_addr, signed) is page-aligned and within what
  the linear map and physical addresses allow; ``kimage_voffset`` puts
  ``swapper_pg_dir`` in the TTBR1 half and at a physical address below
  2^MAX_PHYSMEM_BITS.
"""

from typing import Dict, Optional

from mminspect.bits import U64
from mminspect.errors import MMInspectError

__all__ = ("PAGE_SIZES", "SECTION_SIZE_BITS_BY_GRANULE", "SECTION_SIZE_BITS_RANGE", "VA_BITS_BY_GRANULE",
           "check_page_size", "check_vmcoreinfo")

PAGE_SIZES = (4096, 16384, 65536)
#: arch/arm64/Kconfig: the VA sizes each granule offers (ARM64_VA_BITS_*).
VA_BITS_BY_GRANULE = {4096: (39, 48, 52), 16384: (36, 47, 48, 52), 65536: (42, 48, 52)}
#: arch/arm64/include/asm/sparsemem.h, in every era (see the module docstring).
SECTION_SIZE_BITS_BY_GRANULE = {4096: (27, 30), 16384: (27, 30), 65536: (29, 30)}
SECTION_SIZE_BITS_RANGE = (27, 30)
#: STRUCT_PAGE_MAX_SHIFT: the vmemmap reserves 64 bytes per page (v6.9+:
#: sizeof(struct page), which is 64 on every arm64 config we know).
STRUCT_PAGE_MAX = 64


def _bad(name: str, field: str, value: object, why: str) -> MMInspectError:
    return MMInspectError(f"{name}: VMCOREINFO {field}={value} {why}; the dump is damaged or not from an "
                          "arm64 kernel")


def check_page_size(value: int) -> None:
    """Refuse a page size arm64 does not have."""
    if value not in PAGE_SIZES:
        raise MMInspectError(f"page_size {value} is not an arm64 page size (4096, 16384 or 65536)")


def _num(info: Dict[str, str], key: str, name: str, decimal: bool = False) -> Optional[int]:
    raw = info.get(key)
    if raw is None:
        return None
    text = raw.strip()
    try:
        if decimal and not text.lower().startswith("0x"):
            return int(text, 10)
        return int(text, 16)
    except ValueError:
        raise _bad(name, key, raw[:40], "is not a number") from None


def check_vmcoreinfo(info: Dict[str, str], name: str) -> None:
    """
    Check the numbers of a kernel's VMCOREINFO against arm64's legal values
    and against each other (see the module docstring). Keys that are absent
    are not checked here (the code that needs one says so).

    :raises MMInspectError: naming the field and the value
    """
    page_size = _num(info, "PAGESIZE", name, decimal=True)
    if page_size is None:
        return
    if page_size not in PAGE_SIZES:
        raise _bad(name, "PAGESIZE", page_size, "is not an arm64 page size (4096, 16384 or 65536)")
    page_shift = page_size.bit_length() - 1
    va_bits = _num(info, "NUMBER(VA_BITS)", name, decimal=True)
    if va_bits is not None and va_bits not in VA_BITS_BY_GRANULE[page_size]:
        legal = ", ".join(map(str, VA_BITS_BY_GRANULE[page_size]))
        raise _bad(name, "NUMBER(VA_BITS)", va_bits, f"is not a VA size arm64 offers with {page_size // 1024}K "
                   f"pages ({legal}), or PAGESIZE={page_size} is wrong")
    t1sz = _num(info, "NUMBER(TCR_EL1_T1SZ)", name)
    if t1sz is not None and va_bits is not None:
        actual = 64 - t1sz
        folded = 47 if page_size == 16384 else 48
        if actual != va_bits and not (va_bits == 52 and actual == folded):
            raise _bad(name, "NUMBER(TCR_EL1_T1SZ)", hex(t1sz), f"means {actual}-bit VAs, which a VA_BITS="
                       f"{va_bits} kernel with {page_size // 1024}K pages never runs with")
    pa_bits = _num(info, "NUMBER(MAX_PHYSMEM_BITS)", name, decimal=True)
    if pa_bits is not None:
        if pa_bits not in (48, 52):
            raise _bad(name, "NUMBER(MAX_PHYSMEM_BITS)", pa_bits, "is not 48 or 52")
        if pa_bits == 52 and page_size != 65536 and va_bits is not None and va_bits != 52:
            raise _bad(name, "NUMBER(MAX_PHYSMEM_BITS)", pa_bits, f"needs 64K pages or 52-bit VAs (VA_BITS="
                       f"{va_bits}, PAGESIZE={page_size})")
    section_bits = _num(info, "NUMBER(SECTION_SIZE_BITS)", name, decimal=True)
    if section_bits is not None and section_bits not in SECTION_SIZE_BITS_BY_GRANULE[page_size]:
        legal = " or ".join(map(str, SECTION_SIZE_BITS_BY_GRANULE[page_size]))
        raise _bad(name, "NUMBER(SECTION_SIZE_BITS)", section_bits, f"is not arm64's ({legal} with "
                   f"{page_size // 1024}K pages), or PAGESIZE={page_size} is wrong")
    vabits = (64 - t1sz) if t1sz is not None else va_bits
    phys_offset = _num(info, "NUMBER(PHYS_OFFSET)", name)
    if phys_offset is not None:
        po = phys_offset - (1 << 64) if phys_offset & (1 << 63) else phys_offset
        if po % page_size:
            raise _bad(name, "NUMBER(PHYS_OFFSET)", hex(phys_offset), f"is not aligned to PAGESIZE={page_size}")
        if va_bits is not None and not -(1 << va_bits) < po < (1 << (pa_bits or 52)):
            raise _bad(name, "NUMBER(PHYS_OFFSET)", hex(phys_offset), "lies outside what the linear map "
                       "and physical addresses allow")
    swapper = _num(info, "SYMBOL(swapper_pg_dir)", name)
    kv = _num(info, "NUMBER(kimage_voffset)", name)
    if swapper is not None and va_bits is not None:
        if swapper % page_size:
            raise _bad(name, "SYMBOL(swapper_pg_dir)", hex(swapper), f"is not aligned to PAGESIZE={page_size}"
                       " (the kernel image page-aligns it)")
        if swapper < (-(1 << va_bits)) & U64:
            raise _bad(name, "SYMBOL(swapper_pg_dir)", hex(swapper), f"is not a kernel address "
                       f"(VA_BITS={va_bits})")
        if kv is not None and ((swapper - kv) & U64) >= 1 << (pa_bits or 52):
            raise _bad(name, "NUMBER(kimage_voffset)", hex(kv), f"puts swapper_pg_dir at physical "
                       f"{(swapper - kv) & U64:#x}, beyond {pa_bits or 52} physical address bits")
    _check_vmemmap(info, name, page_size, page_shift, va_bits, vabits)


def _check_vmemmap(info: Dict[str, str], name: str, page_size: int, page_shift: int,
                   va_bits: Optional[int], vabits: Optional[int]) -> None:
    """The vmemmap holds one struct page per page of the linear map
    (arch/arm64/include/asm/memory.h: VMEMMAP_SIZE is the linear range
    shifted by PAGE_SHIFT - STRUCT_PAGE_MAX_SHIFT, or from v6.9 times
    sizeof(struct page)), so its size gives away a wrong PAGESIZE."""
    start = _num(info, "NUMBER(VMEMMAP_START)", name)
    end = _num(info, "NUMBER(VMEMMAP_END)", name)
    if start is None or end is None or va_bits is None:
        return
    if not start < end:
        raise _bad(name, "NUMBER(VMEMMAP_START)", hex(start), f"is not below VMEMMAP_END={end:#x}")
    # VA_BITS_MIN: 48 for 52-bit builds (47 on 16K with the v6.9+ layout).
    top = end == (-(1 << 30)) & U64
    va_min = (47 if page_size == 16384 and top else 48) if va_bits > 48 else va_bits
    linear = (1 << va_bits) - (1 << (va_min - 1))  # _PAGE_END(VA_BITS_MIN) - PAGE_OFFSET
    size = end - start
    struct_page = _num(info, "SIZE(page)", name, decimal=True) or STRUCT_PAGE_MAX
    sizes = {(linear >> page_shift) * s for s in (STRUCT_PAGE_MAX, struct_page)}
    if size not in sizes:
        implied = [ps for ps in PAGE_SIZES if (linear // ps) * STRUCT_PAGE_MAX == size]
        hint = f" (the layout is that of a {implied[0] // 1024}K kernel)" if implied else ""
        raise _bad(name, "PAGESIZE", page_size, f"contradicts the vmemmap of {size:#x} bytes "
                   f"(NUMBER(VMEMMAP_START/END)){hint}")
