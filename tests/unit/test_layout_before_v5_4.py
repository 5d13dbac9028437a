"""Kernels before v5.4 put the linear map in the upper half of the TTBR1
range (the 2017 hot-remove RFC ran on them): the layout is recognised from
where the kernel image lies, and linear-map addresses translate."""

import mminspect
from mminspect.kernel import Kernel
from mminspect.target.base import TargetFault

U64 = (1 << 64) - 1


class _V414:
    """VMCOREINFO of a v4.14 arm64 kernel, 4K pages, 48-bit VA."""

    name = "v4.14"
    has_debug_info = False

    def vmcoreinfo(self):
        return {
            "OSRELEASE": "4.14.0", "PAGESIZE": "4096", "NUMBER(VA_BITS)": "48",
            "NUMBER(kimage_voffset)": "0xfffeffffc8000000", "NUMBER(PHYS_OFFSET)": "0x40000000",
            "KERNELOFFSET": "0", "SYMBOL(_stext)": "ffff000008081000",
            "SYMBOL(swapper_pg_dir)": "ffff000008e7d000",
        }

    def symbol(self, name):
        v = self.vmcoreinfo().get(f"SYMBOL({name})")
        return int(v, 16) if v else None

    def sizeof(self, t):
        return None

    offsetof = constant = lambda self, *a: None

    def read_phys(self, a, n):
        raise TargetFault(a, n, True)

    read_virt = read_phys


def test_pre_v5_4_layout():
    k = Kernel(_V414())
    assert k.layout.page_offset == 0xFFFF800000000000
    assert k.is_linear(0xFFFF800000001000)
    assert k.virt_to_phys(0xFFFF800000001000) == 0x40001000
    assert k.phys_to_virt(0x40001000) == 0xFFFF800000001000
    assert k.layout.vmemmap_end == k.layout.page_offset
    assert k.layout.region_of(0xFFFF800000001000) == "linear map"
    # The image is mapped below the linear map and translates through kimage_voffset.
    assert k.virt_to_phys(0xFFFF000008081000) == (0xFFFF000008081000 - 0xFFFEFFFFC8000000) & U64


def test_flipped_layout_is_unchanged():
    k = mminspect.open(core=str(__import__("mminspect.cli", fromlist=["x"]).bundled_sample()))
    assert k.layout.page_offset == 0xFFFF000000000000
    assert k.layout.page_end == 0xFFFF800000000000
