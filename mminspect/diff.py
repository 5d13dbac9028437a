"""
diff: what changed in the page tables between two states
--------------------------------------------------------

:func:`diff` compares two dumps of the same kernel and boot (say, before and
after a memory hot-remove), or a snapshot (``mminspect snapshot``) and a
dump:

- **table pages** of every root (init_mm, efi_mm, the trampoline, every
  task's mm), by identity ``(phys, level, VA)``: *freed* (in A, not in B),
  *allocated* (in B, not in A) and *moved* (the same page, now another
  table: freed and reused), each with whether its struct page carried the
  page-table type (a ctor ran) in the state that had it;
- **mappings** of the roots both states have (init_mm, efi_mm): ranges
  *added*, *removed* or *changed* (another PA, level or attributes),
  computed over the union of both walks' run boundaries with numpy, not
  page by page;
- **NR_PAGETABLE**: the kernel's exact counter in each state, and the change
  explained page by page: the typed tables allocated minus the typed tables
  freed, and what is left (a dtor without a ctor, a ctor without a dtor,
  tables of roots not walked);
- with a simulation (``simulate-remove --format json``), whether the tables
  it predicts freed are exactly those that were.

Two states of different kernels, regimes or boots (KASLR offsets) are
refused: their page-table pages cannot be compared.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.bits import U64
from mminspect.errors import MMInspectError
from mminspect.identify import all_roots
from mminspect.kernel import Kernel
from mminspect.memory import node_stat
from mminspect.pages import StructPages
from mminspect.sortedarrays import contains, unique
from mminspect.walk import CLS_LEAF, Mapping, Walk, walk

__all__ = ("JSON_SCHEMA", "Diff", "State", "check_same", "diff", "expect_simulation", "load_simulation",
           "state_of_kernel", "state_of_snapshot")

JSON_SCHEMA = "mminspect.diff/1"

#: One table page of a state.
TABLE_ROW = np.dtype([("phys", np.uint64), ("level", np.int8), ("va", np.uint64), ("typed", np.int8),
                      ("root", np.int32)])


@dataclass
class State:
    """What :func:`diff` compares of one side: identity, tables, walks."""

    name: str
    kernel: Dict[str, object]  #: Kernel.describe()
    tables: np.ndarray  #: TABLE_ROW, one per (phys, level, va), sorted by phys
    roots: List[str]
    walks: Dict[str, Walk] = field(default_factory=dict)  #: root name -> walk (dumps only)
    nr_pagetable: Optional[int] = None
    level_names: Dict[int, str] = field(default_factory=dict)
    source: Optional[Kernel] = None  #: the kernel of a dump's state (its struct pages)


def _identity(k: Dict[str, object]) -> Tuple:
    return (k.get("osrelease"), tuple(sorted((k.get("regime") or {}).items())))


def state_of_kernel(kernel: Kernel, name: str, roots: Optional[Sequence] = None) -> State:
    """Walk every root of ``kernel`` (default :func:`resolve_roots` ``all``).
    Whether a table page carries the page-table type is read later, by
    :func:`diff`, for the tables that changed only."""
    roots = roots if roots is not None else all_roots(kernel)
    walks = {}
    rows = []
    for i, root in enumerate(roots):
        w = walk(kernel, root)
        walks[root.name] = w
        t = np.empty(w.table_count, TABLE_ROW)
        t["phys"], t["level"], t["va"], t["root"] = w.table_phys, w.table_level, w.table_va, i
        t["typed"] = -1
        rows.append(t)
    try:
        nr = sum(x.exact for x in node_stat(kernel, "NR_PAGETABLE"))
    except MMInspectError:
        nr = None
    r = kernel.regime
    st = State(name, kernel.describe(), _sorted_unique(rows), [x.name for x in roots], walks, nr,
               {L: r.level_name(L) for L in range(r.top_level, 4)})
    st.source = kernel
    return st


def _typed(state: State, rows: np.ndarray) -> np.ndarray:
    """The page-table type of ``rows``' pages in ``state`` (1 typed, 0 not,
    -1 unknown), read from the struct pages of a dump's state."""
    kernel = getattr(state, "source", None)
    if kernel is None or not len(rows):
        return rows["typed"]
    # The struct page reader alone: the classifier's other facts (era,
    # memblock, memory map) are not needed to tell a typed page.
    pages = kernel.__dict__.get("_diff_struct_pages")
    if pages is None:
        pages = kernel.__dict__["_diff_struct_pages"] = StructPages(kernel)
    pfn = rows["phys"] >> np.uint64(kernel.regime.page_shift)
    facts = pages.facts(pfn)
    f = facts[np.searchsorted(facts["pfn"], pfn)]
    if pages.layout.scheme.table is None:
        return np.full(len(rows), -1, np.int8)
    return np.where(f["ok"], f["table"].astype(np.int8), -1).astype(np.int8)


