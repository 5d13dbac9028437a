"""
Simulation reports
------------------

Text and JSON (schema ``mminspect.simulate/1``) for a hot-remove
:class:`~mminspect.hotremove.simulate.Result`, shared by every front end.
"""

import json
from collections import Counter
from typing import IO, Any, Dict

from mminspect.findings import SEVERITIES
from mminspect.hotremove.simulate import Result

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
    fatal = [r for r in result.refusals if r.fatal]
    for r in result.refusals:
        if r.fatal:
            where = f"memory{r.block} " if r.block is not None else ""
            rng = f"[{r.range[0]:#x}-{r.range[1] - 1:#x}] " if r.range else ""
            said = r.message or f"(the kernel prints nothing) {r.evidence}"
            out.write(f"{'refused':<14}{where}{rng}{r.rule}: {said}\n")
        else:
            out.write(f"{'note':<14}{r.message}\n")
    grouped: Dict[tuple, list] = {}
    for u in result.unchecked:
        grouped.setdefault((u.rule, u.why), []).append(u.block)
    for (rule, why), ids in grouped.items():
        named = [i for i in ids if i is not None]
        where = ("memory" + (f"{named[0]}" if len(named) == 1 else f"{named[0]}..{named[-1]}") + ": ") if named else ""
        out.write(f"{'unchecked':<14}{rule}: {where}{why}\n")
    if fatal:
        failed = next((b for b in result.blocks if b.outcome == "refused"), None)
        what = (f"memory{failed.id} fails to offline: the ACPI eject ends busy and nothing is removed"
                if failed is not None else "try_remove_memory() refuses: nothing is removed")
        out.write(f"{'verdict':<14}refused ({fatal[0].rule}): {what}\n")
    _blocks_text(result, out)
    if not result.simulated:
        out.write("result        not simulated: the kernel refuses this removal (--force: what would happen "
                  "without the check)\n")
        return
    if fatal:
        out.write("\nwith --force, as if the refusing check were absent:\n")
    levels = Counter(snapshot.tables[e.phys].level_name for e in result.freed if e.phys in snapshot.tables)
    lv = ", ".join(f"{n} {name}" for name, n in sorted(levels.items()))
    alt = f", {result.data_to_altmap >> 20} MiB back to altmaps (vmem_altmap_free)" if result.data_to_altmap else ""
    out.write(f"freed         {len(result.freed)} table pages ({lv or 'none'}), "
              f"{result.data_freed >> 20} MiB of mapped memmap{alt}\n")
    empty_kept = [e for e in result.kept if "floor" in e.detail]
    out.write(f"kept          {len(result.kept)} touched tables stay ({len(empty_kept)} empty, outside [floor, ceiling))\n")
    out.write(f"NR_PAGETABLE  {result.delta_nr_pagetable:+d} counter, {result.delta_typed_pages:+d} typed pages, "
              f"drift {result.drift:+d}\n")
    worst = result.worst()
    above = [f for f in result.findings if SEVERITIES.index(f.severity) >= SEVERITIES.index(fail_on)]
    verdict = ("balanced: every freed table meets the dtor its ctor calls for"
               if not result.findings else f"{len(result.findings)} finding(s), worst {worst}")
    if result.unchecked:
        verdict += f" (unchecked: {', '.join(sorted({u.rule for u in result.unchecked}))})"
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


def _blocks_text(result: Result, out: IO[str]) -> None:
    """Per block: what offlining gets, where the memmap lives, the outcome;
    then what the kernel prints."""
    if not result.blocks:
        return
    out.write(f"\n{'BLOCK':<10}  {'OFFLINED RANGE':<27}  {'OWN MEMMAP':<10}  {'STATE':<8}  {'OUTCOME':<28}  CHECKS\n")
    for b in result.blocks:
        lo, hi = b.offline_range
        own = f"{b.memmap_pages} pages" if b.memmap_pages else "-"
        checks = ", ".join(f"{c.rule} {c.result}" for c in b.checks) or "-"
        out.write(f"memory{b.id:<4}  [{lo:#012x}-{hi - 1:#012x}]  {own:<10}  {b.state:<8}  {b.outcome:<28}  "
                  f"{checks}\n")
        for w in b.warnings:
            out.write(f"            may not offline: {w}\n")
    homes = Counter((h.lives.split(" at ")[0], h.goes) for h in result.memmap)
    if homes:
        out.write("\nmemmap (struct pages) of the removed sections:\n")
        for (lives, goes), n in sorted(homes.items()):
            out.write(f"  {n:>4} section(s): in {lives}; at removal: {goes}\n")
    if result.kernel_log:
        iffy = " (if the unchecked checks pass)" if result.unchecked else ""
        out.write(f"\nthe kernel would print{iffy}:\n")
        for line in result.kernel_log:
            out.write(f"  {line}\n")
    out.write("\n")


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
        "refusals": [{"rule": r.rule, "message": r.message, "fatal": r.fatal, "block": r.block,
                      "range": list(r.range) if r.range else None, "evidence": r.evidence}
                     for r in result.refusals],
        "unchecked": [{"rule": u.rule, "block": u.block, "why": u.why} for u in result.unchecked],
        "blocks": [{"block": b.id, "start": b.start, "end": b.end, "state": b.state, "zone": b.zone,
                    "offline_range": list(b.offline_range), "memmap_pages": b.memmap_pages,
                    "outcome": b.outcome, "warnings": b.warnings,
                    "checks": [{"rule": c.rule, "result": c.result, "message": c.message or None, "why": c.why}
                               for c in b.checks]}
                   for b in result.blocks],
        "kernel_log": result.kernel_log,
        "memmap": [{"section": h.section, "block": h.block, "vmemmap": h.vmemmap, "phys": h.phys,
                    "lives": h.lives, "goes": h.goes} for h in result.memmap],
        "simulated": result.simulated,
        "freed": [table(e) for e in result.freed],
        "kept": [table(e) for e in result.kept],
        "warnings": [{"routine": w.routine, "va": w.va, "phys": w.phys, "detail": w.detail}
                     for w in result.warnings],
        "data_freed": result.data_freed,
        "data_to_altmap": result.data_to_altmap,
        "delta_nr_pagetable": result.delta_nr_pagetable,
        "delta_typed_pages": result.delta_typed_pages,
        "drift": result.drift,
        "findings": [f.removal_dict() for f in result.findings],
    }


def simulate_json(result: Result, snapshot, out: IO[str]) -> None:
    json.dump(simulate_dict(result, snapshot), out, indent=1)
    out.write("\n")
