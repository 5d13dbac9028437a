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
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from mminspect.errors import MMInspectError
from mminspect.hotremove.era import detect_era
from mminspect.hotremove.policy import Era
from mminspect.kernel import Kernel
from mminspect.memory import Block, MemoryMap
from mminspect.sparse import Section
from mminspect.walk import walk

__all__ = ("SCHEMA", "Snapshot", "TableFacts", "capture_snapshot", "diff_snapshots")

SCHEMA = "mminspect.snapshot/1"


@dataclass
class TableFacts:
    """One table page as the simulation sees it."""

    phys: int
    level: int
    level_name: str
    va: int
    region: str
    parents: List[Tuple[int, int]]
    roots: List[str]
    origin: str = "unknown"
    ptlock: str = "unknown"
    #: The page carries the page-table type: its ctor ran (None: unknown).
    typed: Optional[bool] = None
    #: PG_reserved (memblock or kernel image; None: unknown).
    reserved: Optional[bool] = None
    #: Static table of the kernel image, by symbol (None when not one).
    image_symbol: Optional[str] = None
    #: The ptl is held (non-zero lock word).
    ptl_held: bool = False
    #: ALLOC_SPLIT_PTLOCKS pointer in page->ptl (0 when none or inline).
    ptl_pointer: int = 0
    evidence: List[str] = field(default_factory=list)


@dataclass
class Snapshot:
    """The captured state; see the module docstring."""

    kernel: Dict[str, object]
    era: Era
    root_phys: int
    tables: Dict[int, TableFacts]
    entries: Dict[int, np.ndarray]
    sections: List[Section]
    blocks: List[Block]
    nr_pagetable: Optional[int] = None

    # -- persistence ----------------------------------------------------------
    def save(self, path: str) -> None:
        phys = np.array(sorted(self.entries), dtype=np.uint64)
        header = {
            "schema": SCHEMA,
            "kernel": self.kernel,
            "era": asdict(self.era),
            "root_phys": self.root_phys,
            "tables": [asdict(t) for t in self.tables.values()],
            "sections": [s.as_dict() for s in self.sections],
            "blocks": [b.as_dict() for b in self.blocks],
            "nr_pagetable": self.nr_pagetable,
            "entry_lengths": [len(self.entries[int(p)]) for p in phys],
        }
        flat = np.concatenate([self.entries[int(p)] for p in phys]) if len(phys) else np.empty(0, np.uint64)
        with open(path, "wb") as f:
            np.savez_compressed(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                                phys=phys, entries=flat)

    @classmethod
    def load(cls, path: str) -> "Snapshot":
        try:
            with np.load(path) as z:
                header = json.loads(bytes(z["header"]).decode())
                phys, flat = z["phys"], z["entries"]
        except (OSError, ValueError, KeyError) as e:
            raise MMInspectError(f"{path}: not an mminspect snapshot ({e})") from None
        if header.get("schema") != SCHEMA:
            raise MMInspectError(f"{path}: snapshot schema {header.get('schema')!r}, expected {SCHEMA}")
        entries: Dict[int, np.ndarray] = {}
        pos = 0
        for p, n in zip(phys.tolist(), header["entry_lengths"]):
            entries[p] = flat[pos : pos + n].copy()
            pos += n
        tables = {}
        for t in header["tables"]:
            t["parents"] = [tuple(x) for x in t["parents"]]
            tables[t["phys"]] = TableFacts(**t)
        return cls(
            kernel=header["kernel"],
            era=Era(**header["era"]),
            root_phys=header["root_phys"],
            tables=tables,
            entries=entries,
            sections=[Section(**s) for s in header["sections"]],
            blocks=[Block(**b) for b in header["blocks"]],
            nr_pagetable=header["nr_pagetable"],
        )


def _classify(kernel: Kernel, w, facts: Dict[int, TableFacts]) -> None:
    """Fill origin, ptlock and struct page facts from the classifier."""
    try:
        from mminspect.classify import classify_walk
    except ImportError:
        return
    for c in classify_walk(kernel, w):
        t = facts.get(c.phys)
        if t is None:
            continue
        t.origin = c.origin
        t.ptlock = c.ptlock
        t.typed = c.typed
        t.reserved = c.reserved
        t.image_symbol = c.image_symbol
        t.ptl_held = c.ptl_held
        t.ptl_pointer = c.ptl_pointer
        t.evidence = list(c.evidence)


def capture_snapshot(kernel: Kernel) -> Snapshot:
    """Capture what a hot-remove simulation needs from ``kernel``."""
    r = kernel.regime
    w = walk(kernel, kernel.root("init_mm"))
    entries: Dict[int, np.ndarray] = {}
    facts: Dict[int, TableFacts] = {}
    for t in w.tables():
        size = t.entries * 8
        try:
            entries[t.phys] = np.frombuffer(kernel.target.read_phys(t.phys, size), dtype="<u8").copy()
        except Exception:
            continue
        region = kernel.layout.region_of(t.va) if t.level != r.top_level else "root"
        facts[t.phys] = TableFacts(
            t.phys, t.level, t.level_name, t.va, region,
            [(p.phys, p.index) for p in t.parents if p.phys is not None], ["init_mm"],
        )
    _classify(kernel, w, facts)
    try:
        efi = walk(kernel, kernel.root("efi_mm"))
        for t in efi.tables():
            if t.phys in facts:
                facts[t.phys].roots.append("efi_mm")
    except MMInspectError:
        pass
    memory = MemoryMap.read(kernel)
    sections, blocks = memory.sections, memory.blocks
    era = detect_era(kernel)
    return Snapshot(
        kernel={
            **kernel.describe(),
            "layout": kernel.layout.__dict__,
            "struct_page_size": kernel.struct_page_size,
            "section_size": sections[0].size if sections else 0,
            "block_size": blocks[0].size if blocks else 0,
        },
        era=era,
        root_phys=w.root.phys,
        tables=facts,
        entries=entries,
        sections=sections,
        blocks=blocks,
        nr_pagetable=None,
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
