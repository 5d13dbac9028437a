"""
identify: what a physical page is, and who maps it
--------------------------------------------------

:func:`identify` answers, for many physical addresses in one pass:

- whether the page is a **page-table page** of some root (init_mm and its
  vmemmap, efi_mm, the KPTI trampoline, every task's mm, the lazily borrowed
  ones): at which level and VA span, from how many entries, and, through the
  classifier, its origin, ptlock and evidence;
- **every VA that maps it** in every root: a reverse map built once over all
  roots (:class:`ReverseMap`: the leaf runs of every walk as sorted arrays by
  physical start, each query range found with ``np.searchsorted``), not a
  walk or a scan per address or per root;
- what its **struct page** says (:func:`mminspect.pageinfo.page_info`).

Each root is walked once, however many addresses are asked about.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.bits import U64
from mminspect.classify import classifier_for, classify_walk, resolve_roots, task_roots, tramp_root
from mminspect.errors import MMInspectError
from mminspect.kernel import Kernel, Root
from mminspect.pageinfo import max_pfn, page_info
from mminspect.walk import CLS_LEAF, Mapping, Walk, walk

__all__ = ("JSON_SCHEMA", "Identity", "ReverseMap", "all_roots", "check_addresses", "identify", "parse_address")

JSON_SCHEMA = "mminspect.identify/1"


@dataclass(frozen=True)
class MappedAt:
    """One VA range of one root that maps the page."""

    root: str
    va: int  #: VA of the page (for a repeated run: the run's first VA)
    size: int  #: bytes of VA (a repeated run maps the page again and again)
    level: str
    kind: str
    attrs: str
    repeated: bool

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Identity:
    """What :func:`identify` found about one physical address."""

    phys: int
    pfn: int
    tables: List[Dict[str, object]] = field(default_factory=list)  #: one per root that reaches it
    mapped_at: List[MappedAt] = field(default_factory=list)
    page: Optional[object] = None  #: pageinfo.PageInfo

    @property
    def is_page_table(self) -> bool:
        return bool(self.tables)

    def as_dict(self) -> Dict[str, object]:
        return {"phys": self.phys, "pfn": self.pfn, "page_table": self.is_page_table, "tables": self.tables,
                "mapped_at": [m.as_dict() for m in self.mapped_at],
                "page": self.page.as_dict() if self.page is not None else None}


class ReverseMap:
    """
    The leaf runs of many walks, sorted by physical start: which VAs of
    which roots map a physical address. Built once from the walks' run
    arrays (no Python object per run); :meth:`lookup` answers a whole batch
    of addresses with two ``searchsorted`` calls per run array.

    >>> rm = ReverseMap(k, [walk(k, k.root("init_mm")), walk(k, k.root("efi_mm"))])
    >>> rm.lookup(np.array([0x40246000], dtype=np.uint64))
    """

    def __init__(self, kernel: Kernel, walks: Sequence[Walk]) -> None:
        r = kernel.regime
        self.kernel = kernel
        self.roots = [w.root.name for w in walks]
        cols = {k: [] for k in ("pa", "end", "va", "size", "level", "attr", "inherit", "rep", "root")}
        for i, w in enumerate(walks):
            leaf = w.runs[w.runs["cls"] == CLS_LEAF]
            pa = leaf["pa"]
            page = np.array([1 << r.shift(int(L)) for L in leaf["level"].tolist()], dtype=np.uint64) \
                if leaf["rep"].any() else None
            end = np.where(leaf["rep"] != 0, pa + page, pa + leaf["size"]) if page is not None else pa + leaf["size"]
            for name, col in (("pa", pa), ("end", end), ("va", leaf["va"]), ("size", leaf["size"]),
                              ("level", leaf["level"]), ("attr", leaf["attr"]), ("inherit", leaf["inherit"]),
                              ("rep", leaf["rep"])):
                cols[name].append(col)
            cols["root"].append(np.full(len(leaf), i, dtype=np.int32))
        cat = {k: (np.concatenate(v) if v else np.empty(0)) for k, v in cols.items()}
        order = np.argsort(cat["pa"], kind="stable")
        self.runs = {k: v[order] for k, v in cat.items()}

    def __len__(self) -> int:
        return len(self.runs["pa"])

    def lookup(self, pas: np.ndarray):
        """``(query index, run index)`` pairs: every run that maps each of
        ``pas`` (any order). Runs whose physical range holds no query cost
        two binary searches each."""
        pas = np.asarray(pas, dtype=np.uint64)
        qorder = np.argsort(pas, kind="stable")
        qs = pas[qorder]
        lo = np.searchsorted(qs, self.runs["pa"], side="left")
        hi = np.searchsorted(qs, self.runs["end"], side="left")
        cnt = (hi - lo).astype(np.int64)
        hit = np.nonzero(cnt > 0)[0]
        if not len(hit):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        c = cnt[hit]
        run_idx = np.repeat(hit, c)
        starts = np.repeat(lo[hit], c)
        offs = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        return qorder[starts + offs], run_idx


def _parents_of_many(w: Walk, phys: Sequence[int]) -> Dict[int, List[Dict[str, object]]]:
    """The entries that reference each of some tables, from the walk's edge
    arrays in one sort and one pair of searches (:meth:`Walk.parents_of`
    builds a dict of every table's parents, half a million at 1 TiB)."""
    srt = np.argsort(w.edge_child, kind="stable")
    ec = w.edge_child[srt]
    keys = np.array(phys, dtype=np.uint64)
    lo = np.searchsorted(ec, keys, "left").tolist()
    hi = np.searchsorted(ec, keys, "right").tolist()
    out = {}
    for p, a, b in zip(phys, lo, hi):
        e = srt[a:b]
        out[p] = [{"phys": None if x == U64 else x, "index": i}
                  for x, i in zip(w.edge_parent[e].tolist(), w.edge_index[e].tolist())]
    return out


def parse_address(text: str, page_shift: int) -> int:
    """``PHYS`` (hex, 0x optional) or ``pfn:N`` (N decimal or 0x hex)."""
    t = text.strip()
    try:
        if t.lower().startswith("pfn:"):
            return int(t[4:], 0) << page_shift
        return int(t, 16)
    except ValueError:
        raise MMInspectError(f"bad address {text!r}: expected PHYS (hex) or pfn:N") from None


def _check_ram(kernel: Kernel, pas: Sequence[int]) -> None:

    shift = kernel.regime.page_shift
    mp = max_pfn(kernel)
    mem = classifier_for(kernel).memory
    q = np.array(pas, dtype=np.uint64)
    if mp is not None and len(q) and (q >> np.uint64(shift)).max() >= np.uint64(mp):
        pa = int(q[np.argmax(q >> np.uint64(shift) >= np.uint64(mp))])
        raise MMInspectError(f"pfn {pa >> shift:#x} (physical {pa:#x}) is past max_pfn {mp:#x}")
    if mem is not None and mem.sections and len(q):
        starts = np.array([s.start for s in mem.sections], np.uint64)
        ends = np.array([s.start + s.size for s in mem.sections], np.uint64)
        k = np.searchsorted(starts, q, side="right") - 1
        bad = (k < 0) | (q >= ends[np.maximum(k, 0)])
        if bad.any():
            raise MMInspectError(f"physical {int(q[np.argmax(bad)]):#x} is outside RAM (in no present memory section)")


def all_roots(kernel: Kernel, spec: str = "all") -> List[Root]:
    """:func:`~mminspect.classify.resolve_roots` of ``spec``; for ``all``,
    the roots this target can give (a bundle has no task list: its init_mm
    and efi_mm)."""
    if spec != "all":
        return resolve_roots(kernel, spec)
    roots = [kernel.root("init_mm")]
    try:
        roots.append(kernel.root("efi_mm"))
    except MMInspectError:
        pass
    # tramp_root() relocates the symbol through the classifier (memory map,
    # era facts ...): only worth building for a kernel that has the symbol.
    tr = tramp_root(kernel) if kernel.target.symbol("tramp_pg_dir") is not None else None
    if tr is not None:
        roots.append(tr)
    try:
        roots += task_roots(kernel)
    except Exception:  # no task list in this target (a bundle): the kernel's own roots
        pass
    return roots


def check_addresses(kernel: Kernel, pas: Sequence[int]) -> None:
    """Refuse, in one line, an address past ``max_pfn`` or outside RAM."""
    _check_ram(kernel, [int(p) for p in pas])


def identify(kernel: Kernel, pas: Sequence[int], roots: Optional[Sequence[Root]] = None,
             walks: Optional[Sequence[Walk]] = None, page_facts: bool = True) -> List[Identity]:
    """
    Identify every physical address of ``pas`` (see the module docstring),
    walking each root once (``roots``: default every root
    :func:`~mminspect.classify.resolve_roots` ``"all"`` gives; ``walks``:
    walks the caller already has).

    >>> [i.is_page_table for i in identify(k, [0x40246000, 0x80001000])]
    [True, False]

    :raises MMInspectError: for an address outside RAM or past ``max_pfn``
    """

    r = kernel.regime
    shift = r.page_shift
    pas = [int(p) for p in pas]
    _check_ram(kernel, pas)
    if walks is None:
        roots = roots if roots is not None else all_roots(kernel)
        walks = [walk(kernel, root) for root in roots]
    q = np.array(pas, dtype=np.uint64)
    qpage = q >> np.uint64(shift)
    out = [Identity(pa, pa >> shift) for pa in pas]
    # Page-table pages: a table page (or sub-page pgd object) in the queried page.
    for w in walks:
        tpage = w.table_phys >> np.uint64(shift)
        order = np.argsort(tpage, kind="stable")
        st = tpage[order]
        lo = np.searchsorted(st, qpage, side="left")
        hi = np.searchsorted(st, qpage, side="right")
        hits = np.nonzero(hi > lo)[0]
        if not len(hits):
            continue
        sel = np.unique(np.concatenate([order[lo[i]:hi[i]] for i in hits.tolist()]))
        cls = classify_walk(kernel, w, select=sel)
        recs = {rec.phys: rec for rec in cls.records()}
        parents = _parents_of_many(w, [int(w.table_phys[j]) for j in sel.tolist()])
        for i in hits.tolist():
            for j in order[lo[i]:hi[i]].tolist():
                rec = recs[int(w.table_phys[j])]
                out[i].tables.append({
                    "root": w.root.name, "phys": rec.phys, "level": rec.level_name, "va": rec.va,
                    "span": rec.span, "valid": int(w.table_valid[j]), "entries": int(w.table_entries[j]),
                    "parents": parents[rec.phys],
                    "region": rec.region, "origin": rec.origin, "allocator": rec.allocator,
                    "expected": list(rec.expected), "ptlock": rec.ptlock, "evidence": list(rec.evidence),
                })
    # Every VA that maps it.
    rm = ReverseMap(kernel, walks)
    qi, ri = rm.lookup(q)
    R = rm.runs
    attr_text: Dict[Tuple[int, int], Tuple[str, str]] = {}
    cols = {name: R[name][ri].tolist() for name in ("level", "va", "size", "pa", "attr", "inherit", "rep", "root")}
    for n, a in sorted(enumerate(qi.tolist()), key=lambda x: x[1]):
        L, attr = cols["level"][n], cols["attr"][n]
        m = Mapping(cols["va"][n], cols["size"][n], cols["pa"][n], L, r.level_name(L), attr,
                    cols["inherit"][n], bool(cols["rep"][n]))
        text = attr_text.get((attr, L))
        if text is None:
            text = attr_text[(attr, L)] = (m.kind, m.attrs)
        page_base = pas[a] & ~((1 << shift) - 1)
        if m.repeat:
            va, size = m.va, m.size
        else:
            va = (m.va + (page_base - m.pa)) & U64 if page_base >= m.pa else m.va
            size = min(1 << shift, m.size)
        kind = "repeated" if m.repeat else text[0]
        out[a].mapped_at.append(MappedAt(rm.roots[cols["root"][n]], va, size, m.level_name, kind, text[1], m.repeat))
    if page_facts:
        for ident, info in zip(out, page_info(kernel, [p >> shift for p in pas])):
            ident.page = info
    return out