def state_of_snapshot(snap, name: str) -> State:
    """The tables of a saved snapshot (init_mm and what it recorded)."""
    rows = np.empty(len(snap.tables), TABLE_ROW)
    names = {}
    for i, t in enumerate(snap.tables.values()):
        rows[i] = (t.phys, t.level, t.va, -1 if t.typed is None else int(t.typed), 0)
        names[t.level] = t.level_name
    return State(name, snap.kernel, _sorted_unique([rows]), ["init_mm"], {}, snap.nr_pagetable, names)


def _sorted_unique(rows: List[np.ndarray]) -> np.ndarray:
    t = np.concatenate(rows) if rows else np.empty(0, TABLE_ROW)
    order = np.lexsort((t["va"], t["level"], t["phys"]))
    t = t[order]
    if len(t) > 1:
        keep = np.ones(len(t), bool)
        keep[1:] = (t["phys"][1:] != t["phys"][:-1]) | (t["level"][1:] != t["level"][:-1]) | \
            (t["va"][1:] != t["va"][:-1])
        t = t[keep]
    return t


@dataclass
class Diff:
    """The result of :func:`diff` (see the module docstring)."""

    a: State
    b: State
    freed: np.ndarray  #: TABLE_ROW of A
    allocated: np.ndarray  #: TABLE_ROW of B
    moved: List[Tuple[np.void, np.void]]  #: (row in A, row in B): one page, another table
    mappings: Dict[str, List[Dict[str, object]]]  #: root -> added/removed/changed ranges
    unmapped_roots: List[str]  #: roots one side has and the other has not (mappings not compared)
    expect: Optional[Dict[str, object]] = None
    #: a snapshot was one side: only the tables of the roots both have are compared
    snapshot: bool = False

    @property
    def nr_pagetable_delta(self) -> Optional[int]:
        if self.a.nr_pagetable is None or self.b.nr_pagetable is None:
            return None
        return self.b.nr_pagetable - self.a.nr_pagetable

    def typed_delta(self) -> int:
        """Typed tables allocated minus typed tables freed (a moved page counts
        on both sides)."""
        freed = int(np.count_nonzero(self.freed["typed"] == 1)) + sum(int(a["typed"] == 1) for a, _ in self.moved)
        alloc = int(np.count_nonzero(self.allocated["typed"] == 1)) + sum(int(b["typed"] == 1)
                                                                          for _, b in self.moved)
        return alloc - freed

    def explanation(self) -> List[str]:
        d = self.nr_pagetable_delta
        t = self.typed_delta()
        nf = int(np.count_nonzero(self.freed["typed"] == 1))
        na = int(np.count_nonzero(self.allocated["typed"] == 1))
        out = [f"{len(self.freed)} table page(s) freed ({nf} typed), {len(self.allocated)} allocated ({na} typed), "
               f"{len(self.moved)} reused as another table"]
        if d is None:
            out.append("NR_PAGETABLE not known in both states: the typed-page change is "
                       f"{t:+d}")
            return out
        out.append(f"NR_PAGETABLE {self.a.nr_pagetable} -> {self.b.nr_pagetable} ({d:+d}); typed tables "
                   f"allocated - freed: {t:+d}")
        if d == t:
            out.append("the counter moved exactly as the typed tables did: every freed typed table met its dtor, "
                       "every new one its ctor")
        else:
            out.append(f"{d - t:+d} left unexplained by typed pages: "
                       + ("tables freed without a dtor (the type went with the page) or typed pages no walked "
                          "root reaches" if d > t else
                          "dtors on pages never ctor'd (the counter dropped, no typed page left), or typed "
                          "pages freed without the counter"))
        return out


def check_same(a, name_a: str, b, name_b: str) -> None:
    """Refuse two states (Kernels, Snapshots or States) of different
    kernels, regimes or boots, in one line."""

    def desc(x):
        if isinstance(x, Kernel):
            return x.describe()
        return x.kernel

    _check_same(State(name_a, desc(a), np.empty(0, TABLE_ROW), []), State(name_b, desc(b), np.empty(0, TABLE_ROW), []))


