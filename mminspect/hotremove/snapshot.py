"""
Snapshots
---------

A :class:`Snapshot` is everything a hot-remove simulation needs, captured
once from a target: every init_mm table page with its entries, parents and
classification (origin, ptlock, the struct page facts a dtor or a free would
meet), the set of efi_mm tables, memory sections and blocks, NR_PAGETABLE,
and the era facts of the kernel. It saves to one ``.npz`` file (JSON header
plus the raw entries) and loads back, so a simulation runs offline,
repeatably, and two snapshots can be diffed (say, before and after a real
hot-remove).
"""

import json
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mminspect.classify import ORIGINS, PTLOCKS, P_HELD, classifier_for, classify_walk
from mminspect.errors import MMInspectError
from mminspect.files import atomic_output
from mminspect.hotremove.entries import EntryStore, read_entries
from mminspect.hotremove.era import detect_era
from mminspect.hotremove.isolation import IsolationScan, scan_blocks
from mminspect.hotremove.policy import Era
from mminspect.hotremove.snapshot_file import SCHEMA, TableFacts, read_snapshot_file
from mminspect.kernel import Kernel
from mminspect.memory import Block, MemoryMap, read_memblock
from mminspect.sparse import Section
from mminspect.walk import walk

#: include/linux/memblock.h: enum memblock_flags MEMBLOCK_NOMAP.
MEMBLOCK_NOMAP = 0x4

__all__ = ("SCHEMA", "Snapshot", "TableFacts", "capture_snapshot", "diff_snapshots")


@dataclass
class Snapshot:
    """The captured state; see the module docstring."""

    kernel: Dict[str, object]
    era: Era
    root_phys: int
    tables: Mapping[int, TableFacts]
    entries: Mapping[int, np.ndarray]
    sections: List[Section]
    blocks: List[Block]
    nr_pagetable: Optional[int] = None
    #: Isolation scans of memory blocks' struct pages, by block id (saved for
    #: the hot-added blocks; made on demand while the kernel is at hand).
    scans: Dict[int, IsolationScan] = field(default_factory=dict)
    #: The kernel captured from (None for a loaded snapshot).
    source: Optional[Kernel] = field(default=None, repr=False)

    def isolation_scan(self, block: Block, lo_pfn: int, hi_pfn: int) -> Optional[IsolationScan]:
        """What ``has_unmovable_pages()`` meets in ``[lo_pfn, hi_pfn)`` of
        ``block`` (see :mod:`~mminspect.hotremove.isolation`), or None when
        the struct pages are neither saved nor readable."""
        if block.id not in self.scans:
            self.prefetch_scans([(block, lo_pfn, hi_pfn)])
        return self.scans.get(block.id)

    def prefetch_scans(self, requests) -> None:
        """Scan many blocks' ranges ``(block, lo_pfn, hi_pfn)`` in one bulk
        pass (one reader, one read of each chunk of memmap), if the kernel is
        at hand."""
        todo = [(b, lo, hi) for b, lo, hi in requests if b.id not in self.scans]
        if not todo or self.source is None:
            return
        got = scan_blocks(self.source, [(lo, hi, b.zone == "Movable") for b, lo, hi in todo])
        if got is not None:
            for (b, _, _), scan in zip(todo, got):
                self.scans[b.id] = scan

    # -- persistence ----------------------------------------------------------
    def save(self, path: str, force: bool = True, inputs: Sequence[str] = ()) -> None:
        """Write the snapshot to ``path``, whole or not at all
        (:func:`mminspect.files.atomic_output`): never over one of
        ``inputs`` nor anything but a regular file, and over an existing
        file only with ``force``."""
        header = {
            "schema": SCHEMA,
            "kernel": self.kernel,
            "era": asdict(self.era),
            "root_phys": self.root_phys,
            "tables": [self._table_dict(t) for t in self.tables.values()],
            "sections": [s.as_dict() for s in self.sections],
            "blocks": [b.as_dict() for b in self.blocks],
            "nr_pagetable": self.nr_pagetable,
            "isolation": {str(bid): scan.as_dict() for bid, scan in self._saved_scans().items()},
        }
        store = self.entries if isinstance(self.entries, EntryStore) else EntryStore.of(dict(self.entries))
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **store.arrays()}
        with atomic_output(path, inputs, force) as f:
            # np.savez_compressed()'s format, with the zip closed on every
            # path (savez leaves it to the garbage collector when
            # interrupted, which then writes to a closed file)
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
                for name, arr in arrays.items():
                    with z.open(name + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)

    def _saved_scans(self) -> Dict[int, IsolationScan]:
        """The scans a saved snapshot carries: those made, plus every online
        hot-added block's (small; boot memory is refused before its pages
        matter, and scanning it all would cost a whole memmap read)."""
        page_shift = self.kernel["regime"]["page_size"].bit_length() - 1
        self.prefetch_scans([(b, (b.start >> page_shift) + b.altmap_free, (b.start + b.size) >> page_shift)
                             for b in self.blocks if not b.early and b.state == "online"])
        return dict(self.scans)

    def _table_dict(self, t: TableFacts) -> Dict[str, object]:
        d = asdict(t)
        if not d["evidence"] and hasattr(self.tables, "evidence"):
            d["evidence"] = self.tables.evidence(t.phys)
        return d

    @classmethod
    def load(cls, path: str) -> "Snapshot":
        """Read a snapshot saved by :meth:`save`, every size and field
        checked before use (:mod:`mminspect.hotremove.snapshot_file`).

        :raises MMInspectError: in one line, for a file that is not one
        """
        header, arrays = read_snapshot_file(path)
        entries = EntryStore.from_arrays(arrays)
        era = Era(**header["era"])
        if header["schema"] != SCHEMA:
            for name in ("leaf_split_notifier", "block_memmap", "altmap_per_block", "memmap_on_memory"):
                era.evidence.setdefault(name, f"unknown: not captured in a {header['schema']} snapshot")
        tables = {}
        for t in header["tables"]:
            t["parents"] = [tuple(x) for x in t["parents"]]
            tables[t["phys"]] = TableFacts(**t)
        return cls(
            kernel=header["kernel"],
            era=era,
            root_phys=header["root_phys"],
            tables=tables,
            entries=entries,
            sections=[Section(**s) for s in header["sections"]],
            # /1 blocks lack altmap_free: the memmap pages are what offlining skips.
            blocks=[Block(**{"altmap_free": b.get("altmap_pages", 0), **b}) for b in header["blocks"]],
            nr_pagetable=header.get("nr_pagetable"),
            scans={int(k): IsolationScan.from_dict(v) for k, v in header.get("isolation", {}).items()},
        )


