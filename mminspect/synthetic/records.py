"""Ground-truth records of a synthetic kernel: what the :class:`~.builder.Builder`
decided (tables, leaf runs, anomalies, roots), kept apart from the descriptors it
wrote, so that a :class:`~.built.BuiltKernel` answers from them alone."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .encode import Prot

# --------------------------------------------------------------------------------------
# Records (ground truth)
# --------------------------------------------------------------------------------------


class LeafKind(str, enum.Enum):
    PAGE = "page"
    CONT_PAGE = "cont_page"
    PMD = "pmd"
    CONT_PMD = "cont_pmd"
    PUD = "pud"

    @property
    def level(self) -> int:
        return {"page": 3, "cont_page": 3, "pmd": 2, "cont_pmd": 2, "pud": 1}[self.value]

    @property
    def cont(self) -> bool:
        return self in (LeafKind.CONT_PAGE, LeafKind.CONT_PMD)


AUTO = "auto"


@dataclass(frozen=True, slots=True)
class TableRecord:
    """One page-table (or slab pgd) in the synthetic memory: the generator's
    ground truth, kept apart from the descriptors it wrote (a walked
    :class:`~mminspect.walk.model.TablePage` is what a reader finds in them)."""

    pa: int                 #: PA of entry 0 (not page aligned for slab pgds)
    level: int              #: hardware level, -1..3
    name: str               #: PGD/P4D/PUD/PMD/PTE
    n_entries: int
    root: str               #: root of the first parent
    va_start: int           #: VA covered, under the first parent
    va_end: int             #: exclusive (may be 2**64 for the top of TTBR1)
    parents: tuple[tuple[int, int], ...]   #: (parent table PA, index); empty for a root
    pool: str               #: "ram", "image", "slab", "uniform"
    symbol: str | None      #: e.g. "swapper_pg_dir", "bm_pte"
    in_dump: bool
    omit_mode: str | None   #: None, "absent" (no PT_LOAD) or "zero" (p_filesz < p_memsz)


@dataclass(frozen=True, slots=True)
class LeafRun:
    """``count`` leaves of one level with contiguous VA and PA and identical attributes."""

    root: str
    va: int
    pa: int
    count: int
    level: int
    kind: LeafKind
    prot: Prot
    attr_bits: int          #: every descriptor bit except the OA bits
    leaf_size: int
    label: str = ""
    alias_of: int | None = None   #: VA of the original when reached through a shared table

    @property
    def size(self) -> int:
        return self.count * self.leaf_size

    @property
    def va_end(self) -> int:
        return self.va + self.count * self.leaf_size


@dataclass(frozen=True, slots=True)
class Leaf:
    """A single leaf as the ground truth sees it (from :meth:`BuiltKernel.lookup`)."""

    root: str
    va: int            #: start VA of the leaf
    pa: int            #: start PA of the leaf
    size: int
    level: int
    kind: LeafKind
    prot: Prot
    descriptor: int
    label: str
    alias_of: int | None


class Status(str, enum.Enum):
    MAPPED = "mapped"
    UNMAPPED = "unmapped"
    #: the path crosses a table that is not readable from the dump (left out, or a
    #: table descriptor pointing outside RAM)
    UNREADABLE = "unreadable"
    #: the path crosses a loop or a raw entry whose meaning is not defined by Linux
    ANOMALY = "anomaly"


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str            #: "loop", "raw", "table_outside_ram", "omitted", "shared"
    root: str
    va_start: int
    va_end: int
    level: int           #: level of the entry (or of the omitted table)
    entry_pa: int | None
    value: int | None
    note: str = ""
    #: for "raw": what the hardware does ("unmapped" for invalid encodings)
    hw: str = "undefined"


@dataclass(frozen=True, slots=True)
class Translation:
    """Answer of the ground truth for one (root, VA)."""

    status: Status
    pa: int | None = None
    leaf: Leaf | None = None
    #: what a reader of the dump sees: "mapped", "unmapped", "fault" (unreadable table)
    #: or "undefined"; differs from ``status`` when tables are missing from the dump
    dump_view: str = "unmapped"
    anomaly: Anomaly | None = None


@dataclass(frozen=True, slots=True)
class RootRecord:
    name: str
    pa: int
    va: int              #: kimage VA for swapper_pg_dir, linear VA otherwise
    ttbr: int            #: 1 (kernel half) or 0 (lower half)
    n_entries: int
    size: int
