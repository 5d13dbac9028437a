"""
Classify the table pages of a walk
----------------------------------

:func:`classify_walk` reads the ``struct page`` of every table page a walk
found (batched, :mod:`mminspect.mm.memmap`) and decides its origin
(:mod:`~mminspect.classify.origin`), the origins the kernel's allocation
sites would give it (:mod:`~mminspect.classify.expected`), its ptlock state
(:mod:`~mminspect.classify.ptlock`), the region its VA span covers and the
memory it maps, and the findings (:mod:`~mminspect.classify.findings`).
"""

import time
from typing import List, Optional, Sequence

import numpy as np

from mminspect.bits import unique
from mminspect.classify.expected import B_IMAGE, expected_origins
from mminspect.classify.facts import KernelFacts, kernel_facts
from mminspect.classify.findings import table_findings
from mminspect.classify.origin import mapped_memory, table_origins
from mminspect.classify.ptlock import ptlock_states
from mminspect.classify.result import Classification
from mminspect.classify.model import root_kind
from mminspect.kernel import Kernel, Root
from mminspect.mm.memblock import in_regions
from mminspect.walk import Walk, walk

__all__ = ("capture_hook", "classify_roots", "classify_walk")


def classify_walk(kernel: Kernel, w: Walk, classifier: Optional[KernelFacts] = None,
                  select: Optional[np.ndarray] = None) -> Classification:
    """
    Classify every table page of a walk (``select``: only these indices into
    its table columns, for a caller that needs a few of half a million).

    >>> cls = classify_walk(k, walk(k, k.root("efi_mm")))
    >>> cls.summary()
    Counter({('efi_mm', 'PTE', 'buddy-ctor', 'inline-zero'): 5, ...})
    """
    t0 = time.perf_counter()
    c = classifier or kernel_facts(kernel)
    r = kernel.regime
    F = c.features
    root = w.root
    kind = root_kind(root)
    phys, level, va, span, parents = _table_columns(w, select)
    n = len(phys)
    is_root = (level == r.top_level) & (phys == np.uint64(root.phys))
    t1 = time.perf_counter()
    pfn = phys >> np.uint64(c.shift)
    facts = _struct_pages(c, pfn)
    t2 = time.perf_counter()

    ok = facts["ok"]
    in_image = c.image_contains(phys)
    in_mb = in_regions(c.memblock, phys)
    altmap = c.memory.in_altmap(pfn) if c.memory is not None else np.zeros(n, dtype=bool)
    reserved_known = c.layout.pg_reserved is not None
    reserved = facts["reserved"] if reserved_known else in_mb
    # Freed image memory (init sections) is no longer PG_reserved: it is
    # ordinary buddy memory now.
    image = in_image & (reserved | ~ok) if reserved_known else in_image
    free = ok & (facts["buddy"] | ((facts["refcount"] == 0) & ~facts["slab"]))

    origin = table_origins(c, facts, reserved, free, altmap, image)

    # regions and mapped memory
    region = np.zeros(n, dtype=np.int64)
    maps = np.full(n, -1, dtype=np.int8)
    block = np.full(n, -1, dtype=np.int64)
    own_block = c.memory.block_of(phys) if c.memory is not None else np.full(n, -1, dtype=np.int64)
    if root.ttbr1 and n:
        region = c.region_bits(va, span)
        region[is_root] = 0
        if c.memory is not None:
            maps, block = mapped_memory(kernel, c, va, span, region, is_root)

    expected = expected_origins(c, kind, root, level, region, maps, is_root)
    if kernel.kasan is not None and n:
        # kasan_early_shadow_{p4d,pud,pmd,pte}: bss of the image, whatever maps them
        early = np.isin(phys, np.array(sorted(kernel.kasan.tables.values()), dtype=np.uint64))
        expected[early & ~is_root] = B_IMAGE
    ptlock, locks = ptlock_states(c, kind, level, facts, ok)
    out = Classification(
        kernel=kernel, root=root, kind=kind, features=F, phys=phys, level=level, va=va, span=span,
        parents=parents, facts=facts, origin=origin, expected=expected, ptlock=ptlock, region=region,
        maps=maps, block=block, own_block=own_block, in_memblock=in_mb, image=image, in_image=in_image,
        locks=locks,
        findings=[], classifier=c,
    )
    out.findings = table_findings(out, free, altmap, reserved)
    t3 = time.perf_counter()
    out.stats = {"tables": n, "seconds": t3 - t0, "struct_page_seconds": t2 - t1,
                 "reads": c.pages.reads, "bytes_read": c.pages.bytes_read}
    return out


def _table_columns(w: Walk, select: Optional[np.ndarray]):
    """PA, level, VA, VA span and number of parent entries of each table of
    ``w`` (``select``: only these)."""
    r = w.regime
    cols = (w.table_phys, w.table_level, w.table_va, w.table_entries)
    if select is not None:
        cols = tuple(col[select] for col in cols)
    phys = cols[0].astype(np.uint64)
    level = cols[1].astype(np.int8)
    va = cols[2].astype(np.uint64)
    n = len(phys)
    span = np.empty(0, np.uint64)
    if n:
        shifts = np.zeros(8, dtype=np.uint64)
        for lv in unique(level).tolist():
            shifts[lv + 1] = r.shift(lv)
        span = cols[3].astype(np.uint64) << shifts[level.astype(np.int64) + 1]
    if len(w.edge_child):
        uc, cnt = np.unique(w.edge_child, return_counts=True)
        pos = np.minimum(np.searchsorted(uc, phys), len(uc) - 1)
        parents = np.where(uc[pos] == phys, cnt[pos], 0)
    else:
        parents = np.zeros(n, dtype=np.int64)
    return phys, level, va, span, parents


def _struct_pages(c: KernelFacts, pfn: np.ndarray) -> np.ndarray:
    """The struct page facts of each PFN (in order, repeats allowed), a
    compound tail's page types and PG_slab taken from its head."""
    upf = c.pages.facts(pfn)
    facts = upf[np.searchsorted(upf["pfn"], pfn)] if len(pfn) else upf
    if np.any(facts["tail"]):
        facts = c.pages.heads(facts)
    return facts


def classify_roots(kernel: Kernel, roots: Sequence[Root], progress=None) -> List[Classification]:
    """Walk and classify each root."""
    c = kernel_facts(kernel)
    return [classify_walk(kernel, walk(kernel, root, progress), c) for root in roots]


def capture_hook(kernel: Kernel, w: Walk) -> None:
    """Called by :func:`mminspect.capture.capture` so that bundles hold the
    struct pages, memblock and memory-map reads the classifier needs."""
    cls = classify_walk(kernel, w)
    for i in range(min(len(cls), 64)):  # the evidence path reads owners etc.
        cls.record(i)
