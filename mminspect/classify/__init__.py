"""
Classify every page-table page: allocator origin and ptlock state
-----------------------------------------------------------------

For each table page a walk found, :func:`classify_walk` reads its ``struct
page`` (batched, :mod:`mminspect.mm`) and decides:

- **origin**, with the evidence that decided it
  (:mod:`~mminspect.classify.origin`): ``kernel-image`` (a static table
  inside ``[_text, _end)``, named by symbol: ``swapper_pg_dir``,
  ``bm_pte[1]``, ``init_pg_dir+3`` ...), ``altmap`` (inside a memory block's
  altmap reserve: always a finding for a table), ``memblock``
  (``PG_reserved``; ``memblock.reserved`` and a self-linked ``lru`` as
  supporting evidence), ``slab`` (a pgd smaller than a page from
  ``pgd_cache``), ``buddy-ctor`` (the page carries the page-table type: a
  pgtable ctor ran), ``buddy-no-ctor`` (an allocated buddy page without the
  type), ``unknown`` (unreadable, or a free page: a finding);
- **ptlock** (:mod:`~mminspect.classify.ptlock`): ``n/a`` (no split lock at
  this level or mm), ``initialised`` (an allocated ptl pointing to a live
  ``page->ptl`` object, magic 0xdead4ead with DEBUG_SPINLOCK),
  ``inline-zero`` (inline lock, all zero: an initialised unlocked lock and
  one never initialised look the same), ``held`` (non-zero lock word; owner
  CPU and task with DEBUG_SPINLOCK), ``missing`` (a table whose mm needs a
  split lock, without one), ``stale`` (a lock word where no lock belongs: on
  a page without the table type), ``dangling`` (the pointer is not a live
  ``page->ptl`` object);
- the **region** its VA span covers, what the memory it maps is (boot memory
  by ``SECTION_IS_EARLY``, or hot-added), and the memory block and zone;
- the **expected** origins for (kernel era, root, region, level) from the
  kernel's allocation sites (:mod:`~mminspect.classify.expected`); every
  table whose origin is not expected is a :class:`~mminspect.findings.Finding`
  (:mod:`~mminspect.classify.findings`).

The kernel era is detected by feature (:class:`mminspect.era.Features`).
Everything is columnar (:class:`~mminspect.classify.result.Classification`):
numpy over the raw struct pages, no drgn Object per table page;
:class:`~mminspect.classify.model.TableClass` records are built only when
asked for. The facts every classification of one kernel reuses are read once
(:class:`~mminspect.classify.facts.KernelFacts`).

:func:`audit` is the NR_PAGETABLE audit (:mod:`~mminspect.classify.nr_pagetable`).
"""

from typing import Optional, Sequence

from mminspect.classify import nr_pagetable
from mminspect.classify.nr_pagetable import AUDIT_SCHEMA, Audit, scan_typed
from mminspect.classify.facts import KernelFacts, kernel_facts
from mminspect.classify.model import (
    B_CTOR,
    B_IMAGE,
    B_MEMBLOCK,
    B_NOCTOR,
    CLASSIFY_SCHEMA,
    K_EFI,
    K_INIT,
    K_TRAMP,
    K_USER,
    O_ALTMAP,
    O_CTOR,
    O_IMAGE,
    O_MEMBLOCK,
    O_NOCTOR,
    O_SLAB,
    O_UNKNOWN,
    ORIGINS,
    P_DANGLING,
    P_HELD,
    P_INIT,
    P_INLINE0,
    P_MISSING,
    P_NA,
    P_STALE,
    P_UNKNOWN,
    PTLOCKS,
    TableClass,
    root_kind,
)
from mminspect.classify.result import Classification
from mminspect.classify.tables import capture_hook, classify_roots, classify_walk
from mminspect.era import Features
from mminspect.findings import SEVERITIES, Finding
from mminspect.kernel import Kernel, Root
from mminspect.kernel.layout import region_name
from mminspect.kernel.roots import resolve_roots, task_roots, tramp_root

#: Earlier names of :class:`KernelFacts` and :func:`kernel_facts` (the
#: tests and the hot-remove snapshot use them).
Classifier = KernelFacts
classifier_for = kernel_facts

#: Scan the memmap in a forked child while the roots are walked (when the
#: dump file can be read directly; see :func:`audit`).
FORK_SCAN = True

__all__ = (
    "AUDIT_SCHEMA",
    "Audit",
    "B_CTOR",
    "B_IMAGE",
    "B_MEMBLOCK",
    "B_NOCTOR",
    "CLASSIFY_SCHEMA",
    "Classification",
    "Classifier",
    "FORK_SCAN",
    "Features",
    "Finding",
    "K_EFI",
    "K_INIT",
    "K_TRAMP",
    "K_USER",
    "KernelFacts",
    "ORIGINS",
    "O_ALTMAP",
    "O_CTOR",
    "O_IMAGE",
    "O_MEMBLOCK",
    "O_NOCTOR",
    "O_SLAB",
    "O_UNKNOWN",
    "PTLOCKS",
    "P_DANGLING",
    "P_HELD",
    "P_INIT",
    "P_INLINE0",
    "P_MISSING",
    "P_NA",
    "P_STALE",
    "P_UNKNOWN",
    "SEVERITIES",
    "TableClass",
    "audit",
    "capture_hook",
    "classifier_for",
    "classify_roots",
    "classify_walk",
    "kernel_facts",
    "region_name",
    "resolve_roots",
    "root_kind",
    "scan_typed",
    "task_roots",
    "tramp_root",
)


def audit(kernel: Kernel, roots: Optional[Sequence[Root]] = None, progress=None) -> Audit:
    """
    The NR_PAGETABLE audit (:func:`mminspect.classify.nr_pagetable.audit`), with
    the memmap scan forked as :data:`FORK_SCAN` says: the kernel's exact
    counter, every table-typed page in the memmap, and what the walked roots
    reach (default: init_mm, efi_mm, tramp_pg_dir and every task's mm).
    """
    return nr_pagetable.audit(kernel, roots, progress, fork_scan=FORK_SCAN)
