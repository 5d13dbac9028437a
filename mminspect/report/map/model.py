"""
The map's data (schema ``mminspect.map/1``)
-------------------------------------------

:func:`build_map` gathers what ``mminspect map`` draws into one JSON-able
dict, the same one ``--format json`` prints and the HTML page embeds:

- ``memory``: memory blocks (sysfs ``memoryN``: state, zone, node, boot or
  hot-added by ``SECTION_IS_EARLY``, the altmap reserve) and present
  sections, each as runs of consecutive alike ones; physical ranges in no
  block are holes;
- ``classes`` and ``tables``: every table page once (a page reached from two
  roots is one page with both roots), as runs of physically consecutive pages
  that share a class; a class is (origin, level, ptlock, ctor'd, roots,
  region, evidence) with the evidence text ``mminspect classify`` prints, so
  the 525,337 tables of the bench's 1 TiB kernel are 2,060 runs of 15 classes;
- ``roots``: per root its table count and a VA overview: the regions of the
  kernel's VA layout (linear map, vmemmap, vmalloc, modules, fixmap, EFI
  runtime ...) with the bytes mapped at each granularity and what they map
  (boot RAM, hot-added RAM, not RAM);
- ``proposal``: a simulated hot-remove (:mod:`mminspect.hotremove`), as the
  simulation's :class:`~mminspect.hotremove.Result` carries it: refusals
  with the kernel's message, freed tables (runs) with the freeing routine,
  kept tables with the reason, the NR_PAGETABLE change and the findings.

Addresses are integers (JSON numbers: physical addresses stay below 2**53;
VAs, which do not, are hexadecimal strings).
"""

from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.arch.arm64 import PTE_CONT
from mminspect.classify import (
    Classification,
    K_EFI,
    K_USER,
    ORIGINS,
    PTLOCKS,
    classifier_for,
    classify_walk,
    root_kind,
)
from mminspect.hotremove import capture_snapshot, select_policy, simulate
from mminspect.kernel import Kernel
from mminspect.memory import MAPS_NAMES, MemoryMap
from mminspect.walk import CLS_LEAF, Walk, walk

__all__ = ("MAP_SCHEMA", "build_map", "map_dict", "va_overview")

MAP_SCHEMA = "mminspect.map/1"

#: VA regions of the TTBR1 half (:meth:`Kernel.regions`), most specific
#: first: a VA belongs to the first region that holds it (the kernel image
#: sits inside the vmalloc range on arm64; see arch/arm64/include/asm/memory.h).
_REGION_ORDER = ("kimage", "fixmap", "PCI I/O", "KASAN shadow", "vmemmap", "modules", "linear map", "vmalloc")


def _va(n: int) -> str:
    return f"{n:#018x}"


def _regions_of(kernel: Kernel, kind: str) -> List[Tuple[str, int, int]]:
    """Non-overlapping ``(name, start, end)`` VA regions of a root, in VA
    order: the user half for efi_mm and tasks, else the TTBR1 regions."""
    if kind == K_EFI:
        return [("EFI runtime", 0, 1 << kernel.regime.vabits_actual)]
    if kind == K_USER:
        return [("user", 0, 1 << kernel.regime.vabits_actual)]
    spans = {reg.name: (reg.start, reg.end) for reg in kernel.regions() if reg.end > reg.start}
    cuts = sorted({x for lo, hi in spans.values() for x in (lo, hi)})
    out: List[Tuple[str, int, int]] = []
    for lo, hi in zip(cuts, cuts[1:]):
        name = next((n for n in _REGION_ORDER if n in spans and spans[n][0] <= lo and hi <= spans[n][1]), None)
        if name is None:
            continue
        if out and out[-1][0] == name and out[-1][2] == lo:
            out[-1] = (name, out[-1][1], hi)
        else:
            out.append((name, lo, hi))
    return out


