"""
The NR_PAGETABLE audit
----------------------

:func:`audit` compares the kernel's own counter (global plus per-CPU
deltas, per node) with every table-typed page in the memmap and with the
ctor'd tables reachable from every root (init_mm, efi_mm, the KPTI
trampoline, every task's mm), and names the pages that explain any
difference. The memmap scan runs in a forked child while the roots are
walked when the dump file can be read directly (:mod:`mminspect.forked`).
"""

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.bits import contains, unique
from mminspect.classify.facts import KernelFacts, kernel_facts
from mminspect.classify.model import B_CTOR, K_INIT
from mminspect.classify.result import Classification
from mminspect.classify.tables import classify_walk
from mminspect.errors import MMInspectError
from mminspect.forked import in_child, peak_rss_kib
from mminspect.kernel import Kernel, Root
from mminspect.kernel.roots import resolve_roots
from mminspect.mm.blocks import MAPS_HOT, MAPS_MIXED, MAPS_NAMES
from mminspect.mm.vmstat import global_node_stat, node_stat
from mminspect.target.base import core_file_of, program_of
from mminspect.walk import walk

__all__ = ("AUDIT_SCHEMA", "Audit", "audit", "read_counter", "scan_typed")

AUDIT_SCHEMA = "mminspect.audit/1"


@dataclass
class Audit:
    """The NR_PAGETABLE audit of one kernel (see :func:`audit`)."""

    counter: Optional[int]  #: exact: node vm_stat + per-CPU deltas, summed over nodes
    per_node: List[Dict[str, int]]
    global_vm_node_stat: Optional[int]  #: the folded global vm_node_stat[NR_PAGETABLE]
    counter_evidence: str
    typed: np.ndarray  #: PFNs of every page typed as a page table (memmap scan)
    scanned_pages: int
    unreadable_pages: int
    roots: Dict[str, int]  #: root -> table pages walked
    root_errors: Dict[str, str]
    reachable_typed: np.ndarray  #: typed PFNs reached from a root
    unreachable_typed: np.ndarray  #: typed PFNs no root reaches (leaks, or RCU-pending frees)
    unreachable_facts: np.ndarray
    #: per unreachable typed page: what its words suggest (an RCU free in flight ...)
    unreachable_hints: List[str]
    untyped_tables: Dict[Tuple[str, str, str], int]  #: (root, level, region) -> reachable tables without ctor
    expected_ctor_missing: List[Tuple[str, int, str]]  #: (root, phys, level) ctor expected, not typed
    multi_root: List[Tuple[int, Tuple[str, ...]]]  #: tables (phys) reached from two or more roots
    hot_overlap: Dict[Tuple[str, str, str], int]  #: (root, level, maps) -> tables whose span maps hot-added memory
    mixed_spans: List[Tuple[str, int, str]]  #: (root, phys, level) tables mapping boot and hot-added memory
    writable_roots: List[str]  #: static root tables mapped writable where the kernel maps them read-only
    memcg: Dict[int, int]  #: memcg_data (flags cleared) -> typed pages charged to it
    page_shift: int = 12
    stats: Dict[str, float] = field(default_factory=dict)
    #: on a running kernel, what changed between two reads (mminspect.live.settle_audit)
    changed_while_read: List[str] = field(default_factory=list)

    @property
    def typed_count(self) -> int:
        return int(len(self.typed))

    @property
    def difference(self) -> Optional[int]:
        """typed pages - counter (None when the counter is unknown)."""
        return None if self.counter is None else self.typed_count - self.counter

    def explanation(self) -> List[str]:
        """Sentences that account for the difference, page by page where pages exist."""
        out = []
        d = self.difference
        if d is None:
            out.append("the kernel's counter could not be read: only the typed pages are reported")
        elif d == 0:
            out.append(f"NR_PAGETABLE {self.counter} equals the {self.typed_count} pages typed as page tables")
        else:
            out.append(f"{self.typed_count} typed pages vs NR_PAGETABLE {self.counter}: difference {d:+d}")
            if d < 0:
                out.append(f"{-d} page(s) counted but not typed: tables freed without a dtor on a kernel whose "
                           "free clears the type (v6.17+), or ctors whose type was lost; no page is left to "
                           "point at")
            else:
                out.append(f"{d} typed page(s) not counted: a dtor ran without a ctor (the counter dropped, "
                           "the type stayed), or a page typed by hand")
        if len(self.unreachable_typed):
            out.append(f"{len(self.unreachable_typed)} typed page(s) no walked root reaches: leaked tables "
                       "(counted and typed, freed without a dtor into nowhere) or frees still waiting for RCU")
        return out

    def as_dict(self) -> Dict[str, object]:
        return {
            "counter": self.counter,
            "per_node": self.per_node,
            "global_vm_node_stat": self.global_vm_node_stat,
            "counter_evidence": self.counter_evidence,
            "typed_pages": self.typed_count,
            "difference": self.difference,
            "explanation": self.explanation(),
            "scanned_pages": self.scanned_pages,
            "unreadable_pages": self.unreadable_pages,
            "roots": self.roots,
            "root_errors": self.root_errors,
            "reachable_typed": int(len(self.reachable_typed)),
            "unreachable_typed": [
                {"pfn": int(f["pfn"]), "phys": int(f["pfn"]) << self.page_shift, "page_type": int(f["page_type"]),
                 "refcount": int(f["refcount"]), "ptl": int(f["ptl"]), "w1": int(f["w1"]), "w2": int(f["w2"]),
                 "hint": h}
                for f, h in zip(self.unreachable_facts, self.unreachable_hints)
            ],
            "untyped_tables": [{"root": k[0], "level": k[1], "region": k[2], "count": v}
                               for k, v in sorted(self.untyped_tables.items())],
            "expected_ctor_missing": [{"root": a, "phys": b, "level": c} for a, b, c in self.expected_ctor_missing],
            "multi_root": [{"phys": p, "roots": list(r)} for p, r in self.multi_root],
            "hot_overlap": [{"root": a, "level": b, "maps": c, "count": v}
                            for (a, b, c), v in sorted(self.hot_overlap.items())],
            "mixed_spans": [{"root": a, "phys": b, "level": c} for a, b, c in self.mixed_spans],
            "writable_roots": self.writable_roots,
            "memcg": {hex(k): v for k, v in self.memcg.items()},
            "stats": self.stats,
            "changed_while_read": self.changed_while_read,
        }


