"""
What a classified table is
--------------------------

The vocabulary of the classifier: the allocator origins (:data:`ORIGINS`),
the ptlock states (:data:`PTLOCKS`), the kinds of root (what allocated the
tables below it), the region bits, and :class:`TableClass`, one classified
table page.

The table records, and how they differ: a walked
:class:`~mminspect.walk.model.TablePage` says *where* a table hangs (level,
VA span, parent entries); a :class:`TableClass` says *what* it is and why
(origin, expected origins, ptlock, evidence); the hot-remove snapshot keeps
the compact columns a simulation needs. :class:`~mminspect.classify.result.Classification`
holds a whole walk's tables as columns and makes a :class:`TableClass` per
table only when asked.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from mminspect.kernel import Root
from mminspect.kernel.layout import region_bit

__all__ = (
    "CLASSIFY_SCHEMA",
    "K_EFI",
    "K_INIT",
    "K_TRAMP",
    "K_USER",
    "ORIGINS",
    "PTLOCKS",
    "TableClass",
    "root_kind",
)

CLASSIFY_SCHEMA = "mminspect.classify/1"

ORIGINS = ("kernel-image", "memblock", "buddy-ctor", "buddy-no-ctor", "slab", "altmap", "unknown")
O_IMAGE, O_MEMBLOCK, O_CTOR, O_NOCTOR, O_SLAB, O_ALTMAP, O_UNKNOWN = range(7)
#: Bits of an expected-origins mask, one per :data:`ORIGINS` entry.
B_IMAGE, B_MEMBLOCK, B_CTOR, B_NOCTOR, B_SLAB, B_ALTMAP, B_UNKNOWN = (1 << i for i in range(7))

PTLOCKS = ("n/a", "initialised", "inline-zero", "held", "missing", "stale", "dangling", "unknown")
P_NA, P_INIT, P_INLINE0, P_HELD, P_MISSING, P_STALE, P_DANGLING, P_UNKNOWN = range(8)

#: Root kinds: what allocated the tables below a root.
K_INIT, K_TRAMP, K_EFI, K_USER = "init_mm", "tramp", "efi_mm", "user"

#: Region bits (:func:`mminspect.kernel.layout.region_bit`) of a table's VA span.
R_LINEAR = region_bit("linear map")
R_MODULES = region_bit("modules")
R_VMALLOC = region_bit("vmalloc")
R_VMEMMAP = region_bit("vmemmap")
R_PCI = region_bit("PCI I/O")
R_FIXMAP = region_bit("fixmap")
R_KIMAGE = region_bit("kimage")
R_OTHER = region_bit("other")
R_KASAN = region_bit("KASAN shadow")


def root_kind(root: Root) -> str:
    """:data:`K_INIT`, :data:`K_TRAMP`, :data:`K_EFI` or :data:`K_USER`."""
    if root.ttbr1:
        return K_TRAMP if root.name.startswith("tramp") else K_INIT
    return K_EFI if root.name == "efi_mm" else K_USER


@dataclass
class TableClass:
    """One table page, classified: what it is and why (the reports and the
    hot-remove snapshot read these). Unlike a walked
    :class:`~mminspect.walk.model.TablePage` it carries the origin, the
    expected origins, the ptlock state and the evidence."""

    phys: int
    level: int
    level_name: str
    va: int
    span: int
    root: str
    region: str
    origin: str
    allocator: str
    expected: Tuple[str, ...]
    ptlock: str
    typed: Optional[bool]
    reserved: Optional[bool]
    image_symbol: Optional[str]
    ptl_held: bool
    ptl_pointer: int
    ptl_owner: Optional[str]
    page_type: int
    refcount: int
    maps: Optional[str]
    block: Optional[int]
    zone: Optional[str]
    parents: int
    evidence: Tuple[str, ...]

    @property
    def mismatch(self) -> bool:
        return self.origin not in self.expected

    def as_dict(self) -> Dict[str, object]:
        d = dict(self.__dict__)
        d["expected"] = list(self.expected)
        d["evidence"] = list(self.evidence)
        return d