def va_overview(kernel: Kernel, w: Walk, memory: Optional[MemoryMap]) -> List[Dict[str, Any]]:
    """Per VA region of the walked root: bytes mapped by granularity (level
    and kind: page, contiguous, block) and by target (boot RAM, hot-added
    RAM, not RAM), from the walk's coalesced leaf runs."""
    r = kernel.regime
    runs = w.runs[w.runs["cls"] == CLS_LEAF]
    va = runs["va"].astype(np.uint64)
    end = va + runs["size"].astype(np.uint64)  # wraps to 0 at 2**64: handled by the clip below
    kind = np.where(runs["attr"] & np.uint64(2) == 0, 2, np.where(runs["attr"] & np.uint64(PTE_CONT) != 0, 1, 0))
    kind = np.where(runs["rep"] != 0, 3, kind)
    kind_names = ("page", "contiguous", "block", "repeated")
    out = []
    for name, lo, hi in _regions_of(kernel, root_kind(w.root)):
        lo64 = np.uint64(lo)
        hi64 = np.uint64((hi - 1) & ((1 << 64) - 1))  # inclusive, so 2**64 fits
        last = end - np.uint64(1)
        m = (va <= hi64) & (last >= lo64)
        a = np.maximum(va[m], lo64)
        b = np.minimum(last[m], hi64)
        size = (b - a + np.uint64(1)).astype(np.uint64)
        pa = runs["pa"][m] + (a - va[m])
        rep = runs["rep"][m] != 0
        lvl = runs["level"][m].astype(np.int64)
        k = kind[m]
        gran = []
        for key in np.unique(lvl * 8 + k).tolist():
            sel = (lvl * 8 + k) == key
            level, kk = divmod(key, 8)
            gran.append({"level": r.level_name(level), "kind": kind_names[kk], "size": 1 << r.shift(level),
                         "bytes": int(size[sel].sum()), "ranges": int(sel.sum())})
        targets: Counter = Counter()
        if memory is not None and len(pa):
            # a repeated run maps one page again and again: count that page once
            tgt_hi = np.where(rep, pa + np.uint64(r.page_size), pa + size)
            kinds = memory.kinds(pa, tgt_hi)
            for kv in np.unique(kinds).tolist():
                targets[MAPS_NAMES[kv] if kv else "not RAM"] += int(size[kinds == kv].sum())
        out.append({"name": name, "start": _va(lo), "end": _va(hi & ((1 << 64) - 1)), "size": hi - lo,
                    "mapped": int(size.sum()), "ranges": int(m.sum()), "granularity": gran,
                    "targets": dict(targets)})
    return out


def _block_runs(memory: MemoryMap) -> List[Dict[str, Any]]:
    """Memory blocks as runs of consecutive blocks alike in state, zone,
    node and boot/hot-added (8,192 blocks of a 1 TiB machine are a handful
    of runs); a block with an altmap is a run of its own."""
    out: List[Dict[str, Any]] = []
    for b in memory.blocks:
        d = b.as_dict()
        last = out[-1] if out else None
        if (last is not None and not b.altmap_pages and not last["altmap_pages"]
                and last["id"] + last["count"] == b.id and last["start"] + last["count"] * last["size"] == b.start
                and all(last[k] == d[k] for k in ("size", "state", "zone", "nid", "early"))):
            last["count"] += 1
            continue
        d["count"] = 1
        out.append(d)
    return out


def _section_runs(memory: MemoryMap) -> List[Dict[str, Any]]:
    """Present sections as runs of consecutive sections alike in size,
    SECTION_IS_EARLY and online state."""
    out: List[Dict[str, Any]] = []
    for sec in memory.sections:
        d = {"start": sec.start, "size": sec.size, "count": 1, "early": bool(sec.early), "online": bool(sec.online)}
        last = out[-1] if out else None
        if (last is not None and last["start"] + last["count"] * last["size"] == sec.start
                and all(last[k] == d[k] for k in ("size", "early", "online"))):
            last["count"] += 1
            continue
        out.append(d)
    return out