def _check_same(a: State, b: State) -> None:
    ia, ib = _identity(a.kernel), _identity(b.kernel)
    if ia[0] != ib[0]:
        raise MMInspectError(f"{a.name} and {b.name} are different kernels ({ia[0]} vs {ib[0]}): "
                             "their page tables cannot be compared")
    if ia[1] != ib[1]:
        raise MMInspectError(f"{a.name} and {b.name} run different translation regimes: not comparable")
    for key in ("kimage_voffset", "phys_offset"):
        if a.kernel.get(key) != b.kernel.get(key):
            raise MMInspectError(f"{a.name} and {b.name} are different boots ({key} differs: KASLR): "
                                 "their page-table pages cannot be compared")


def _ranges(wa: Walk, wb: Walk) -> List[Dict[str, object]]:
    """Leaf ranges added, removed or changed between two walks of one root,
    over the union of both walks' run boundaries."""
    ra = wa.runs[wa.runs["cls"] == CLS_LEAF]
    rb = wb.runs[wb.runs["cls"] == CLS_LEAF]
    def ends(runs):
        e = runs["va"] + runs["size"]
        # a run to the top of the address space ends at 2**64, which wraps to 0
        return np.where(e == 0, np.uint64(U64), e)

    cuts = unique(np.concatenate((ra["va"], ends(ra), rb["va"], ends(rb))))
    if len(cuts) < 2:
        return []
    lo, hi = cuts[:-1], cuts[1:]

    def at(runs):
        k = np.searchsorted(runs["va"], lo, side="right") - 1
        kk = np.maximum(k, 0)
        inside = (k >= 0) & (lo < runs["va"][kk] + runs["size"][kk]) if len(runs) else np.zeros(len(lo), bool)
        off = lo - runs["va"][kk] if len(runs) else np.zeros(len(lo), np.uint64)
        pa = np.where(runs["rep"][kk] != 0, runs["pa"][kk], runs["pa"][kk] + off) if len(runs) else off
        return inside, kk, pa

    ia, ka, pa_a = at(ra)
    ib, kb, pa_b = at(rb)
    same = ia & ib
    changed = same & ((pa_a != pa_b) | (ra["attr"][ka] != rb["attr"][kb]) | (ra["level"][ka] != rb["level"][kb])
                      | (ra["inherit"][ka] != rb["inherit"][kb])) if len(ra) and len(rb) else same & False
    status = np.zeros(len(lo), np.int8)
    status[ia & ~ib] = 1  # removed
    status[ib & ~ia] = 2  # added
    status[changed] = 3
    sel = np.nonzero(status)[0]
    if not len(sel):
        return []
    # Join neighbours of one status whose PAs continue on both sides.
    size = hi - lo
    out: List[Dict[str, object]] = []
    names = {1: "removed", 2: "added", 3: "changed"}
    r = wa.regime
    cur = None
    for i in sel.tolist():
        st = int(status[i])
        pa_ai = int(pa_a[i]) if ia[i] else None
        pa_bi = int(pa_b[i]) if ib[i] else None
        if cur is not None and cur["_st"] == st and cur["end"] == int(lo[i]) and \
                cur["_na"] == pa_ai and cur["_nb"] == pa_bi and cur["_ka"] == (int(ka[i]) if ia[i] else None) \
                and cur["_kb"] == (int(kb[i]) if ib[i] else None):
            cur["end"] = int(hi[i])
            cur["_na"] = None if pa_ai is None else pa_ai + int(size[i])
            cur["_nb"] = None if pa_bi is None else pa_bi + int(size[i])
            continue
        def desc(runs, k):
            L = int(runs["level"][k])
            m = Mapping(0, 0, 0, L, r.level_name(L), int(runs["attr"][k]), int(runs["inherit"][k]))
            return f"{m.level_name} {m.attrs}"

        cur = {"kind": names[st], "va": int(lo[i]), "end": int(hi[i]), "pa_a": pa_ai, "pa_b": pa_bi,
               "a": desc(ra, int(ka[i])) if ia[i] else None, "b": desc(rb, int(kb[i])) if ib[i] else None,
               "_st": st, "_na": None if pa_ai is None else pa_ai + int(size[i]),
               "_nb": None if pa_bi is None else pa_bi + int(size[i]),
               "_ka": int(ka[i]) if ia[i] else None, "_kb": int(kb[i]) if ib[i] else None}
        out.append(cur)
    for d in out:
        for key in ("_st", "_na", "_nb", "_ka", "_kb"):
            del d[key]
        d["size"] = d["end"] - d["va"]
    return out


