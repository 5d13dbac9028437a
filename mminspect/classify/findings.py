"""
Findings about table pages
--------------------------

:func:`table_findings` turns a classified walk into the
:class:`~mminspect.findings.Finding`\\s a reviewer should see.
"""

from typing import TYPE_CHECKING, List

import numpy as np

from mminspect.classify.model import K_EFI, K_USER, O_CTOR, O_MEMBLOCK, O_NOCTOR, O_UNKNOWN, ORIGINS, P_DANGLING, P_HELD, P_MISSING, P_STALE, PTLOCKS
from mminspect.findings import Finding

if TYPE_CHECKING:
    from mminspect.classify.result import Classification

__all__ = ("table_findings",)


def table_findings(cls: "Classification", free: np.ndarray, altmap: np.ndarray, reserved: np.ndarray) -> List[Finding]:
    """Every table of ``cls`` a reviewer should see: origin mismatches,
    tables in an altmap or on free pages, typed reserved pages, ptlock
    problems, tables in ZONE_MOVABLE."""
    out: List[Finding] = []
    r = cls.kernel.regime
    c = cls.classifier
    mism = ((cls.expected >> cls.origin.astype(np.int64)) & 1) == 0
    unknown = cls.origin == O_UNKNOWN
    facts = cls.facts

    def add(sev: str, kind: str, i: int, sentence: str) -> None:
        out.append(Finding(sev, kind, int(cls.phys[i]), r.level_name(int(cls.level[i])), sentence,
                           root=cls.root.name, region=cls._region_text(i)))

    for i in np.nonzero(mism & ~unknown & ~altmap)[0].tolist():
        exp = "/".join(ORIGINS[k] for k in range(len(ORIGINS)) if int(cls.expected[i]) >> k & 1)
        add("error" if int(cls.origin[i]) in (O_CTOR, O_NOCTOR, O_MEMBLOCK) else "warning", "origin mismatch", i,
            f"{r.level_name(int(cls.level[i]))} table {int(cls.phys[i]):#x} ({cls._region_text(i)}) is "
            f"{ORIGINS[int(cls.origin[i])]}; this kernel allocates it as {exp or 'nothing'}")
    for i in np.nonzero(altmap)[0].tolist():
        add("error", "table in altmap", i,
            f"table {int(cls.phys[i]):#x} lies in a memory block's altmap reserve: no allocator puts "
            "page tables there, and removing the block frees it under the MMU")
    for i in np.nonzero(free)[0].tolist():
        what = "PageBuddy (on the free lists)" if facts["buddy"][i] else "refcount 0"
        add("critical", "table page free", i,
            f"table {int(cls.phys[i]):#x} is still referenced but its page is {what}: use after free")
    both = reserved & facts["table"] & facts["ok"]
    for i in np.nonzero(both)[0].tolist():
        add("error", "reserved and typed", i,
            f"table {int(cls.phys[i]):#x} is PG_reserved and carries the table type: a ctor ran on a "
            "memblock page, so NR_PAGETABLE counts a page no dtor will meet")
    for code, sev, what in ((P_MISSING, "error", "has no split ptlock"),
                            (P_DANGLING, "critical", "has a ptl pointer that is not a live page->ptl object"),
                            (P_STALE, "warning", "carries a ptl word it should not have"),
                            (P_HELD, "info", "has its ptlock held")):
        for i in np.nonzero(cls.ptlock == code)[0].tolist():
            if code == P_MISSING and cls.kind in (K_EFI, K_USER) and not facts["table"][i] \
                    and mism[i]:
                continue  # the origin mismatch already says the ctor never ran
            add(sev, f"ptlock {PTLOCKS[code]}", i,
                f"{r.level_name(int(cls.level[i]))} table {int(cls.phys[i]):#x} {what}")
    if c.memory is not None:
        blocks = c.memory.blocks
        for i in np.nonzero(cls.own_block >= 0)[0].tolist():
            b = blocks[int(cls.own_block[i])]
            if b.zone == "Movable" and not cls.image[i]:
                add("warning", "table in ZONE_MOVABLE", i,
                    f"table {int(cls.phys[i]):#x} lives in block {b.id} (Movable): offlining it must migrate "
                    "an unmovable page")
    return out
