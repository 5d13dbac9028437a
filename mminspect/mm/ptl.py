"""
Split page-table locks
----------------------

With ALLOC_SPLIT_PTLOCKS (``sizeof(spinlock_t) > sizeof(long)``: lock
debugging, PREEMPT_RT) ``page->ptl`` points to a spinlock allocated from
``page_ptl_cachep``; :class:`PtlObjects` reads those objects, with the slab
page and cache each lies in, so that the classifier can tell a live lock
from a dangling pointer.
"""

from typing import Optional

import numpy as np

from mminspect.bits import U64
from mminspect.mm.memmap import StructPages
from mminspect.target.base import TargetFault

__all__ = ("LOCK_DTYPE", "PtlObjects", "SPINLOCK_MAGIC", "SPINLOCK_OWNER_INIT")

#: include/linux/spinlock_types_raw.h ``#define SPINLOCK_MAGIC 0xdead4ead``
#: (a macro: not in DWARF) and ``SPINLOCK_OWNER_INIT ((void *)-1L)``.
SPINLOCK_MAGIC = 0xDEAD4EAD
SPINLOCK_OWNER_INIT = U64

#: One ptl object, read where an allocated page->ptl points.
LOCK_DTYPE = np.dtype(
    [
        ("ptr", np.uint64),
        ("ok", np.bool_),  # the object could be read
        ("val", np.uint32),  # the first word: qspinlock val (0 unlocked), or the rt_mutex's wait_lock
        ("held", np.bool_),  # qspinlock val != 0, or (PREEMPT_RT) an rt_mutex owner
        ("magic", np.uint32),
        ("owner_cpu", np.uint32),
        ("owner", np.uint64),
        ("slab", np.bool_),  # the pointer's page is a slab page
        ("cache", np.uint64),  # that slab's kmem_cache (0 when unknown)
    ]
)


class PtlObjects:
    """Read the spinlocks that ALLOC_SPLIT_PTLOCKS ``page->ptl`` pointers
    point to, with the slab page and cache each lies in."""

    def __init__(self, kernel, pages: StructPages) -> None:
        self.kernel = kernel
        self.pages = pages
        t = kernel.target
        self.layout = pages.layout
        self.off_slab_cache = t.offsetof("struct slab", "slab_cache")
        addr = t.symbol("page_ptl_cachep")
        self.ptl_cache: Optional[int] = None
        if addr is not None:
            try:
                self.ptl_cache = int.from_bytes(t.read_virt(addr, 8), "little")
            except TargetFault:
                self.ptl_cache = None

    def read(self, ptrs: np.ndarray) -> np.ndarray:
        """One :data:`LOCK_DTYPE` row per pointer (same order)."""
        k = self.kernel
        ptrs = np.asarray(ptrs, dtype=np.uint64)
        out = np.zeros(len(ptrs), dtype=LOCK_DTYPE)
        out["ptr"] = ptrs
        if not len(ptrs):
            return out
        size = self.layout.spinlock_size or 4
        linear = k.linear_map.contains(ptrs)
        pa = k.linear_map.to_phys(ptrs)
        # Objects, one read per page that holds some.
        ps = k.regime.page_size
        idx = np.nonzero(linear)[0]
        pages = {}
        for i in idx.tolist():
            p = int(pa[i])
            base = p - p % ps
            if base not in pages:
                try:
                    pages[base] = k.target.read_phys(base, ps)
                except TargetFault:
                    pages[base] = None
            data = pages[base]
            off = p - base
            if data is None or off + size > ps:
                continue
            obj = data[off : off + size]
            out["ok"][i] = True
            out["val"][i] = int.from_bytes(obj[0:4], "little")
            L = self.layout
            if L.off_magic is not None and L.off_magic + 4 <= size:
                out["magic"][i] = int.from_bytes(obj[L.off_magic : L.off_magic + 4], "little")
            if L.off_owner_cpu is not None and L.off_owner_cpu + 4 <= size:
                out["owner_cpu"][i] = int.from_bytes(obj[L.off_owner_cpu : L.off_owner_cpu + 4], "little")
            if L.off_owner is not None and L.off_owner + 8 <= size:
                out["owner"][i] = int.from_bytes(obj[L.off_owner : L.off_owner + 8], "little")
            if L.off_rt_owner is not None and L.off_rt_owner + 8 <= size:
                # bit 0 of rt_mutex_base.owner is RT_MUTEX_HAS_WAITERS
                owner = int.from_bytes(obj[L.off_rt_owner : L.off_rt_owner + 8], "little")
                out["owner"][i] = owner & ~1
                out["owner_cpu"][i] = 0xFFFFFFFF  # a sleeping lock's owner is a task, not a CPU
                out["held"][i] = owner != 0
            else:
                out["held"][i] = out["val"][i] != 0
        # The slab pages of the objects (head pages of compound slabs).
        if len(idx):
            pfns = pa[idx] >> np.uint64(k.regime.page_shift)
            facts = self.pages.heads(self.pages.facts(pfns))
            pos = np.searchsorted(facts["pfn"], pfns)
            # heads() keeps the row's PFN but the head's facts
            f = facts[pos]
            out["slab"][idx] = f["slab"]
            if self.off_slab_cache is not None:
                words = {8: f["w1"], 16: f["w2"], 24: f["mapping"], 32: f["index"], 40: f["ptl"]}
                if self.off_slab_cache in words:
                    out["cache"][idx] = np.where(f["slab"], words[self.off_slab_cache], 0)
        return out

    def owner_name(self, task: int) -> Optional[str]:
        """``comm[pid]`` of a task_struct pointer, when DWARF allows."""
        t = self.kernel.target
        off_comm = t.offsetof("struct task_struct", "comm")
        off_pid = t.offsetof("struct task_struct", "pid")
        if off_comm is None or not task or task == SPINLOCK_OWNER_INIT:
            return None
        try:
            comm = t.read_virt(task + off_comm, 16).split(b"\0", 1)[0].decode("ascii", "replace")
            pid = int.from_bytes(t.read_virt(task + off_pid, 4), "little") if off_pid is not None else None
        except TargetFault:
            return None
        return f"{comm}[{pid}]" if pid is not None else comm
