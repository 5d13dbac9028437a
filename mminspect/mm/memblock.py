"""
memblock after boot
-------------------

arm64 keeps memblock after boot (``ARCH_KEEP_MEMBLOCK``), so a dump can test
"this table page was a memblock allocation" directly: :func:`read_memblock`
reads the regions of ``memblock.reserved`` (or ``.memory``) and
:func:`in_regions` asks which addresses they hold, vectorised.
"""

from typing import Optional

import numpy as np

from mminspect.target.base import TargetFault

__all__ = ("in_regions", "read_memblock")


def _u64(data: bytes, off: int = 0) -> int:
    return int.from_bytes(data[off : off + 8], "little")


def read_memblock(kernel, which: str = "reserved") -> Optional[np.ndarray]:
    """``memblock.<which>`` regions as an ``n x 3`` uint64 array (base, size,
    flags), sorted by base; None without the DWARF to find them."""
    t = kernel.target
    addr = t.symbol("memblock")
    off_type = t.offsetof("struct memblock", which)
    off_cnt = t.offsetof("struct memblock_type", "cnt")
    off_regions = t.offsetof("struct memblock_type", "regions")
    rsize = t.sizeof("struct memblock_region")
    off_base = t.offsetof("struct memblock_region", "base")
    off_size = t.offsetof("struct memblock_region", "size")
    off_flags = t.offsetof("struct memblock_region", "flags")
    if None in (addr, off_type, off_cnt, off_regions, rsize, off_base, off_size, off_flags):
        return None
    try:
        hdr = t.read_virt(addr + off_type, max(off_cnt, off_regions) + 8)
        cnt = _u64(hdr, off_cnt)
        regions = _u64(hdr, off_regions)
        if cnt > 1 << 20:
            return None
        raw = t.read_virt(regions, cnt * rsize) if cnt else b""
    except TargetFault:
        return None
    out = np.zeros((cnt, 3), dtype=np.uint64)
    for i in range(cnt):
        rec = raw[i * rsize : (i + 1) * rsize]
        out[i] = (_u64(rec, off_base), _u64(rec, off_size), int.from_bytes(rec[off_flags : off_flags + 4], "little"))
    return out[np.argsort(out[:, 0], kind="stable")] if cnt else out


def in_regions(regions: Optional[np.ndarray], pa: np.ndarray) -> np.ndarray:
    """Which ``pa`` lie inside one of ``regions`` (sorted base, size rows)."""
    pa = np.asarray(pa, dtype=np.uint64)
    if regions is None or not len(regions):
        return np.zeros(len(pa), dtype=bool)
    k = np.searchsorted(regions[:, 0], pa, side="right") - 1
    ok = k >= 0
    kk = np.maximum(k, 0)
    return ok & (pa < regions[kk, 0] + regions[kk, 1])
