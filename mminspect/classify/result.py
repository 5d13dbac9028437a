"""
A classified walk
-----------------

:class:`Classification` holds every table page of one walk, classified, as
columns: numpy over the raw struct pages, no drgn Object and no Python
object per table page. :meth:`Classification.records` makes the
:class:`~mminspect.classify.model.TableClass` records, sharing the strings
of tables alike.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from mminspect.classify.evidence import evidence as evidence_of
from mminspect.classify.expected import allocator as allocator_of
from mminspect.classify.facts import KernelFacts
from mminspect.classify.model import K_EFI, K_TRAMP, K_USER, ORIGINS, P_HELD, P_NA, PTLOCKS, TableClass
from mminspect.classify.ptlock import owner_text
from mminspect.era import Features
from mminspect.findings import Finding
from mminspect.kernel import Kernel, Root
from mminspect.kernel.layout import region_name
from mminspect.mm.blocks import MAPS_NAMES

__all__ = ("Classification",)


@dataclass
class Classification:
    """Every table page of one walk, classified, as columns (one row per
    table page, numpy); iterate for :class:`TableClass` records, made only
    when asked."""

    kernel: Kernel
    root: Root
    kind: str
    features: Features
    phys: np.ndarray
    level: np.ndarray
    va: np.ndarray
    span: np.ndarray
    parents: np.ndarray
    facts: np.ndarray  #: pages.FACTS_DTYPE row of each table page (head facts for slab)
    origin: np.ndarray  #: index into ORIGINS
    expected: np.ndarray  #: bitmask over ORIGINS
    ptlock: np.ndarray  #: index into PTLOCKS
    region: np.ndarray  #: region bitmask (TTBR1) or 0
    maps: np.ndarray  #: MAPS_* or -1 when not applicable
    block: np.ndarray  #: memory block index of the mapped memory, -1 when none
    own_block: np.ndarray  #: memory block index of the table page itself
    in_memblock: np.ndarray
    image: np.ndarray  #: a live (PG_reserved) kernel-image page
    in_image: np.ndarray  #: inside [_text, _end) or a table symbol, live or freed
    locks: Dict[int, np.void]  #: row -> pages.LOCK_DTYPE for allocated ptls
    findings: List[Finding]
    classifier: KernelFacts
    stats: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.phys)

    def __iter__(self) -> Iterator[TableClass]:
        return self.records()

    @property
    def mismatches(self) -> int:
        return int(np.count_nonzero((self.expected >> self.origin.astype(np.int64)) & 1 == 0))

    def records(self) -> Iterator[TableClass]:
        """One :class:`TableClass` per table page, top level first, then by VA.

        The strings (region, allocator, expected, evidence) depend only on a
        handful of per-table facts; they are built once per distinct
        combination, so listing half a million tables costs little more than
        creating the records."""
        order = np.lexsort((self.va, self.level))
        group = self._groups()
        shared: Dict[int, Tuple] = {}
        for i in order.tolist():
            g = int(group[i])
            if g < 0:
                yield self.record(i)
                continue
            strings = shared.get(g)
            if strings is None:
                rec = self.record(i)
                shared[g] = (rec.region, rec.allocator, rec.expected, rec.evidence)
                yield rec
                continue
            yield self.record(i, strings)

    def string_groups(self) -> np.ndarray:
        """A group id per table page whose record strings (region, allocator,
        expected, evidence) and origin, level and ptlock are those of every
        table in its group, -1 for a table that needs its own: what
        :meth:`records` builds once per group, for callers that summarise
        half a million tables without a record each (``mminspect map``)."""
        return self._groups()

    def _groups(self) -> np.ndarray:
        """A group id per table whose strings are shared, -1 for tables that
        need their own (kernel-image symbols, ptl objects, a root table)."""
        n = len(self.phys)
        f = self.facts
        bits = np.zeros(n, dtype=np.int64)
        for k, col in enumerate((self.in_image, self.in_memblock, f["ok"], f["reserved"], f["slab"], f["tail"],
                                 f["buddy"], f["table"], f["self_linked"], f["poisoned"], f["w2"] == 0)):
            bits |= col.astype(np.int64) << k
        small = (((self.level.astype(np.int64) + 2) << 40) | (self.origin.astype(np.int64) << 32)
                 | (self.ptlock.astype(np.int64) << 24) | ((self.maps.astype(np.int64) + 1) << 16) | bits)
        cols = (small, self.region, self.parents.astype(np.int64), self.expected,
                f["page_type"].astype(np.int64) | (f["refcount"].astype(np.int64) << 32), f["ptl"])
        order = np.lexsort(cols[::-1])
        change = np.zeros(n, dtype=bool)
        if n:
            change[0] = True
            for col in cols:
                sc = col[order]
                change[1:] |= sc[1:] != sc[:-1]
        gid = np.empty(n, dtype=np.int64)
        gid[order] = np.cumsum(change) - 1
        r = self.kernel.regime
        own = self.image | self.in_image | ((self.level == r.top_level) & (self.phys == np.uint64(self.root.phys)))
        if self.locks:
            own[np.fromiter(self.locks, dtype=np.int64)] = True
        gid[own] = -1
        return gid

    def _lists(self) -> Dict[str, list]:
        """Python lists of the columns a record reads (numpy scalars are slow)."""
        cache = self.__dict__.get("_pylists")
        if cache is None:
            f = self.facts
            cache = {name: getattr(self, name).tolist()
                     for name in ("phys", "level", "va", "span", "origin", "ptlock", "maps", "block", "parents")}
            for name in ("ok", "table", "reserved", "ptl", "page_type", "refcount"):
                cache["f_" + name] = f[name].tolist()
            self.__dict__["_pylists"] = cache
        return cache

    def record(self, i: int, strings: Optional[Tuple] = None) -> TableClass:
        r = self.kernel.regime
        c = self.classifier
        L = self._lists()
        lvl = L["level"][i]
        phys = L["phys"][i]
        origin = L["origin"][i]
        ok = L["f_ok"][i]
        image_symbol = c.image_name(phys) if strings is None and self.image[i] else None
        ptl_word = L["f_ptl"][i]
        lock = self.locks.get(i)
        held = L["ptlock"][i] == P_HELD
        owner = None
        if held and lock is not None and (c.features.debug_spinlock or c.layout.rt_spinlock):
            owner = owner_text(c, lock)
        blocks = c.memory.blocks if c.memory else []
        b = L["block"][i]
        block = blocks[b] if b >= 0 else None
        maps = L["maps"][i]
        if strings is None:
            strings = (
                self._region_text(i),
                allocator_of(self, i, image_symbol),
                tuple(ORIGINS[k] for k in range(len(ORIGINS)) if int(self.expected[i]) >> k & 1),
                tuple(evidence_of(self, i, image_symbol, lock)),
            )
        region, allocator, expected, evidence = strings
        return TableClass(
            phys=phys,
            level=lvl,
            level_name=r.level_name(lvl),
            va=L["va"][i],
            span=L["span"][i],
            root=self.root.name,
            region=region,
            origin=ORIGINS[origin],
            allocator=allocator,
            expected=expected,
            ptlock=PTLOCKS[L["ptlock"][i]],
            typed=L["f_table"][i] if ok and self.features.page_type != "unknown" else None,
            reserved=L["f_reserved"][i] if ok and c.layout.pg_reserved is not None else None,
            image_symbol=image_symbol,
            ptl_held=held,
            # (a slab page's word there is the slab's, not a lock: n/a)
            ptl_pointer=ptl_word if c.features.alloc_split and L["ptlock"][i] != P_NA else 0,
            ptl_owner=owner,
            page_type=L["f_page_type"][i],
            refcount=L["f_refcount"][i],
            maps=MAPS_NAMES.get(maps) if maps >= 0 else None,
            block=block.id if block else None,
            zone=block.zone if block else None,
            parents=L["parents"][i],
            evidence=evidence,
        )

    def _region_text(self, i: int) -> str:
        r = self.kernel.regime
        if int(self.level[i]) == r.top_level and int(self.phys[i]) == self.root.phys:
            return "root"
        if self.kind == K_EFI:
            return "EFI runtime"
        if self.kind == K_USER:
            return "user"
        if self.kind == K_TRAMP:
            return "trampoline"
        return region_name(int(self.region[i]))

    def summary(self) -> Counter:
        """Counts by (root, level name, origin, ptlock)."""
        r = self.kernel.regime
        keys = self.level.astype(np.int64) * 100 + self.origin.astype(np.int64) * 10 + self.ptlock
        u, n = np.unique(keys, return_counts=True)
        out: Counter = Counter()
        for key, cnt in zip(u.tolist(), n.tolist()):
            lvl, rest = divmod(key, 100)
            o, p = divmod(rest, 10)
            out[(self.root.name, r.level_name(lvl), ORIGINS[o], PTLOCKS[p])] += cnt
        return out
