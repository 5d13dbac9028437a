"""
The kernel as mminspect sees it
-------------------------------

:class:`Kernel` binds a :class:`~mminspect.target.base.Target` to the facts
every later stage needs: the translation :class:`~mminspect.arch.arm64.Regime`,
the kernel VA layout and its region table (:mod:`mminspect.kernel.layout`),
the arithmetic address translations (:mod:`mminspect.kernel.addr`), KASAN's
shadow (:mod:`mminspect.kernel.kasan`) and the roots that can be walked
(:mod:`mminspect.kernel.roots`).

Everything here is derived from VMCOREINFO first, as drgn's own translation
does, so that ``init_mm`` can be walked with no debug info at all; DWARF only
refines what VMCOREINFO does not say (the fixmap size for ptdump markers, the
roots that are not exported: efi_mm, tasks).
"""

import re
from typing import Dict, List, Optional, Tuple

from mminspect.arch.arm64 import Regime
from mminspect.bits import U64, s64
from mminspect.errors import MMInspectError
from mminspect.kernel.addr import LinearMap, Vmemmap
from mminspect.kernel.kasan import Kasan, detect_kasan
from mminspect.kernel.layout import SZ_1G, Layout, Region, detect_layout, va_bits_min
from mminspect.kernel.roots import Root, find_root, user_root
from mminspect.target.base import Target
from mminspect.vmcoreinfo import check_vmcoreinfo

__all__ = ("Kasan", "Kernel", "Layout", "LinearMap", "Region", "Root", "Vmemmap")