def _memory_dict(memory: Optional[MemoryMap], page_size: int) -> Dict[str, Any]:
    if memory is None:
        return {"page_size": page_size, "block_size": 0, "section_size": 0, "blocks": [], "sections": [],
                "evidence": {}}
    return {
        "page_size": page_size,
        "block_size": memory.block_size,
        "section_size": memory.section_size,
        "blocks": _block_runs(memory),
        "sections": _section_runs(memory),
        "evidence": dict(memory.evidence),
    }


def _runs(phys: np.ndarray, cls: np.ndarray, step: int) -> List[List[int]]:
    """``[start - previous start, count, class]`` runs over sorted ``phys``:
    pages ``step`` apart with one class."""
    if not len(phys):
        return []
    brk = np.ones(len(phys), dtype=bool)
    brk[1:] = (np.diff(phys.astype(np.int64)) != step) | (cls[1:] != cls[:-1])
    starts = np.nonzero(brk)[0]
    counts = np.diff(np.append(starts, len(phys)))
    first = phys[starts].astype(np.int64)
    delta = np.diff(first, prepend=0)
    return np.stack((delta, counts, cls[starts].astype(np.int64)), axis=1).tolist()


def _root_classes(cl: Classification) -> Tuple[np.ndarray, List[Tuple]]:
    """Per table of one root an index into the returned list of
    (origin, level, ptlock, ctor, region, evidence, mismatch) tuples; one
    record is built per string group (:meth:`Classification.string_groups`),
    not one per table."""
    groups = cl.string_groups()
    keys: Dict[Tuple, int] = {}
    out = np.empty(len(cl), dtype=np.int64)

    def key_of(i: int) -> int:
        t = cl.record(i)
        key = (t.origin, t.level_name, t.ptlock, t.typed, t.region, "; ".join((t.allocator,) + t.evidence),
               t.mismatch)
        return keys.setdefault(key, len(keys))

    own = np.nonzero(groups < 0)[0]
    for i in own.tolist():
        out[i] = key_of(i)
    shared = np.nonzero(groups >= 0)[0]
    if len(shared):
        g, first, inverse = np.unique(groups[shared], return_index=True, return_inverse=True)
        per_group = np.array([key_of(int(shared[j])) for j in first.tolist()], dtype=np.int64)
        out[shared] = per_group[inverse]
    return out, list(keys)


def _tables(classes: Sequence[Classification], page_size: int):
    """Every table page once, with its class (a page reached from several
    roots is one page with all of them); returns (classes, runs, counts by
    origin)."""
    phys_parts, base_parts, root_parts = [], [], []
    bases: Dict[Tuple, int] = {}
    for ri, cl in enumerate(classes):
        ids, keys = _root_classes(cl)
        remap = np.array([bases.setdefault(k, len(bases)) for k in keys], dtype=np.int64)
        phys_parts.append(cl.phys.astype(np.uint64))
        base_parts.append(remap[ids] if len(ids) else ids)
        root_parts.append(np.full(len(cl), ri, dtype=np.int64))
    base_keys = list(bases)
    phys = np.concatenate(phys_parts) if phys_parts else np.empty(0, np.uint64)
    base = np.concatenate(base_parts) if base_parts else np.empty(0, np.int64)
    root = np.concatenate(root_parts) if root_parts else np.empty(0, np.int64)
    order = np.lexsort((root, phys))
    phys, base, root = phys[order], base[order], root[order]
    first = np.ones(len(phys), dtype=bool)
    first[1:] = phys[1:] != phys[:-1]
    starts = np.nonzero(first)[0]
    counts = np.diff(np.append(starts, len(phys)))
    # class = (base class of the first root that reached it, the roots)
    combos: Dict[Tuple[int, Tuple[int, ...]], int] = {}
    cls = np.empty(len(starts), dtype=np.int64)
    single = counts == 1
    pair = base[starts[single]] * (len(classes) + 1) + root[starts[single]]
    u, inv = np.unique(pair, return_inverse=True)
    ids = np.array([combos.setdefault((b, (r,)), len(combos)) for b, r in
                    (divmod(int(x), len(classes) + 1) for x in u.tolist())], dtype=np.int64)
    cls[single] = ids[inv] if len(u) else cls[single]
    for j in np.nonzero(~single)[0].tolist():
        s0, n = int(starts[j]), int(counts[j])
        key = (int(base[s0]), tuple(sorted(set(root[s0:s0 + n].tolist()))))
        cls[j] = combos.setdefault(key, len(combos))
    out_classes = []
    for b, roots in combos:
        o, lv, p, typed, reg, ev, mm = base_keys[b]
        out_classes.append({"origin": o, "level": lv, "ptlock": p, "ctor": typed, "region": reg,
                            "roots": list(roots), "evidence": ev, "mismatch": bool(mm)})
    n = np.bincount(cls, minlength=len(out_classes)) if len(cls) else np.zeros(0, np.int64)
    by_origin: Counter = Counter()
    for c, k in zip(out_classes, n.tolist()):
        by_origin[c["origin"]] += k
    return out_classes, _runs(phys[starts], cls, page_size), dict(by_origin)


