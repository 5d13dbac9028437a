"""
KASAN's shadow
--------------

A generic or software tag-based KASAN kernel maps every part of its shadow
that no real shadow memory backs through the shared early shadow tables of
mm/kasan/init.c, all to ``kasan_early_shadow_page``. :func:`detect_kasan`
finds them by their symbols (present with KASAN_GENERIC or KASAN_SW_TAGS
only) and places the shadow region.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from mminspect.arch.arm64 import Regime
from mminspect.bits import U64

__all__ = ("Kasan", "EARLY_SHADOW_TABLES", "detect_kasan")

#: The shared early shadow tables (mm/kasan/init.c), top level last.
EARLY_SHADOW_TABLES = ("kasan_early_shadow_p4d", "kasan_early_shadow_pud", "kasan_early_shadow_pmd",
                       "kasan_early_shadow_pte")


@dataclass(frozen=True)
class Kasan:
    """A generic or software tag-based KASAN kernel: its shadow region and
    the shared early shadow tables (mm/kasan/init.c) that map every part of
    the shadow no real shadow memory backs, all to ``kasan_early_shadow_page``.

    :ivar mode: ``generic`` or ``sw_tags``
    :ivar scale_shift: KASAN_SHADOW_SCALE_SHIFT (3 generic, 4 software tags)
    :ivar shadow: ``[KASAN_SHADOW_START, KASAN_SHADOW_END)``
    :ivar tables: PA of each ``kasan_early_shadow_{p4d,pud,pmd,pte}`` the
        image has, by name
    :ivar page: PA of ``kasan_early_shadow_page``
    """

    mode: str
    scale_shift: int
    shadow: Tuple[int, int]
    tables: Dict[str, int]
    page: Optional[int]


def detect_kasan(symbol: Callable[[str], Optional[int]], r: Regime, kimage_voffset: int,
                 va_bits_min: int) -> Optional[Kasan]:
    """KASAN's shadow, found by its early shadow tables' symbols; None on a
    kernel without KASAN (or with hardware tags, which has no shadow)."""
    tables = {}
    for name in EARLY_SHADOW_TABLES:
        va = symbol(name)
        if va is not None:
            tables[name] = (va - kimage_voffset) & U64
    if "kasan_early_shadow_pte" not in tables:
        return None
    page = symbol("kasan_early_shadow_page")
    sw_tags = symbol("kasan_init_sw_tags") is not None
    scale = 4 if sw_tags else 3
    # arch/arm64/include/asm/memory.h: KASAN_SHADOW_END is
    # (1 << (64 - scale)) + KASAN_SHADOW_OFFSET, and the Kconfig default
    # offsets (the only ones: the option has no prompt) put it at
    # _PAGE_END(VA_BITS_MIN); KASAN_SHADOW_START is
    # _KASAN_SHADOW_START(vabits_actual), which is also PAGE_END.
    end = (-(1 << (va_bits_min - 1))) & U64
    start = (end - (1 << (r.vabits_actual - scale))) & U64
    return Kasan("sw_tags" if sw_tags else "generic", scale, (start, end), tables,
                 (page - kimage_voffset) & U64 if page is not None else None)
