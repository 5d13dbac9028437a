"""
Simulation reports
------------------

Text and JSON (schema ``mminspect.simulate/1``) for a hot-remove
:class:`~mminspect.hotremove.simulate.Result`, shared by every front end.
"""

import json
from collections import Counter
from typing import IO, Any, Dict

from mminspect.hotremove.simulate import SEVERITIES, Result

__all__ = ("JSON_SCHEMA", "simulate_dict", "simulate_json", "simulate_text")

JSON_SCHEMA = "mminspect.simulate/1"


def _groups(result: Result, snapshot) -> Counter:
    c: Counter = Counter()
    for ev in result.freed:
        t = snapshot.tables.get(ev.phys)
        c[(ev.routine, t.level_name if t else "?", t.region if t else "?",
           t.origin if t else "?", "typed" if t and t.typed else ("untyped" if t and t.typed is False else "?"))] += 1
    return c


def simulate_text(result: Result, snapshot, out: IO[str], tables: bool = False,
                  fail_on: str = "error") -> None:
    """Print a simulation: verdict first, then what was freed and why."""
    k = snapshot.kernel
    era = snapshot.era
    out.write(f"kernel        {k.get('osrelease')}\n")
    out.write(f"policy        {result.policy}\n")
    out.write(f"proposal      {result.proposal}\n")
    for r in result.refusals:
        tag = "refused" if r.fatal else "note"
        out.write(f"{tag:<14}{r.message}\n")
    if not result.simulated:
        out.write("result        not simulated: the kernel refuses this removal (--force simulates anyway)\n")
        return
    levels = Counter(snapshot.tables[e.phys].level_name for e in result.freed if e.phys in snapshot.tables)
    lv = ", ".join(f"{n} {name}" for name, n in sorted(levels.items()))
    out.write(f"freed         {len(result.freed)} table pages ({lv or 'none'}), "
              f"{result.data_freed >> 20} MiB of mapped memmap\n")
    empty_kept = [e for e in result.kept if "floor" in e.detail]
    out.write(f"kept          {len(result.kept)} touched tables stay ({len(empty_kept)} empty, outside [floor, ceiling))\n")
    out.write(f"NR_PAGETABLE  {result.delta_nr_pagetable:+d} counter, {result.delta_typed_pages:+d} typed pages, "
              f"drift {result.drift:+d}\n")
    worst = result.worst()
    above = [f for f in result.findings if SEVERITIES.index(f.severity) >= SEVERITIES.index(fail_on)]
    verdict = ("balanced: every freed table meets the dtor its ctor calls for"
               if not result.findings else f"{len(result.findings)} finding(s), worst {worst}")
    out.write(f"verdict       {verdict}\n")
    out.write("\nera facts (from the dump):\n")
    for name, why in era.evidence.items():
        out.write(f"  {name:<22}{why}\n")
    out.write(f"\n{'ROUTINE':<24}  {'LEVEL':<5}  {'REGION':<10}  {'ORIGIN':<22}  {'CTOR':<7}  COUNT\n")
    for (routine, level, region, origin, typed), n in sorted(_groups(result, snapshot).items()):
        out.write(f"{routine:<24}  {level:<5}  {region:<10}  {origin:<22}  {typed:<7}  {n}\n")
    if result.findings:
        out.write(f"\n{'SEVERITY':<8}  {'RULE':<28}  {'PHYS':<12}  {'LEVEL':<5}  {'ORIGIN':<20}  {'PTLOCK':<14}\n")
        shown = 0
        for f in sorted(result.findings, key=lambda f: -SEVERITIES.index(f.severity)):
            if not tables and shown >= 20:
                out.write(f"  ... {len(result.findings) - shown} more (--tables lists all)\n")
                break
            out.write(f"{f.severity:<8}  {f.rule:<28}  {f.phys:012x}  {f.level:<5}  {f.origin:<20}  {f.ptlock:<14}\n")
            out.write(f"          {f.sentence}\n")
            shown += 1
        msgs = Counter(m for f in result.findings for m in f.messages if m)
        if msgs:
            out.write("\nthe kernel would print:\n")
            for m, n in msgs.most_common():
                out.write(f"  {n:>5} x {m}\n")
    if result.warnings:
        out.write(f"\n{len(result.warnings)} WARN_ON(s) the replayed code would hit:\n")
        for w in result.warnings[:20]:
            out.write(f"  {w.routine}: {w.detail} at {w.va:#x} (table {w.phys:#x})\n")
    if tables:
        out.write(f"\n{'PHYS':<12}  {'LEVEL':<5}  {'VA':<16}  ROUTINE\n")
        for e in result.freed:
            t = snapshot.tables.get(e.phys)
            out.write(f"{e.phys:012x}  {t.level_name if t else '?':<5}  {e.va:016x}  {e.routine}\n")
        for e in result.kept:
            out.write(f"{e.phys:012x}  kept   {e.va:016x}  {e.detail}\n")
    out.write(f"\n{len(above)} finding(s) at or above '{fail_on}'\n")


def simulate_dict(result: Result, snapshot) -> Dict[str, Any]:
    """The JSON form (schema ``mminspect.simulate/1``)."""
    def table(e):
        t = snapshot.tables.get(e.phys)
        return {"phys": e.phys, "level": t.level_name if t else None, "va": e.va, "routine": e.routine,
                "region": t.region if t else None, "origin": t.origin if t else None,
                "typed": t.typed if t else None, "reserved": t.reserved if t else None,
                "parent": list(e.parent) if e.parent else None, "detail": e.detail or None}

    return {
        "schema": JSON_SCHEMA,
        "kernel": snapshot.kernel.get("osrelease"),
        "policy": result.policy,
        "era": {**{k: v for k, v in snapshot.era.__dict__.items() if k != "evidence"},
                "evidence": snapshot.era.evidence},
        "proposal": {"start": result.proposal.start, "end": result.proposal.end},
        "refusals": [{"rule": r.rule, "message": r.message, "fatal": r.fatal} for r in result.refusals],
        "simulated": result.simulated,
        "freed": [table(e) for e in result.freed],
        "kept": [table(e) for e in result.kept],
        "warnings": [{"routine": w.routine, "va": w.va, "phys": w.phys, "detail": w.detail}
                     for w in result.warnings],
        "data_freed": result.data_freed,
        "delta_nr_pagetable": result.delta_nr_pagetable,
        "delta_typed_pages": result.delta_typed_pages,
        "drift": result.drift,
        "findings": [f.__dict__ | {"messages": list(f.messages)} for f in result.findings],
    }


def simulate_json(result: Result, snapshot, out: IO[str]) -> None:
    json.dump(simulate_dict(result, snapshot), out, indent=1)
    out.write("\n")