class LazyTables(Mapping):
    """phys -> :class:`TableFacts` for a fresh capture, built on first use
    from the walk's columns, and classified then: a simulation touches only
    the tables it frees or keeps, so half a million table pages cost no half
    a million objects, nor the struct page reads of tables it never meets."""

    def __init__(self, kernel: Kernel, w, readable: np.ndarray, efi: set) -> None:
        self.kernel = kernel
        self.w = w
        self.index = np.flatnonzero(readable)  # into the walk's table columns
        order = np.argsort(w.table_phys[self.index])
        self.index = self.index[order]
        self.phys = w.table_phys[self.index]
        eorder = np.argsort(w.edge_child, kind="stable")
        self.edge_child = w.edge_child[eorder]
        self.edge_parent = w.edge_parent[eorder]
        self.edge_index = w.edge_index[eorder]
        self.efi = efi
        try:
            self.classifier = classifier_for(kernel)
        except (ImportError, MMInspectError):
            self.classifier = None
        self._cache: Dict[int, TableFacts] = {}
        #: phys -> (Classification, row) of the tables classified so far
        self._rows: Dict[int, Tuple[object, int]] = {}

    def _find(self, sorted_phys: np.ndarray, phys: int) -> int:
        k = int(np.searchsorted(sorted_phys, np.uint64(phys)))
        return k if k < len(sorted_phys) and int(sorted_phys[k]) == phys else -1

    def __getitem__(self, phys: int) -> TableFacts:
        t = self._cache.get(phys)
        if t is None:
            self.prefetch([phys])
            t = self._cache.get(phys)
            if t is None:
                raise KeyError(phys)
        return t

    def prefetch(self, phys_list) -> None:
        """Build and classify the records of many table pages at once (one
        vectorised lookup per column and one classification, instead of
        one of each per table)."""
        want = np.array([p for p in phys_list if p not in self._cache], dtype=np.uint64)
        if not len(want):
            return
        r = self.kernel.regime
        w = self.w
        k = np.searchsorted(self.phys, want)
        found = (k < len(self.phys)) & (self.phys[np.minimum(k, len(self.phys) - 1)] == want)
        want, k = want[found], k[found]
        idx = self.index[k]
        lo = np.searchsorted(self.edge_child, want, side="left")
        hi = np.searchsorted(self.edge_child, want, side="right")
        cls = None
        if self.classifier is not None:
            cls = classify_walk(self.kernel, w, self.classifier, select=idx)
        parents_p, parents_i = self.edge_parent.tolist(), self.edge_index.tolist()
        region_of = self.kernel.layout.region_of
        for row, (phys, level, va, a, b) in enumerate(zip(want.tolist(), w.table_level[idx].tolist(),
                                                         w.table_va[idx].tolist(), lo.tolist(), hi.tolist())):
            parents = [(parents_p[e], parents_i[e]) for e in range(a, b) if parents_p[e] != (1 << 64) - 1]
            t = TableFacts(phys, level, r.level_name(level), va,
                           region_of(va) if level != r.top_level else "root", parents,
                           ["init_mm"] + (["efi_mm"] if phys in self.efi else []))
            if cls is not None:
                self._classified(t, cls, row)
                self._rows[phys] = (cls, row)
            self._cache[phys] = t

    @staticmethod
    def _classified(t: TableFacts, cls, i: int) -> None:
        # The classifier's columns, without building its full record (whose
        # evidence text :meth:`evidence` adds when a snapshot is saved).

        f = cls.facts[i]
        c = cls.classifier
        t.origin = ORIGINS[int(cls.origin[i])]
        t.ptlock = PTLOCKS[int(cls.ptlock[i])]
        t.typed = bool(f["table"]) if f["ok"] and cls.features.page_type != "unknown" else None
        t.reserved = bool(f["reserved"]) if f["ok"] and c.layout.pg_reserved is not None else None
        t.image_symbol = c.image_name(t.phys) if cls.image[i] else None
        t.ptl_held = int(cls.ptlock[i]) == P_HELD
        t.ptl_pointer = int(f["ptl"]) if c.features.alloc_split else 0

    def evidence(self, phys: int) -> List[str]:
        """The classifier's evidence for one table page."""
        if phys not in self._cache:
            self.prefetch([phys])
        got = self._rows.get(phys)
        return list(got[0].record(got[1]).evidence) if got is not None else []

    def __contains__(self, phys: object) -> bool:
        return isinstance(phys, int) and self._find(self.phys, phys) >= 0

    def __iter__(self):
        return iter(self.phys.tolist())

    def __len__(self) -> int:
        return len(self.phys)

    def values(self):
        self.prefetch(self.phys.tolist())  # all at once, not one by one
        return super().values()

    def items(self):
        self.prefetch(self.phys.tolist())
        return super().items()


