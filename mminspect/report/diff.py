"""
diff reports
------------

Text (a summary, table pages freed/allocated/moved, mapping ranges, the
NR_PAGETABLE explanation, the simulation verdict) and JSON (schema
``mminspect.diff/1``).
"""

import json
from typing import IO, Any, Dict

from mminspect.diff import JSON_SCHEMA, Diff
from mminspect.report.common import size_text

__all__ = ("diff_dict", "diff_json", "diff_text")

_TYPED = {1: "typed", 0: "untyped", -1: "unknown"}


def _row(d: Diff, side, x) -> Dict[str, Any]:
    st = d.a if side == "a" else d.b
    return {"phys": int(x["phys"]), "level": st.level_names.get(int(x["level"]), str(int(x["level"]))),
            "va": int(x["va"]), "typed": _TYPED[int(x["typed"])], "root": st.roots[int(x["root"])]}


def diff_dict(d: Diff) -> Dict[str, Any]:
    return {
        "schema": JSON_SCHEMA,
        "a": {"name": d.a.name, "kernel": d.a.kernel.get("osrelease"), "roots": d.a.roots,
              "nr_pagetable": d.a.nr_pagetable},
        "b": {"name": d.b.name, "kernel": d.b.kernel.get("osrelease"), "roots": d.b.roots,
              "nr_pagetable": d.b.nr_pagetable},
        "tables": {
            "freed": [_row(d, "a", x) for x in d.freed],
            "allocated": [_row(d, "b", x) for x in d.allocated],
            "moved": [{"a": _row(d, "a", x), "b": _row(d, "b", y)} for x, y in d.moved],
        },
        "mappings": d.mappings,
        "roots_not_compared": d.unmapped_roots,
        "snapshot": d.snapshot,
        "nr_pagetable": {"a": d.a.nr_pagetable, "b": d.b.nr_pagetable, "delta": d.nr_pagetable_delta,
                         "typed_delta": d.typed_delta(), "explanation": d.explanation()},
        "expect": d.expect,
    }


def diff_json(d: Diff, out: IO[str]) -> None:
    json.dump(diff_dict(d), out, indent=1)
    out.write("\n")


def diff_text(d: Diff, out: IO[str], limit: int = 40) -> None:
    out.write(f"A  {d.a.name} ({d.a.kernel.get('osrelease')}, roots {', '.join(d.a.roots)})\n")
    out.write(f"B  {d.b.name} ({d.b.kernel.get('osrelease')}, roots {', '.join(d.b.roots)})\n")
    for line in d.explanation():
        out.write(f"   {line}\n")
    if d.unmapped_roots:
        what = "not compared: a snapshot holds init_mm only" if d.snapshot else \
            "their tables count, their mappings are not compared"
        out.write(f"   roots in one state only ({what}): {', '.join(d.unmapped_roots)}\n")
    for title, rows, side in (("FREED", d.freed, "a"), ("ALLOCATED", d.allocated, "b")):
        if not len(rows):
            continue
        out.write(f"\n{title} TABLE PAGES ({len(rows)})\n{'PHYS':<12}  {'LEVEL':<5}  {'VA':<16}  {'TYPE':<8}  ROOT\n")
        for n, x in enumerate(rows):
            if n == limit:
                out.write(f"... {len(rows) - limit} more (--format json lists all)\n")
                break
            r = _row(d, side, x)
            out.write(f"{r['phys']:012x}  {r['level']:<5}  {r['va']:016x}  {r['typed']:<8}  {r['root']}\n")
    if d.moved:
        out.write(f"\nREUSED AS ANOTHER TABLE ({len(d.moved)})\n")
        for x, y in d.moved[:limit]:
            a, b = _row(d, "a", x), _row(d, "b", y)
            out.write(f"{a['phys']:012x}  {a['root']} {a['level']} {a['va']:#x} -> {b['root']} {b['level']} "
                      f"{b['va']:#x}\n")
    if not d.mappings:
        out.write("\nmappings not compared: a snapshot holds table pages, not what they map\n")
    for root, ranges in d.mappings.items():
        if not ranges:
            out.write(f"\n{root}: no mapping changed\n")
            continue
        out.write(f"\n{root} MAPPINGS ({len(ranges)} ranges)\n"
                  f"{'KIND':<8}  {'VA START':<16}  {'VA END':<16}  {'SIZE':>6}  {'PA (A)':<12}  {'PA (B)':<12}  "
                  "A / B\n")
        for n, m in enumerate(ranges):
            if n == limit:
                out.write(f"... {len(ranges) - limit} more (--format json lists all)\n")
                break
            pa_a = f"{m['pa_a']:012x}" if m["pa_a"] is not None else "-"
            pa_b = f"{m['pa_b']:012x}" if m["pa_b"] is not None else "-"
            out.write(f"{m['kind']:<8}  {m['va']:016x}  {m['end'] & ((1 << 64) - 1):016x}  {size_text(m['size']):>6}  "
                      f"{pa_a:<12}  {pa_b:<12}  {m['a'] or '-'} / {m['b'] or '-'}\n")
    if d.expect is not None:
        e = d.expect
        verdict = "matches" if e["matches"] else "DOES NOT MATCH"
        out.write(f"\nSIMULATION {e['simulation']}: {verdict}: predicted {e['predicted_freed']} freed, "
                  f"{e['freed']} freed in init_mm; NR_PAGETABLE predicted {e['delta_nr_pagetable']['predicted']}, "
                  f"real {e['delta_nr_pagetable']['real']}\n")
        for key in ("predicted_not_freed", "freed_not_predicted"):
            if e[key]:
                out.write(f"  {key.replace('_', ' ')}: " + ", ".join(f"{p:#x}" for p in e[key][:20]) + "\n")
