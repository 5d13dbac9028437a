"""Translation regimes of arm64 Linux and the kernel VA layout that goes with them.

This module describes *what a build and a CPU allow* (granule, ``VA_BITS``, the
runtime ``vabits_actual``, the output-address size) and derives the constants the
kernel computes from them (level shifts, entries per table, ``PAGE_OFFSET``,
``KIMAGE_VADDR``, the vmemmap window...).  It holds no descriptor *decoder*: the
synthetic package is an independent encoder used as an oracle for the project's
own decoder in :mod:`mminspect.arch.arm64`.

Sources: arch/arm64/include/asm/memory.h, pgtable-hwdef.h and arch/arm64/Kconfig
of Linux 6.12 (the layout formulas, as Ard Biesheuvel's v6.9 series "arm64:
Reorganize kernel VA space" left them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mminspect.bits import U64

SZ_4K = 1 << 12
SZ_16K = 1 << 14
SZ_64K = 1 << 16
SZ_8M = 8 << 20
SZ_1G = 1 << 30
SZ_2G = 2 << 30

#: Legal ``CONFIG_ARM64_VA_BITS`` values per granule.
LEGAL_VA_BITS = {SZ_4K: (39, 48, 52), SZ_16K: (36, 47, 48, 52), SZ_64K: (42, 48, 52)}

#: ``CONT_PTE_SHIFT`` / ``CONT_PMD_SHIFT`` expressed as entry counts.
CONT_PTES = {SZ_4K: 16, SZ_16K: 128, SZ_64K: 32}
CONT_PMDS = {SZ_4K: 16, SZ_16K: 32, SZ_64K: 32}

#: MAIR indices used by Linux (``memory.h``).
MT_NORMAL = 0
MT_NORMAL_TAGGED = 1
MT_NORMAL_NC = 2
MT_DEVICE_nGnRnE = 3
MT_DEVICE_nGnRE = 4

#: struct page size (bytes), for the vmemmap window.
STRUCT_PAGE_SIZE = 64


def _neg(x: int) -> int:
    """Two's complement ``-x`` as an unsigned 64-bit value."""
    return (-x) & U64


def page_offset_for(va_bits: int) -> int:
    """``_PAGE_OFFSET(va)`` = -(1 << va)."""
    return _neg(1 << va_bits)


def page_end_for(va_bits: int) -> int:
    """``_PAGE_END(va)`` = -(1 << (va - 1))."""
    return _neg(1 << (va_bits - 1))


