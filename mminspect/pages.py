"""
struct page / struct ptdesc facts, read in batches
--------------------------------------------------

The names this module always offered, now at home in :mod:`mminspect.mm`:
page-type encodings (:mod:`mminspect.mm.pagetype`), the struct page layout
and its decoding (:mod:`mminspect.mm.struct_page`), batched memmap reads and
scans (:mod:`mminspect.mm.memmap`) and split ptlock objects
(:mod:`mminspect.mm.ptl`).
"""

from mminspect.bits import pfn_runs
from mminspect.mm.memmap import CORE_SCAN_BYTES, GAP_BYTES, MAX_READ, SCAN_THREADS, StructPages
from mminspect.mm.pagetype import TypeScheme
from mminspect.mm.ptl import LOCK_DTYPE, SPINLOCK_MAGIC, SPINLOCK_OWNER_INIT, PtlObjects
from mminspect.mm.struct_page import FACTS_DTYPE, LIST_POISON1, LIST_POISON2, PageLayout

__all__ = (
    "CORE_SCAN_BYTES",
    "FACTS_DTYPE",
    "GAP_BYTES",
    "LIST_POISON1",
    "LIST_POISON2",
    "LOCK_DTYPE",
    "MAX_READ",
    "PageLayout",
    "PtlObjects",
    "SCAN_THREADS",
    "SPINLOCK_MAGIC",
    "SPINLOCK_OWNER_INIT",
    "StructPages",
    "TypeScheme",
    "pfn_runs",
)