def _proposal_dict(result, snapshot, page_size: int) -> Dict[str, Any]:
    """What the simulation's Result carries, for the overlay."""
    routines: List[str] = []
    rix: Dict[str, int] = {}
    freed = sorted(result.freed, key=lambda e: e.phys)
    fphys = np.array([e.phys for e in freed], dtype=np.uint64)
    fr = np.array([rix.setdefault(e.routine, len(rix)) for e in freed], dtype=np.int64)
    routines = list(rix)
    levels = Counter()
    for e in freed:
        t = snapshot.tables.get(e.phys)
        levels[t.level_name if t else "?"] += 1

    bsize = snapshot.kernel.get("block_size") or 0

    def where(ref) -> Dict[str, Any]:
        # A refusal that names its memory (the range the kernel checked, or
        # its block) is drawn there; the others cover the whole proposal.
        d = {"rule": ref.rule, "message": ref.message, "fatal": bool(ref.fatal),
             "block": getattr(ref, "block", None), "evidence": getattr(ref, "evidence", "") or ""}
        rng = getattr(ref, "range", None)
        if rng is None and d["block"] is not None and bsize:
            rng = (d["block"] * bsize, (d["block"] + 1) * bsize)
        d["start"], d["end"] = (int(rng[0]), int(rng[1])) if rng else (result.proposal.start, result.proposal.end)
        return d

    def kept(e) -> Dict[str, Any]:
        t = snapshot.tables.get(e.phys)
        return {"phys": e.phys, "level": t.level_name if t else None, "va": _va(e.va), "routine": e.routine,
                "reason": e.detail, "origin": t.origin if t else None}

    return {
        "start": result.proposal.start,
        "end": result.proposal.end,
        "text": str(result.proposal),
        "policy": result.policy,
        "simulated": bool(result.simulated),
        "refusals": [where(r) for r in result.refusals],
        "freed": {"count": len(freed), "levels": dict(levels), "routines": routines,
                  "runs": _runs(fphys, fr, page_size)},
        "kept": [kept(e) for e in result.kept],
        "data_freed": result.data_freed,
        "delta_nr_pagetable": result.delta_nr_pagetable,
        "delta_typed_pages": result.delta_typed_pages,
        "drift": result.drift,
        "findings": [{"severity": f.severity, "rule": f.rule, "phys": f.phys, "level": f.level,
                      "origin": f.origin, "ptlock": f.ptlock, "routine": f.routine, "sentence": f.sentence,
                      "messages": [m for m in f.messages if m]} for f in result.findings],
        "warnings": [{"routine": w.routine, "phys": w.phys, "va": _va(w.va), "detail": w.detail}
                     for w in result.warnings],
        "blocks": _outcome_runs(getattr(result, "blocks", ())),
        "kernel_log": list(getattr(result, "kernel_log", ())),
        "unchecked": _unchecked(getattr(result, "unchecked", ())),
        "memmap": _memmap(getattr(result, "memmap", ())),
        "data_to_altmap": getattr(result, "data_to_altmap", 0),
    }


