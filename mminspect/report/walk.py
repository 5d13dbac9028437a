"""
Walk reports
------------

Text (crash-style upper-case column headers, fixed widths so long listings
stream without being held in memory) and JSON (schema ``mminspect.walk/1``,
written incrementally) for a :class:`~mminspect.walk.Walk`. The CLI, the drgn
commands and the gdb commands all print through these functions.
"""

import json
from typing import Any, Dict, IO, Iterator, Optional

from mminspect.report.common import size_text
from mminspect.report.ptdump import check_wx
from mminspect.walk import Mapping, TablePage, Walk

__all__ = ("JSON_SCHEMA", "mapping_dict", "table_dict", "walk_json", "walk_text")

JSON_SCHEMA = "mminspect.walk/1"


def _summary(w: Walk) -> Dict[str, Any]:
    k = w.kernel
    leaf = w.runs[w.runs["cls"] == 1]
    wx, uxn, msg = check_wx(w) if w.root.ttbr1 else (0, 0, None)
    return {
        "kernel": k.vmcoreinfo.get("OSRELEASE", "?"),
        "regime": w.regime.describe(),
        "root": f"{w.root.name} (pgd phys {w.root.phys:#x}, {w.root.entries} entries)",
        "range": f"{w.root.start:#018x}-{w.root.end_inclusive:#018x}",
        "mapped": f"{int(leaf['size'].sum()) >> 10} KiB",
        "ranges": len(leaf),
        "table pages": w.table_count,
        "wx": msg + (" (walk incomplete: see below)" if msg and w.problems else "") if msg else None,
    }


def walk_text(w: Walk, out: IO[str], tables: bool = False) -> None:
    """Print a summary, the coalesced leaf ranges, optionally every table
    page, and whatever the walk could not see."""
    from tabulate import tabulate  # only here: the Python API must not need it

    s = _summary(w)
    rows = [(k, v) for k, v in s.items() if v is not None]
    out.write(tabulate(rows, tablefmt="plain") + "\n\n")
    out.write(f"{'VA START':<16}  {'VA END':<16}  {'SIZE':>6}  {'PA':<14}  {'LEVEL':<5}  {'KIND':<10}  ATTRS\n")
    for m in w.mappings():
        out.write(
            f"{m.va:016x}  {m.end:016x}  {size_text(m.size):>6}  {m.pa:014x}  {m.level_name:<5}  "
            f"{m.kind:<10}  {m.attrs}\n"
        )
    if tables:
        out.write(f"\n{'PHYS':<14}  {'LEVEL':<5}  {'VA':<16}  {'SPAN':>6}  {'VALID':>11}  PARENTS\n")
        for t in w.tables():
            parents = ", ".join(
                "root" if p.phys is None else f"{p.phys:x}[{p.index}]" for p in t.parents
            )
            out.write(
                f"{t.phys:014x}  {t.level_name:<5}  {t.va:016x}  {size_text(t.span):>6}  "
                f"{t.valid:>5}/{t.entries:<5}  {parents}\n"
            )
    if w.problems:
        out.write(f"\n{len(w.problems)} part(s) of the tree could not be seen:\n")
        for p in w.problems:
            out.write(f"  {p}\n")


def mapping_dict(m: Mapping) -> Dict[str, Any]:
    return {
        "va": m.va,
        "end": m.end,
        "size": m.size,
        "pa": m.pa,
        "level": m.level_name,
        "kind": m.kind,
        "repeat": m.repeat,
        "attrs": m.attrs.split(),
        "desc_attr": m.desc_attr,
        "effective": m.effective,
    }


def table_dict(t: TablePage) -> Dict[str, Any]:
    return {
        "phys": t.phys,
        "level": t.level_name,
        "va": t.va,
        "span": t.span,
        "entries": t.entries,
        "valid": t.valid,
        "parents": [{"phys": p.phys, "index": p.index} for p in t.parents],
    }


def _stream_list(out: IO[str], key: str, items: Iterator[Dict[str, Any]]) -> None:
    out.write(f',\n  "{key}": [')
    first = True
    for item in items:
        out.write(("\n    " if first else ",\n    ") + json.dumps(item))
        first = False
    out.write("\n  ]" if not first else "]")


def walk_json(w: Walk, out: IO[str], tables: bool = False) -> None:
    """Write the walk as JSON (schema ``mminspect.walk/1``), streaming the
    long lists."""
    wx, uxn, msg = check_wx(w)
    head = {
        "schema": JSON_SCHEMA,
        "kernel": w.kernel.describe(),
        "root": {
            "name": w.root.name,
            "phys": w.root.phys,
            "entries": w.root.entries,
            "start": w.root.start,
            "end": w.root.end,
        },
        "wx": {"wx_pages": wx, "non_uxn_pages": uxn, "message": msg} if w.root.ttbr1 else None,
        "stats": w.stats,
    }
    body = json.dumps(head, indent=2)
    out.write(body[: body.rstrip().rfind("}")].rstrip())
    _stream_list(out, "mappings", (mapping_dict(m) for m in w.mappings()))
    if tables:
        _stream_list(out, "tables", (table_dict(t) for t in w.tables()))
    _stream_list(
        out,
        "problems",
        (
            {"kind": p.kind, "level": w.regime.level_name(p.level), "va": p.va, "phys": p.phys,
             "parent": p.parent, "index": p.index, "detail": p.detail}
            for p in w.problems
        ),
    )
    out.write("\n}\n")


def problems_line(walks) -> Optional[str]:
    """One line for stderr when a walk (or any of a list of walks) could not
    see part of its tree (loops, tables outside RAM or missing from the
    dump), or None. Every output format leaves those parts out (ptdump
    prints them as unmapped, as the kernel's would), so this line and the
    exit status 1 are what tell a script the answer is incomplete."""
    walks = walks if isinstance(walks, (list, tuple)) else [walks]
    problems = [(w.root.name, p) for w in walks for p in w.problems]
    if not problems:
        return None
    kinds: Dict[str, int] = {}
    for _, p in problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    root, first = problems[0]
    what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return (f"mminspect: warning: {len(problems)} part(s) of the tree could not be seen ({what}; first, in "
            f"{root}: {first}); the output leaves them out")