@dataclass(frozen=True)
class Regime:
    """One arm64 translation regime: a build (granule, ``VA_BITS``, PA size) on a CPU.

    :param page_size: 4096, 16384 or 65536.
    :param va_bits: ``CONFIG_ARM64_VA_BITS`` (``NUMBER(VA_BITS)``).
    :param vabits_actual: the VA size the kernel runs with (``64 - TCR_EL1.T1SZ``).
        Equal to ``va_bits`` except for 52-bit builds on CPUs without LPA2 (4K: 48,
        16K: 47; the top level is folded at runtime) or without LVA (64K: 48; still
        3 levels, TTBR1 points 0x1e00 bytes into swapper_pg_dir).
    :param pa_bits: the output-address size in effect: 52 means FEAT_LPA (64K,
        OA[51:48] in descriptor bits 15:12) or active FEAT_LPA2 (4K/16K with
        ``vabits_actual == 52``, OA[51:50] in bits 9:8, which are then not SH bits).
    :param pa_bits_config: ``CONFIG_ARM64_PA_BITS`` (``NUMBER(MAX_PHYSMEM_BITS)``);
        defaults to 52 for LPA2 builds and for 64K with ``pa_bits == 52``.
    :param kaslr_offset: ``KERNELOFFSET`` (kimage VA = ``KIMAGE_VADDR + kaslr``).
    :param phys_offset: ``memstart_addr`` (s64, may be negative). ``None`` lets the
        builder derive it from the lowest RAM bank the way ``arm64_memblock_init``
        does (round down to ``ARM64_MEMSTART_ALIGN``, then subtract
        ``_PAGE_OFFSET(vabits_actual) - _PAGE_OFFSET(52)`` on a folded 52-bit build).
    :param name: a short label (used in test ids).
    """

    page_size: int
    va_bits: int
    vabits_actual: int | None = None
    pa_bits: int = 48
    pa_bits_config: int | None = None
    kaslr_offset: int = 0
    phys_offset: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.page_size not in LEGAL_VA_BITS:
            raise ValueError(f"page_size {self.page_size:#x} is not 4K, 16K or 64K")
        if self.va_bits not in LEGAL_VA_BITS[self.page_size]:
            raise ValueError(
                f"VA_BITS={self.va_bits} is not legal with {self.page_size >> 10}K pages "
                f"(legal: {LEGAL_VA_BITS[self.page_size]})"
            )
        if self.vabits_actual is None:
            object.__setattr__(self, "vabits_actual", self.va_bits)
        va = self.vabits_actual
        if va != self.va_bits:
            if self.va_bits != 52:
                raise ValueError("vabits_actual may differ from VA_BITS only on 52-bit builds")
            if va != self.va_bits_min:
                raise ValueError(
                    f"a 52-bit {self.page_size >> 10}K build falls back to "
                    f"{self.va_bits_min} bits, not {va}"
                )
        if self.pa_bits not in (48, 52):
            raise ValueError("pa_bits must be 48 or 52")
        if self.pa_bits == 52 and self.page_size != SZ_64K and not self.lpa2_active:
            raise ValueError("52-bit PA with 4K/16K pages needs LPA2 active (vabits_actual == 52)")
        if self.pa_bits_config is None:
            cfg = 52 if (self.pa_bits == 52 or self.lpa2_build) else 48
            object.__setattr__(self, "pa_bits_config", cfg)
        if self.pa_bits_config < self.pa_bits:
            raise ValueError("pa_bits_config < pa_bits")
        if self.page_size != SZ_64K and self.pa_bits_config == 52 and not self.lpa2_build:
            raise ValueError("CONFIG_ARM64_PA_BITS_52 with 4K/16K needs VA_BITS=52")
        if self.kaslr_offset % self.page_size or self.kaslr_offset < 0:
            raise ValueError("kaslr_offset must be a non-negative multiple of the page size")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    # ---- naming -------------------------------------------------------------------
    def default_name(self) -> str:
        s = f"{self.page_size >> 10}k-va{self.va_bits}"
        if self.vabits_actual != self.va_bits:
            s += f"-run{self.vabits_actual}"
        if self.lpa2_active:
            s += "-lpa2"
        elif self.page_size == SZ_64K and self.pa_bits == 52:
            s += "-lpa"
        return s

    def replace(self, **kw) -> "Regime":
        if "name" not in kw:
            kw["name"] = ""
        return dataclasses.replace(self, **kw)

    # ---- basic geometry -------------------------------------------------------------
    @property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1

    @property
    def bits_per_level(self) -> int:
        return self.page_shift - 3

    @property
    def entries_per_table(self) -> int:
        return self.page_size // 8

    @property
    def lpa2_build(self) -> bool:
        """A 4K/16K build with 52-bit VA (``CONFIG_ARM64_LPA2``)."""
        return self.page_size != SZ_64K and self.va_bits == 52

    @property
    def lpa2_active(self) -> bool:
        """LPA2 (TCR.DS) in use: 4K/16K and ``vabits_actual == 52``."""
        return self.lpa2_build and self.vabits_actual == 52

    @property
    def lpa_active(self) -> bool:
        """64K with 52-bit output addresses (FEAT_LPA)."""
        return self.page_size == SZ_64K and self.pa_bits == 52

    @property
    def folded(self) -> bool:
        """Top level folded at runtime (LPA2 build on a CPU without LPA2)."""
        return self.lpa2_build and not self.lpa2_active

    @property
    def va_bits_min(self) -> int:
        if self.va_bits > 48:
            return 47 if self.page_size == SZ_16K else 48
        return self.va_bits

    def hw_levels(self, va_bits: int) -> int:
        bpl = self.bits_per_level
        return (va_bits - self.page_shift + bpl - 1) // bpl

    @property
    def config_levels(self) -> int:
        """``CONFIG_PGTABLE_LEVELS``."""
        return self.hw_levels(self.va_bits)

    @property
    def walk_va_bits(self) -> int:
        """VA size the tables are indexed with: ``VA_BITS`` on 64K (no runtime folding;
        the 1024-entry root of 64K/52 is indexed the same way on a 48-bit CPU),
        ``vabits_actual`` otherwise."""
        return self.va_bits if self.page_size == SZ_64K else self.vabits_actual

    @property
    def levels(self) -> int:
        """Levels walked at runtime (after folding)."""
        return self.hw_levels(self.walk_va_bits)

    @property
    def start_level(self) -> int:
        """Hardware level of the root: -1 (5 levels) .. 2 (2 levels)."""
        return 4 - self.levels

    def level_shift(self, level: int) -> int:
        """``ARM64_HW_PGTABLE_LEVEL_SHIFT(level)``: VA bits below an entry at ``level``."""
        return self.page_shift + self.bits_per_level * (3 - level)

    def entry_span(self, level: int) -> int:
        """Bytes of VA covered by one entry at ``level``."""
        return 1 << self.level_shift(level)

    @property
    def root_entries(self) -> int:
        return 1 << (self.walk_va_bits - self.level_shift(self.start_level))

    def entries(self, level: int) -> int:
        return self.root_entries if level == self.start_level else self.entries_per_table

    def table_span(self, level: int) -> int:
        """Bytes of VA covered by a whole table at ``level``."""
        return self.entry_span(level) * self.entries(level)

    def index(self, va: int, level: int) -> int:
        return (va >> self.level_shift(level)) & (self.entries(level) - 1)

    @property
    def walk_levels(self) -> tuple[int, ...]:
        return tuple(range(self.start_level, 4))

    def level_name(self, level: int) -> str:
        """Kernel-style name of a table at ``level`` (root is always "PGD", as 6.12's
        ptdump names a runtime-folded root)."""
        names = {5: ("PGD", "P4D", "PUD", "PMD", "PTE"), 4: ("PGD", "PUD", "PMD", "PTE"),
                 3: ("PGD", "PMD", "PTE"), 2: ("PGD", "PTE")}[self.levels]
        return names[level - self.start_level]

    @property
    def block_levels(self) -> tuple[int, ...]:
        """Levels where Linux creates block mappings: PMD (level 2) on every granule,
        PUD (level 1) only with 4K pages (``pud_sect_supported()``)."""
        lv = [2]
        if self.page_size == SZ_4K and self.start_level <= 1:
            lv.insert(0, 1)
        return tuple(lv)

    @property
    def hw_block_levels(self) -> tuple[int, ...]:
        """Levels where the architecture accepts a block descriptor (``01``) in this
        regime: level 2 always; level 1 with 4K, with 16K only under LPA2 (DS=1), with
        64K only with 52-bit OA (FEAT_LPA); level 0 only with 4K under LPA2.  Linux
        uses a subset (:attr:`block_levels`)."""
        lv = [2]
        if self.page_size == SZ_4K or (self.page_size == SZ_16K and self.lpa2_active) or self.lpa_active:
            lv.insert(0, 1)
        if self.page_size == SZ_4K and self.lpa2_active:
            lv.insert(0, 0)
        return tuple(x for x in lv if x >= self.start_level)

    @property
    def cont_ptes(self) -> int:
        return CONT_PTES[self.page_size]

    @property
    def cont_pmds(self) -> int:
        return CONT_PMDS[self.page_size]

    @property
    def pgd_bytes(self) -> int:
        """Size of a non-init pgd (``PGD_SIZE``; a whole page when the top level is
        folded at runtime, ``pgdir_is_page_size()``)."""
        if self.folded:
            return self.page_size
        return min(self.page_size, self.root_entries * 8)

    @property
    def tcr_t1sz(self) -> int:
        return 64 - self.vabits_actual

    @property
    def max_pa(self) -> int:
        return 1 << self.pa_bits

    # ---- VA layout (6.12 formulas, no KASAN) -----------------------------------------
    @property
    def page_offset(self) -> int:
        return page_offset_for(self.va_bits)

    @property
    def page_end(self) -> int:
        return page_end_for(self.va_bits_min)

    @property
    def linear_start(self) -> int:
        """Lowest linear-map VA reachable at runtime (``_PAGE_OFFSET(vabits_actual)``)."""
        return page_offset_for(self.vabits_actual)

    @property
    def linear_size(self) -> int:
        return (self.page_end - self.linear_start) & U64

    @property
    def modules_vaddr(self) -> int:
        return self.page_end

    @property
    def modules_end(self) -> int:
        return (self.modules_vaddr + SZ_2G) & U64

    @property
    def kimage_vaddr(self) -> int:
        """``KIMAGE_VADDR`` before KASLR."""
        return self.modules_end

    @property
    def vmemmap_end(self) -> int:
        return _neg(SZ_1G)

    @property
    def vmemmap_start(self) -> int:
        rng = (self.page_end - self.page_offset) & U64
        return (self.vmemmap_end - (rng >> self.page_shift) * STRUCT_PAGE_SIZE) & U64

    @property
    def vmemmap_live_start(self) -> int:
        rng = (self.page_end - self.linear_start) & U64
        return (self.vmemmap_end - (rng >> self.page_shift) * STRUCT_PAGE_SIZE) & U64

    @property
    def vmalloc_start(self) -> int:
        return self.modules_end

    @property
    def vmalloc_end(self) -> int:
        return (self.vmemmap_live_start - SZ_8M) & U64

    @property
    def pci_io_start(self) -> int:
        return (self.vmemmap_end + SZ_8M) & U64

    @property
    def fixaddr_top(self) -> int:
        return _neg(SZ_8M)

    @property
    def memstart_align(self) -> int:
        """``ARM64_MEMSTART_ALIGN``: 1G for 4K and 16K, 512M for 64K."""
        return SZ_1G if self.page_size != SZ_64K else 512 << 20

    @property
    def kernel_va_min(self) -> int:
        """Lowest VA translated through swapper_pg_dir."""
        return (U64 << self.walk_va_bits) & U64

    @property
    def hw_kernel_va_min(self) -> int:
        """Lowest TTBR1 VA the CPU translates (``-(1 << vabits_actual)``); above
        :attr:`kernel_va_min` only for 64K/52 on a CPU without LVA."""
        return (U64 << self.vabits_actual) & U64

    @property
    def hw_user_va_limit(self) -> int:
        return 1 << self.vabits_actual

    @property
    def user_va_limit(self) -> int:
        """One past the highest TTBR0 VA."""
        return 1 << self.walk_va_bits