def diff(a: State, b: State) -> Diff:
    """
    Compare two states of one kernel (see the module docstring).

    >>> d = diff(state_of_kernel(ka, "hotadd"), state_of_kernel(kb, "hotremove"))
    >>> len(d.freed), d.nr_pagetable_delta
    (513, 0)

    :raises MMInspectError: for states of different kernels, regimes or boots
    """
    _check_same(a, b)
    ta, tb = a.tables, b.tables
    if a.source is None or b.source is None:
        # A snapshot holds the tables of its roots (init_mm) only: compare those.
        common = set(a.roots) & set(b.roots)
        ta = ta[np.isin(ta["root"], [i for i, n in enumerate(a.roots) if n in common])]
        tb = tb[np.isin(tb["root"], [i for i, n in enumerate(b.roots) if n in common])]
    pa_a, pa_b = ta["phys"], tb["phys"]
    # tables are sorted by phys already (_sorted_unique)
    in_b = contains(pa_b, pa_a)
    in_a = contains(pa_a, pa_b)
    # Same page in both: the same table (same level and VA), or reused. Rows
    # are sorted by (phys, level, VA): align each page's first row in A with
    # its first row in B and compare, as arrays.
    moved = []
    ia = np.nonzero(in_b)[0]
    if len(ia):
        jb = np.searchsorted(pa_b, pa_a[ia], side="left")
        other = (ta["level"][ia] != tb["level"][jb]) | (ta["va"][ia] != tb["va"][jb])
        for i, j in zip(ia[other].tolist(), jb[other].tolist()):
            moved.append((ta[i], tb[j]))
    mappings: Dict[str, List[Dict[str, object]]] = {}
    common = [n for n in a.walks if n in b.walks and (n in ("init_mm", "efi_mm", "tramp_pg_dir"))]
    for name in common:
        mappings[name] = _ranges(a.walks[name], b.walks[name])
    unmapped = sorted((set(a.roots) ^ set(b.roots)))
    freed, allocated = ta[~in_b], tb[~in_a]
    freed["typed"] = _typed(a, freed)
    allocated["typed"] = _typed(b, allocated)
    if moved:
        ma = np.array([x for x, _ in moved], TABLE_ROW)
        mb = np.array([y for _, y in moved], TABLE_ROW)
        ma["typed"], mb["typed"] = _typed(a, ma), _typed(b, mb)
        moved = list(zip(ma, mb))
    return Diff(a, b, freed, allocated, moved, mappings, unmapped,
                snapshot=a.source is None or b.source is None)


def load_simulation(path: str) -> Dict[str, object]:
    """A ``simulate-remove --format json`` output, checked to be one.

    :raises MMInspectError: when it is not"""
    import json

    try:
        with open(path) as f:
            sim = json.load(f)
    except (OSError, ValueError) as e:
        raise MMInspectError(f"{path}: not a simulate-remove JSON file ({e})") from None
    if not isinstance(sim, dict) or sim.get("schema") != "mminspect.simulate/1":
        raise MMInspectError(f"{path}: schema {sim.get('schema') if isinstance(sim, dict) else None!r}, "
                             "expected mminspect.simulate/1 (simulate-remove --format json)")
    if not isinstance(sim.get("freed"), list):
        raise MMInspectError(f"{path}: no list of freed tables")
    sim["_path"] = path
    return sim


def expect_simulation(d: Diff, sim) -> Dict[str, object]:
    """Compare the tables a simulation (:func:`load_simulation`, or its
    path) says would be freed with the tables freed between the two states."""
    if isinstance(sim, str):
        sim = load_simulation(sim)
    path = sim.get("_path", "simulation")
    if sim.get("kernel") != d.a.kernel.get("osrelease"):
        raise MMInspectError(f"{path}: a simulation of {sim.get('kernel')}, not of {d.a.kernel.get('osrelease')}")
    predicted = {int(t["phys"]) for t in sim.get("freed", [])}
    real = {int(p) for p in d.freed["phys"].tolist()} | {int(x["phys"]) for x, _ in d.moved}
    # Only tables of the roots the simulation replays (init_mm).
    init = d.a.roots.index("init_mm") if "init_mm" in d.a.roots else 0
    real_init = {int(x["phys"]) for x in d.freed if int(x["root"]) == init} | \
        {int(x["phys"]) for x, _ in d.moved if int(x["root"]) == init}
    res = {
        "simulation": path,
        "proposal": sim.get("proposal"),
        "simulated": sim.get("simulated"),
        "predicted_freed": len(predicted),
        "freed": len(real_init),
        "matches": predicted == real_init,
        "predicted_not_freed": sorted(predicted - real),
        "freed_not_predicted": sorted(real_init - predicted),
        "delta_nr_pagetable": {"predicted": sim.get("delta_nr_pagetable"), "real": d.nr_pagetable_delta},
    }
    d.expect = res
    return res