class Kernel:
    """
    An arm64 kernel behind a target.

    >>> k = Kernel(DrgnTarget.open(core="vmcore", symbols=["vmlinux"]))
    >>> k.regime.describe()
    '4K pages, 48-bit VA, 4 levels'
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        info = target.vmcoreinfo()
        check_vmcoreinfo(info, target.name)  # every number against the others, before any is used
        self.vmcoreinfo = info
        try:
            page_size = int(info["PAGESIZE"])
            va_bits = int(info["NUMBER(VA_BITS)"])
        except (KeyError, ValueError):
            raise MMInspectError(
                f"{target.name}: VMCOREINFO lacks PAGESIZE or NUMBER(VA_BITS); not an arm64 vmcore?"
            ) from None
        t1sz = self._number("TCR_EL1_T1SZ")
        vabits_actual = 64 - t1sz if t1sz else va_bits
        pa_bits = self._number("MAX_PHYSMEM_BITS", decimal=True) or 48
        try:
            self.regime = Regime(page_size.bit_length() - 1, va_bits, vabits_actual, pa_bits)
        except ValueError as e:
            raise MMInspectError(f"{target.name}: {e}") from None
        kv = self._number("kimage_voffset")
        po = self._number("PHYS_OFFSET")
        if kv is None or po is None:
            raise MMInspectError(f"{target.name}: VMCOREINFO lacks kimage_voffset or PHYS_OFFSET")
        self.kimage_voffset = kv
        #: ``memstart_addr``, an s64 that can be negative (arch/arm64/mm/init.c).
        self.phys_offset = s64(po)
        self.kaslr_offset = int(info.get("KERNELOFFSET", "0"), 16)
        top_vmemmap = self._number("VMEMMAP_END") == (-SZ_1G) & U64
        self.kasan = detect_kasan(target.symbol, self.regime, kv, va_bits_min(self.regime, top_vmemmap))
        self.layout = detect_layout(self.regime, self._number, int(info.get("SYMBOL(_stext)", "0"), 16),
                                    target.constant, self.kasan.shadow if self.kasan else None)
        self.struct_page_size = int(info.get("SIZE(page)", 0)) or target.sizeof("struct page") or 64
        #: ``__pa()``/``__va()`` (:mod:`mminspect.kernel.addr`)
        self.linear_map = LinearMap(self.layout.page_offset, self.layout.page_end, self.phys_offset, kv)
        #: ``pfn_to_page()``/``page_to_pfn()``
        self.vmemmap = Vmemmap(self.layout.vmemmap_start, self.phys_offset, self.regime.page_shift,
                               self.struct_page_size)

    def __repr__(self) -> str:
        return f"Kernel({self.vmcoreinfo.get('OSRELEASE', '?')}, {self.regime.describe()}, {self.target.name})"

    @property
    def version(self) -> Tuple[int, int]:
        """(major, minor) from OSRELEASE, (0, 0) when it does not parse. Only
        for facts no dump shows (inline code); everything else is by feature."""
        m = re.match(r"(\d+)\.(\d+)", self.vmcoreinfo.get("OSRELEASE", ""))
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    # -- VMCOREINFO --------------------------------------------------------
    def _number(self, name: str, decimal: bool = False) -> Optional[int]:
        value = self.vmcoreinfo.get(f"NUMBER({name})")
        if value is None:
            return None
        value = value.strip()
        # VMCOREINFO_NUMBER() prints %ld; the arch keys print 0x%lx.
        return int(value, 10) if decimal and not value.lower().startswith("0x") else int(value, 16)

    # -- address translation (mminspect.kernel.addr) ------------------------
    def is_linear(self, va: int) -> bool:
        return self.linear_map.is_linear(va)

    def virt_to_phys(self, va: int) -> int:
        """``__pa()``: linear-map and kernel-image VAs only."""
        return self.linear_map.virt_to_phys(va)

    def phys_to_virt(self, pa: int) -> int:
        """``__va()``: the linear-map alias of a physical address."""
        return self.linear_map.phys_to_virt(pa)

    def pfn_to_page(self, pfn: int) -> int:
        """VA of the ``struct page`` of a PFN in the vmemmap."""
        return self.vmemmap.pfn_to_page(pfn)

    def image_symbol(self, name: str) -> Optional[int]:
        """A kernel-image symbol, relocated by KASLR even where drgn 0.3.0 does
        not relocate it (``_end``, ``init_pg_dir`` ... in sections past .bss:
        they read below ``_text`` by the KASLR offset)."""
        addr = self.target.symbol(name)
        if addr is None:
            return None
        off = self.kaslr_offset
        text = self.target.symbol("_text")
        if off and text is not None and addr < text and text - off <= addr < text - off + SZ_1G:
            return (addr + off) & U64
        return addr

    def regions(self) -> List[Region]:
        """The TTBR1 regions (:meth:`Layout.regions`) and the kernel image
        ``[_text, _end)`` when its symbols are known."""
        out = self.layout.regions()
        text, end = self.target.symbol("_text"), self.image_symbol("_end")
        if text is not None and end is not None:
            out.append(Region("kimage", text, end))
        return out

    # -- roots (mminspect.kernel.roots) ---------------------------------------
    def root(self, spec: str, start: Optional[int] = None, end: Optional[int] = None) -> Root:
        """
        Resolve ``init_mm``, ``efi_mm``, ``vmemmap`` or a pid into a :class:`Root`.

        :raises MMInspectError: for an unknown root, or one that needs debug
            info that is missing
        """
        return find_root(self, spec, start, end)

    def user_root(self, name: str, phys: int) -> Root:
        """A TTBR0 (user-half) root at physical address ``phys``, as for
        efi_mm and tasks: ``[0, TASK_SIZE_64)``."""
        return user_root(self, name, phys)

    # -- ptdump ------------------------------------------------------------
    def ptdump_markers(self, root: Root) -> List[Tuple[int, str]]:
        """The address markers arch/arm64/mm/ptdump.c prints for this root
        (kernel_page_tables or efi_page_tables), ending with ``(-1, None)``."""
        L = self.layout
        r = self.regime
        if not root.ttbr1:
            # drivers/firmware/efi/arm-runtime.c: DEFAULT_MAP_WINDOW_64
            window = 1 << va_bits_min(r, L.top_vmemmap)
            return [(0, "UEFI runtime start"), (window, "UEFI runtime end"), (U64, "")]
        vmemmap_first = None
        if L.top_vmemmap:
            # the struct page of the running VA size's first linear-map page
            po_actual = (-(1 << r.vabits_actual)) & U64
            vmemmap_first = L.vmemmap_start + ((po_actual - L.page_offset) >> r.page_shift) * self.struct_page_size
        return L.ptdump_markers(vmemmap_first)

    def ptdump_base(self, root: Root) -> int:
        """``kernel_ptdump_info.base_addr``: PAGE_OFFSET (6.1) or
        ``_PAGE_OFFSET(vabits_actual)`` (v6.9+), and 0 for efi_mm."""
        if not root.ttbr1:
            return 0
        if self.layout.top_vmemmap:
            return (-(1 << self.regime.vabits_actual)) & U64
        return self.layout.page_offset

    def describe(self) -> Dict[str, object]:
        """Facts for reports and JSON."""
        return {
            "osrelease": self.vmcoreinfo.get("OSRELEASE"),
            "regime": self.regime.as_dict(),
            "phys_offset": self.phys_offset,
            "kimage_voffset": self.kimage_voffset,
            "kaslr_offset": self.kaslr_offset,
            "debug_info": self.target.has_debug_info,
        }
