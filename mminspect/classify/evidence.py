"""
Evidence text
-------------

:func:`evidence` says, in words, what decided one table's origin and ptlock
state: the struct page facts, memblock, the image, the lock object.
"""

from typing import TYPE_CHECKING, List, Optional

from mminspect.classify.model import O_ALTMAP, O_MEMBLOCK, P_DANGLING, P_HELD, P_INIT, P_INLINE0, P_MISSING, P_STALE
from mminspect.mm.blocks import MAPS_NAMES
from mminspect.mm.ptl import SPINLOCK_MAGIC

if TYPE_CHECKING:
    from mminspect.classify.result import Classification

__all__ = ("evidence",)


def evidence(cls: "Classification", i: int, image_symbol: Optional[str], lock) -> List[str]:
    """The facts that decided table ``i``'s origin and ptlock state, in words."""
    c = cls.classifier
    f = cls.facts[i]
    L = c.layout
    out: List[str] = []
    if not f["ok"]:
        return ["struct page not readable"] + ([f"in kernel image ({image_symbol})"] if image_symbol else [])
    o = int(cls.origin[i])
    if cls.image[i]:
        out.append(f"PA in kernel image: {image_symbol or 'no table symbol here'}")
    elif cls.in_image[i]:
        out.append("PA in [_text, _end) but freed after boot (init sections): now buddy memory")
    if cls.origin[i] == O_ALTMAP:
        out.append("PFN inside a memory block's altmap reserve")
    if L.pg_reserved is not None:
        out.append("PG_reserved" if f["reserved"] else "not PG_reserved")
    if cls.in_memblock[i]:
        out.append("in memblock.reserved")
    elif c.memblock is not None and o == O_MEMBLOCK:
        out.append("not in memblock.reserved")
    desc = L.scheme.describe(int(f["page_type"]))
    out.append(f"page_type {int(f['page_type']):#010x} ({desc})")
    if f["slab"]:
        out.append("slab page" + (" (head of a compound slab)" if f["tail"] else ""))
    if f["buddy"]:
        out.append("PageBuddy: the page is free")
    if f["refcount"] != 1 and not f["slab"]:
        out.append(f"refcount {int(f['refcount'])}")
    if f["self_linked"]:
        out.append("lru self-linked (never on a buddy list)")
    elif f["poisoned"]:
        out.append("lru LIST_POISON (left the buddy lists)")
    lvl = int(cls.level[i])
    if f["table"] and lvl == 2:
        if int(f["w2"]) == 0:
            out.append("pmd_huge_pte NULL")
    if cls.maps[i] >= 0:
        out.append(f"maps {MAPS_NAMES[int(cls.maps[i])]} memory")
    p = int(cls.ptlock[i])
    word = int(f["ptl"])
    if p == P_INLINE0:
        out.append("inline ptl 0: initialised and never-initialised look alike (no DEBUG_SPINLOCK); "
                   "the table type says ptlock_init ran")
    elif p == P_MISSING:
        if c.features.alloc_split:
            out.append("page->ptl NULL where the mm needs a split lock")
        else:
            out.append("no table type: the ctor (and ptlock_init) never ran; the inline word is 0")
    elif p == P_STALE:
        out.append(f"ptl word {word:#x} on a page that should have none")
    elif p in (P_INIT, P_HELD, P_DANGLING) and lock is not None:
        out.append(f"ptl -> {int(lock['ptr']):#x}")
        if c.features.debug_spinlock:
            out.append(f"magic {int(lock['magic']):#x}" + (" ok" if int(lock["magic"]) == SPINLOCK_MAGIC else ""))
        if not lock["slab"]:
            out.append("pointer not into a slab page")
        if p == P_HELD:
            out.append(f"rt_mutex owner {int(lock['owner']):#x}" if c.layout.rt_spinlock
                       else f"lock word {int(lock['val']):#x}")
    elif p == P_HELD:
        out.append(f"lock word {word & 0xFFFFFFFF:#x}")
    if int(cls.parents[i]) > 1:
        out.append(f"{int(cls.parents[i])} parent entries")
    return out