def capture_snapshot(kernel: Kernel, init_walk=None) -> Snapshot:
    """Capture what a hot-remove simulation needs from ``kernel``
    (``init_walk``: a walk of the whole init_mm the caller already has;
    its tables are read again unless it kept their entries)."""
    r = kernel.regime
    w = init_walk if init_walk is not None else walk(kernel, kernel.root("init_mm"), keep_entries=True)
    if w.entries is not None:
        entries = EntryStore.from_walk(w.entries)
        readable = entries.holds(w.table_phys)
    else:
        step_of = np.array([1 << r.shift(lvl) for lvl in range(r.top_level, 4)], dtype=np.uint64)
        steps = step_of[w.table_level.astype(np.int64) - r.top_level]
        entries, readable = read_entries(kernel.target, w.table_phys, w.table_entries, steps)
    try:
        efi = set(walk(kernel, kernel.root("efi_mm")).table_phys.tolist())
    except MMInspectError:
        efi = set()
    facts = LazyTables(kernel, w, readable, efi)
    memory = facts.classifier.memory if facts.classifier is not None else None
    if memory is None:
        memory = MemoryMap.read(kernel)
    sections, blocks = memory.sections, memory.blocks
    era = detect_era(kernel)
    # System RAM as offline_pages()' hole check sees it (walk_system_ram_range():
    # arm64 registers each memblock.memory region not MEMBLOCK_NOMAP as "System
    # RAM"; hot-added memory joins memblock with ARCH_KEEP_MEMBLOCK).
    regions = read_memblock(kernel, "memory")
    system_ram = (None if regions is None else
                  [[int(b), int(n)] for b, n, f in regions.tolist() if not f & MEMBLOCK_NOMAP])
    return Snapshot(
        kernel={
            **kernel.describe(),
            "layout": kernel.layout.__dict__,
            "struct_page_size": kernel.struct_page_size,
            "section_size": sections[0].size if sections else 0,
            "block_size": blocks[0].size if blocks else 0,
            "system_ram": system_ram,
        },
        era=era,
        root_phys=w.root.phys,
        tables=facts,
        entries=entries,
        sections=sections,
        blocks=blocks,
        nr_pagetable=None,
        source=kernel,
    )


def diff_snapshots(a: Snapshot, b: Snapshot) -> Dict[str, List[int]]:
    """Compare two captures of one kernel by table identity (phys, level,
    VA): tables of ``a`` gone from ``b`` (freed), new in ``b`` (allocated),
    the same page now another table (reused: freed, then allocated again),
    and the same table with different entries (changed)."""

    def ident(s: Snapshot) -> Dict[int, Tuple[int, int]]:
        return {p: (t.level, t.va) for p, t in s.tables.items()}

    ia, ib = ident(a), ident(b)
    reused = sorted(p for p in ia if p in ib and ia[p] != ib[p])
    same = [p for p in ia if p in ib and ia[p] == ib[p]]
    changed = sorted(p for p in same if not np.array_equal(a.entries[p], b.entries[p]))
    return {
        "freed": sorted(p for p in ia if p not in ib or ia[p] != ib[p]),
        "allocated": sorted(p for p in ib if p not in ia or ia[p] != ib[p]),
        "reused": reused,
        "changed": changed,
    }