def _timed(fn, *args) -> tuple:
    t0 = time.perf_counter()
    return (*fn(*args), time.perf_counter() - t0)


def scan_typed(kernel: Kernel, classifier: Optional[KernelFacts] = None) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Every page of the memmap typed as a page table: (PFNs, their facts,
    pages scanned, pages whose struct page could not be read)."""
    c = classifier or kernel_facts(kernel)
    if c.memory is None:
        raise MMInspectError(f"{kernel.target.name}: no memory sections: cannot scan the memmap")
    facts = []
    scanned = bad = 0
    for chunk, pages, unreadable in c.pages.scan(c.memory.pfn_ranges(c.shift), want="table"):
        scanned += pages
        bad += unreadable
        if len(chunk):
            facts.append(chunk)
    f = np.concatenate(facts) if facts else c.pages.facts(np.empty(0, np.uint64))
    return f["pfn"].copy(), f, scanned, bad


def audit(kernel: Kernel, roots: Optional[Sequence[Root]] = None, progress=None, fork_scan: bool = True) -> Audit:
    """
    The NR_PAGETABLE audit: the kernel's exact counter, every table-typed
    page in the memmap, and what the walked roots reach (default: init_mm,
    efi_mm, tramp_pg_dir and every task's mm). With ``fork_scan`` and the
    dump file at hand, the memmap scan (which reads the file outside the
    GIL) runs in a child process while this one walks the roots.
    """
    t0 = time.perf_counter()
    c = kernel_facts(kernel)
    counter, per_node, cev = read_counter(kernel)
    gval = global_node_stat(kernel, "NR_PAGETABLE")
    t1 = time.perf_counter()
    child = in_child(lambda: (*_timed(scan_typed, kernel, c), peak_rss_kib())) \
        if fork_scan and core_file_of(kernel.target) is not None else None
    classes, errors = _classify_roots(kernel, c, roots, progress)
    t2 = time.perf_counter()
    got = None
    if child is not None:
        try:
            got = child()
        except RuntimeError:  # the child failed: scan here, as without a file
            pass
    forked = got is not None
    if not forked:
        got = (*_timed(scan_typed, kernel, c), 0)
    typed, typed_facts, scanned, bad, scan_seconds, child_peak = got
    t_scan = time.perf_counter()
    untyped, missing_ctor, hot, mixed = _table_counts(kernel, classes)
    reach = [cl.phys >> np.uint64(c.shift) for cl in classes]
    allreach = unique(np.concatenate(reach)) if reach else np.empty(0, np.uint64)
    isin = contains(allreach, typed)
    multi = _multi_root(classes)
    memcg = _memcg_charges(c, typed_facts)
    t4 = time.perf_counter()
    return Audit(
        counter=counter,
        per_node=per_node,
        global_vm_node_stat=gval,
        counter_evidence=cev,
        typed=typed,
        scanned_pages=scanned,
        unreadable_pages=bad,
        roots={cl.root.name: len(cl) for cl in classes},
        root_errors=errors,
        reachable_typed=typed[isin],
        unreachable_typed=typed[~isin],
        unreachable_facts=typed_facts[~isin],
        unreachable_hints=[_unreachable_hint(kernel, f, sorted(errors)) for f in typed_facts[~isin]],
        untyped_tables=dict(untyped),
        expected_ctor_missing=missing_ctor,
        multi_root=multi,
        hot_overlap=dict(hot),
        mixed_spans=mixed,
        writable_roots=_writable_roots(kernel, classes),
        memcg=memcg,
        page_shift=c.shift,
        stats={"counter_seconds": t1 - t0, "scan_seconds": scan_seconds, "walk_seconds": t2 - t1,
               "scan_forked": forked, "scan_wait_seconds": t_scan - t2,
               "scan_child_peak_kib": child_peak,
               "compare_seconds": t4 - t_scan, "seconds": t4 - t0},
    )


def read_counter(kernel: Kernel) -> Tuple[Optional[int], List[Dict[str, int]], str]:
    """NR_PAGETABLE exactly (every node's vm_stat plus the per-CPU deltas),
    per node, and the evidence (or why it could not be read)."""
    try:
        nodes = node_stat(kernel, "NR_PAGETABLE")
    except MMInspectError as e:
        return None, [], str(e)
    per_node = [{"nid": x.nid, "vm_stat": x.global_value, "percpu_delta": x.percpu_delta, "exact": x.exact}
                for x in nodes]
    idx = kernel.target.constant("NR_PAGETABLE")
    cev = (f"enum node_stat_item NR_PAGETABLE = {idx}: pglist_data.vm_stat plus every possible CPU's "
           f"vm_node_stat_diff, over {len(nodes)} node(s)")
    return sum(x.exact for x in nodes), per_node, cev


def _classify_roots(kernel: Kernel, c: KernelFacts, roots: Optional[Sequence[Root]],
                    progress) -> Tuple[List[Classification], Dict[str, str]]:
    """Walk and classify each root (default: every root there is), with
    the reason for each root that could not be walked."""
    errors: Dict[str, str] = {}
    if roots is None:
        roots = resolve_roots(kernel, "all")
        if not any(r.name == "efi_mm" for r in roots):
            try:
                kernel.root("efi_mm")
            except MMInspectError as e:  # why it is missing: no DWARF, or no EFI runtime
                errors["efi_mm"] = str(e)
    classes: List[Classification] = []
    for root in roots:
        try:
            classes.append(classify_walk(kernel, walk(kernel, root, progress), c))
        except MMInspectError as e:
            errors[root.name] = str(e)
    return classes, errors


def _table_counts(kernel: Kernel, classes: Sequence[Classification]):
    """Over every walked table: the untyped ones by (root, level, region),
    those expected to be ctor'd and not typed, and those whose span maps
    hot-added memory (by (root, level, maps)), mixed spans listed."""
    untyped: Counter = Counter()
    missing_ctor: List[Tuple[str, int, str]] = []
    hot: Counter = Counter()
    mixed: List[Tuple[str, int, str]] = []
    r = kernel.regime
    for cl in classes:
        nt = cl.facts["ok"] & ~cl.facts["table"]
        # group the untyped tables by (level, region) without a loop per table
        key = cl.level.astype(np.int64)[nt] * (1 << 16) + cl.region[nt]
        uk, first, cnt = np.unique(key, return_index=True, return_counts=True)
        idx = np.nonzero(nt)[0]
        for j, n in zip(first.tolist(), cnt.tolist()):
            i = int(idx[j])
            untyped[(cl.root.name, r.level_name(int(cl.level[i])), cl._region_text(i))] += n
        want = ((cl.expected & B_CTOR) != 0) & ((cl.expected & ~B_CTOR) == 0) & nt
        for i in np.nonzero(want)[0].tolist():
            missing_ctor.append((cl.root.name, int(cl.phys[i]), r.level_name(int(cl.level[i]))))
        for i in np.nonzero((cl.maps == MAPS_HOT) | (cl.maps == MAPS_MIXED))[0].tolist():
            lname = r.level_name(int(cl.level[i]))
            hot[(cl.root.name, lname, MAPS_NAMES[int(cl.maps[i])])] += 1
            if cl.maps[i] == MAPS_MIXED:
                mixed.append((cl.root.name, int(cl.phys[i]), lname))
    return untyped, missing_ctor, hot, mixed


def _multi_root(classes: Sequence[Classification]) -> List[Tuple[int, Tuple[str, ...]]]:
    """Table objects (two sub-page pgds may share a page) reached from two
    or more roots, with those roots."""
    multi: List[Tuple[int, Tuple[str, ...]]] = []
    if not classes:
        return multi
    objs = [unique(cl.phys) for cl in classes]
    o = np.concatenate(objs)
    w = np.concatenate([np.full(len(u), k, dtype=np.int64) for k, u in enumerate(objs)])
    srt = np.argsort(o, kind="stable")
    o, w = o[srt], w[srt]
    dup = np.nonzero(o[1:] == o[:-1])[0]
    for p in np.unique(o[dup]).tolist():
        names = tuple(classes[int(x)].root.name for x in w[o == np.uint64(p)].tolist())
        multi.append((int(p), names))
    return multi


def _memcg_charges(c: KernelFacts, typed_facts: np.ndarray) -> Dict[int, int]:
    """memcg charge of typed pages (the low bits of memcg_data are flags:
    MEMCG_DATA_OBJEXTS/KMEM)."""
    if not len(typed_facts) or c.layout.off_memcg is None:
        return {}
    u, n = np.unique(typed_facts["memcg"] & ~np.uint64(7), return_counts=True)
    return {int(a): int(b) for a, b in zip(u.tolist(), n.tolist())}


def _unreachable_hint(kernel: Kernel, f, unwalked: Sequence[str] = ()) -> str:
    """What a typed page no root reaches looks like: a table whose free waits
    for RCU (ptdesc pt_rcu_head at offset 8: its func names the callback),
    one freed without a dtor, or a leak."""
    prog = program_of(kernel.target, debug_info=False)
    func = int(f["w2"])
    if prog is not None and func:
        try:
            sym = prog.symbol(func)
            return f"pt_rcu_head.func = {sym.name}: an RCU-deferred table free still pending"
        except LookupError:
            pass
    if int(f["refcount"]) == 0:
        return "refcount 0 and still typed: freed without a dtor (the type survives the free before v6.17)"
    if unwalked:
        return f"typed, referenced by no walked table; not walked: {', '.join(unwalked)} (it may be there)"
    if f["poisoned"]:
        return "allocated (refcount %d) and typed, referenced by no walked table: leaked" % int(f["refcount"])
    return "typed, referenced by no walked table (a root not walked, or a leak)"


def _writable_roots(kernel: Kernel, classes: Sequence[Classification]) -> List[str]:
    """Static root tables the kernel maps read-only (swapper_pg_dir and
    tramp_pg_dir live in .rodata since v4.19, "arm64/mm: Move swapper_pg_dir
    to rodata section", and are written through the fixmap) that init_mm maps
    writable, through their kernel-image VA or their linear-map alias."""
    init = next((cl for cl in classes if cl.kind == K_INIT and cl.root.name == "init_mm"), None)
    if init is None:
        return []
    out = []
    for name in ("swapper_pg_dir", "tramp_pg_dir"):
        va = kernel.image_symbol(name)
        if va is None:
            continue
        for alias in (va, kernel.phys_to_virt(kernel.virt_to_phys(va))):
            try:
                m = next(walk(kernel, kernel.root("init_mm", alias, alias + 1)).mappings(), None)
            except MMInspectError:
                continue
            if m is not None and not m.effective["ro"]:
                out.append(f"{name} is mapped writable at {alias:#x} ({m.attrs})")
    return out
