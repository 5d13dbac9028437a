"""
The ptlock state machine
------------------------

Whether each table has the split page-table lock its mm and level need, and
what state it is in: ``n/a``, ``initialised``, ``inline-zero``, ``held``,
``missing``, ``stale``, ``dangling`` (:data:`~mminspect.classify.model.PTLOCKS`).
"""

from typing import Dict, Optional, Tuple

import numpy as np

from mminspect.classify.facts import KernelFacts
from mminspect.classify.model import (
    K_INIT,
    K_TRAMP,
    P_DANGLING,
    P_HELD,
    P_INIT,
    P_INLINE0,
    P_MISSING,
    P_NA,
    P_STALE,
    P_UNKNOWN,
)
from mminspect.mm.ptl import SPINLOCK_MAGIC, SPINLOCK_OWNER_INIT

__all__ = ("owner_text", "ptlock_states")


def ptlock_states(c: KernelFacts, kind: str, level: np.ndarray, facts: np.ndarray,
                  ok: np.ndarray) -> Tuple[np.ndarray, Dict[int, np.void]]:
    """The :data:`~mminspect.classify.model.PTLOCKS` state of each table
    (``facts``: its struct page rows), and the ptl objects read for the
    tables whose allocated ptl points somewhere (row -> LOCK_DTYPE).

    The kernel's rules: a split lock exists at the PTE level with
    USE_SPLIT_PTE_PTLOCKS and at the PMD level with USE_SPLIT_PMD_PTLOCKS
    (include/linux/mm_types_task.h), set up by ``ptlock_init()`` from the
    ctor; kernel tables get none from 8240d8d3c5fb ("mm: skip ptlock_init()
    for kernel PMDs"). With ALLOC_SPLIT_PTLOCKS ``page->ptl`` points to a
    ``page_ptl_cachep`` object; else the lock is the word itself."""
    F = c.features
    n = len(level)
    split = ((level == 3) & F.split_pte) | ((level == 2) & F.split_pmd)
    typed = facts["table"]
    word = facts["ptl"]
    if kind in (K_INIT, K_TRAMP):
        # Kernel tables: only a ctor'd table has (and needs) a split lock, and
        # none from v6.16 (ptlock_init is skipped for init_mm).
        need = split & typed & (not F.init_mm_no_ptl)
    else:
        need = split.copy()
    state = np.full(n, P_NA, dtype=np.int8)
    locks: Dict[int, np.void] = {}
    if F.alloc_split:
        ptr = word
        has = (ptr != 0) & ~(facts["slab"] & ~need)
        state[need & ~has] = P_MISSING
        idx = np.nonzero(has)[0]
        if len(idx):
            objs = c.ptl.read(ptr[idx])
            for j, i in enumerate(idx.tolist()):
                locks[i] = objs[j]
            live = objs["ok"] & objs["slab"]
            if c.ptl.ptl_cache:
                live &= (objs["cache"] == np.uint64(c.ptl.ptl_cache)) | (objs["cache"] == 0)
            if F.debug_spinlock:
                live &= objs["magic"] == np.uint32(SPINLOCK_MAGIC)
                if not c.layout.rt_spinlock:
                    # An unlocked DEBUG_SPINLOCK always has owner_cpu -1 and owner -1:
                    # anything else on an unlocked lock is a free pointer over a freed object.
                    intact = (objs["val"] != 0) | ((objs["owner_cpu"] == np.uint32(0xFFFFFFFF))
                                                   & (objs["owner"] == np.uint64(SPINLOCK_OWNER_INIT)))
                    live &= intact
            held = objs["held"]
            st = np.where(live, np.where(held, P_HELD, P_INIT), P_DANGLING).astype(np.int8)
            # A lock where none belongs: on a page without the table type (a
            # table no more, or never ctor'd), or where the era/level has none.
            st = np.where(~typed[idx] | ~need[idx], np.where(live & held, P_HELD, P_STALE), st)
            state[idx] = st
    else:
        val = (word & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        zero = val == 0
        state[need & zero & typed] = P_INLINE0
        state[need & zero & ~typed] = P_MISSING
        state[need & ~zero] = P_HELD
        state[~need & ~zero] = P_STALE
    # A slab page's word at page->ptl belongs to the slab (sub-page pgds).
    state[facts["slab"] & ~need] = P_NA
    state[~ok] = P_UNKNOWN
    return state, locks


def owner_text(c: KernelFacts, lock) -> Optional[str]:
    """``cpu N, task comm[pid]`` of a held lock with a known owner."""
    owner = int(lock["owner"])
    cpu = int(lock["owner_cpu"])
    if owner in (0, SPINLOCK_OWNER_INIT):
        return None
    name = c.ptl.owner_name(owner)
    return f"cpu {cpu if cpu != 0xFFFFFFFF else '?'}, task {name or hex(owner)}"