def _outcome_runs(blocks) -> List[Dict[str, Any]]:
    """Per-block outcomes of the offline step, as runs of consecutive blocks
    with one outcome (``first``, ``last`` block ids, ``start``, ``end``)."""
    out: List[Dict[str, Any]] = []
    for b in blocks:
        if out and out[-1]["last"] + 1 == b.id and out[-1]["end"] == b.start and out[-1]["outcome"] == b.outcome:
            out[-1].update(last=b.id, end=b.end)
        else:
            out.append({"first": b.id, "last": b.id, "start": b.start, "end": b.end, "outcome": b.outcome})
    return out


def _memmap(homes) -> List[Dict[str, Any]]:
    """Where the removed sections' struct pages go, one entry per fate with
    the number of sections and where the first of them lives."""
    out: Dict[str, Dict[str, Any]] = {}
    for m in homes:
        d = out.setdefault(m.goes, {"goes": m.goes, "sections": 0, "first": m.lives})
        d["sections"] += 1
    return list(out.values())


def _unchecked(items) -> List[Dict[str, Any]]:
    """Checks the dump cannot decide, one entry per (rule, why) with the
    blocks it concerns (a 64 GiB removal repeats one sentence 512 times)."""
    out: Dict[Tuple[str, str], List[int]] = {}
    for u in items:
        out.setdefault((u.rule, u.why), [])
        if u.block is not None:
            out[(u.rule, u.why)].append(u.block)
    return [{"rule": r, "why": w, "blocks": b} for (r, w), b in out.items()]


def map_dict(kernel: Kernel, walks: Sequence[Walk], classes: Sequence[Classification],
             simulation=None) -> Dict[str, Any]:
    """The ``mminspect.map/1`` dict of walked and classified roots, with a
    simulation (``(Result, Snapshot)``) or None."""
    r = kernel.regime
    memory = classifier_for(kernel).memory
    out_classes, runs, by_origin = _tables(classes, r.page_size)
    findings = [f.as_dict() for cl in classes for f in cl.findings]
    roots = []
    for w, cl in zip(walks, classes):
        roots.append({"name": cl.root.name, "phys": cl.root.phys, "kind": root_kind(cl.root),
                      "tables": len(cl), "regions": va_overview(kernel, w, memory),
                      "problems": [str(p) for p in w.problems]})
    d = {
        "schema": MAP_SCHEMA,
        "kernel": {**kernel.describe(), "regime_text": r.describe()},
        "origins": list(ORIGINS),
        "ptlocks": list(PTLOCKS),
        "memory": _memory_dict(memory, r.page_size),
        "roots": roots,
        "classes": out_classes,
        "tables": {"count": int(sum(by_origin.values())), "by_origin": {o: by_origin.get(o, 0) for o in ORIGINS},
                   "runs": runs},
        "findings": findings,
        "proposal": _proposal_dict(*simulation, r.page_size) if simulation is not None else None,
    }
    return d


def build_map(kernel: Kernel, roots, proposal=None, policy=None, progress=None) -> Dict[str, Any]:
    """Walk and classify ``roots`` (:class:`~mminspect.kernel.Root`), simulate
    ``proposal`` (a :class:`~mminspect.hotremove.Proposal`) with ``policy``
    (a function of the snapshot's era; default: the era's own) when given, and
    return the ``mminspect.map/1`` dict. init_mm is walked once for both
    the map and the simulation's snapshot."""
    c = classifier_for(kernel)
    walks, classes = [], []
    init_walk = None
    for root in roots:
        whole_init = root.name == "init_mm" and root.start == root.va_base and root.end == 0
        w = walk(kernel, root, progress, keep_entries=proposal is not None and whole_init)
        if whole_init:
            init_walk = w
        walks.append(w)
        classes.append(classify_walk(kernel, w, c))
    simulation = None
    if proposal is not None:
        snap = capture_snapshot(kernel, init_walk)
        pol = policy(snap.era) if policy is not None else select_policy(snap.era)
        simulation = (simulate(snap, proposal, pol), snap)
    return map_dict(kernel, walks, classes, simulation)