def _r(page_size: int, va_bits: int, vabits_actual: int | None = None, pa_bits: int = 48,
       pa_bits_config: int | None = None) -> Regime:
    return Regime(page_size, va_bits, vabits_actual, pa_bits, pa_bits_config)


#: Every granule x VA_BITS x runtime combination arm64 Linux allows.
REGIMES: tuple[Regime, ...] = (
    _r(SZ_4K, 39),
    _r(SZ_4K, 48),
    _r(SZ_4K, 52, 52, 52),          # LPA2 active, 5 levels, 16-entry PGD
    _r(SZ_4K, 52, 48, 48),          # LPA2 build folded to 4 levels
    _r(SZ_16K, 36),
    _r(SZ_16K, 47),
    _r(SZ_16K, 48),                 # 2-entry PGD
    _r(SZ_16K, 52, 52, 52),         # LPA2 active, 4 levels, 32-entry PGD
    _r(SZ_16K, 52, 47, 48),         # LPA2 build folded to 3 levels
    _r(SZ_64K, 42),
    _r(SZ_64K, 42, pa_bits=52),     # LPA with a 42-bit VA
    _r(SZ_64K, 48),
    _r(SZ_64K, 48, pa_bits=52),     # LPA
    _r(SZ_64K, 52),                 # LVA, 48-bit PA
    _r(SZ_64K, 52, pa_bits=52),     # LVA + LPA, 1024-entry root
    _r(SZ_64K, 52, 48, 48),         # 64K/52 on a CPU without LVA (TTBR1 + 0x1e00)
    _r(SZ_64K, 52, 48, 52),         # ... with LPA but without LVA
)

REGIMES_BY_NAME = {r.name: r for r in REGIMES}
assert len(REGIMES_BY_NAME) == len(REGIMES)
