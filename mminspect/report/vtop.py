"""
vtop reports
------------

Text in the shape of crash's ``vtop`` (a VIRTUAL/PHYSICAL line, then one
line per level, upper-case headers, bare lowercase hex) with what crash does
not say: the decoded type of every entry, the effective permissions, why the
walk stopped, the physical page's facts and the independent checks; and JSON
(schema ``mminspect.vtop/1``).
"""

import json
from typing import IO, Any, Dict, Sequence

from mminspect.report.common import size_text
from mminspect.vtop import JSON_SCHEMA, Translation

__all__ = ("translation_dict", "vtop_json", "vtop_text")


def _perm_text(eff: Dict[str, bool]) -> str:
    kernel = "r-" if eff["ro"] else "rw"
    kernel += "-" if eff["pxn"] else "x"
    if eff["user"]:
        user = ("r-" if eff["ro"] else "rw") + ("-" if eff["uxn"] else "x")
    else:
        user = "---"
    return f"kernel {kernel}, user {user}"


def page_lines(p) -> list:
    """The physical page's facts, as ``kmem -p`` would say them (shared
    with identify's report)."""
    if not p.ram:
        return [f"pfn {p.pfn:#x} is not RAM (no present memory section)"]
    where = f"section {p.section} ({p.memory})"
    if p.block is not None:
        where += f", memory block {p.block} ({p.block_state}"
        where += f", zone {p.zone}" if p.zone else ""
        where += f", node {p.nid})" if p.nid is not None else ")"
    elif p.zone:
        where += f", zone {p.zone}"
    out = [f"pfn {p.pfn:#x}  struct page {p.page:#x}  {where}"]
    if not p.readable:
        return out + ["struct page not in the dump"]
    what = f"flags {p.flags:#x} ({','.join(p.flag_names) or 'none'})  type {p.page_type or 'none'}  " \
           f"refcount {p.refcount}"
    if p.mapcount is not None:
        what += f"  mapcount {p.mapcount}"
    out.append(what)
    extra = []
    if p.slab_cache:
        extra.append(f"slab cache {p.slab_cache}")
    elif p.mapping_kind:
        extra.append(f"mapping {p.mapping:#x} ({p.mapping_kind}) index {p.index:#x}")
    if p.memcg:
        extra.append(f"memcg {p.memcg:#x}")
    if p.compound_head is not None:
        extra.append(f"tail of compound page pfn {p.compound_head:#x}")
    if p.page_owner == "off":
        extra.append("page_owner off (boot with page_owner=on to record owners)")
    if extra:
        out.append("  ".join(extra))
    out += p.notes
    return out


def vtop_text(results: Sequence[Translation], out: IO[str]) -> None:
    for n, t in enumerate(results):
        if n:
            out.write("\n")
        out.write(f"{'VIRTUAL':<16}  PHYSICAL\n")
        out.write(f"{t.va:016x}  {t.pa:x}\n" if t.pa is not None else f"{t.va:016x}  (not mapped)\n")
        out.write(f"\nROOT  {t.root.name} (pgd {t.root.phys:#x}, {t.root.entries} entries)  REGION  {t.region}")
        out.write(f"  (tag {t.tag:#04x} ignored)\n" if t.tag is not None else "\n")
        out.write(f"{'LEVEL':<5}  {'TABLE':<12}  {'INDEX':>5}  {'ENTRY':<12}  {'DESCRIPTOR':<16}  "
                  f"{'TYPE':<8}  DECODED\n")
        for s in t.steps:
            if s.kind == "table":
                dec = f"-> {s.next_table:x}" + (f"  {s.attrs}" if s.attrs else "")
            else:
                dec = s.attrs
            out.write(f"{s.level_name:<5}  {s.table:012x}  {s.index:>5}  {s.entry:012x}  {s.desc:016x}  "
                      f"{s.kind:<8}  {dec}\n")
        size = f" ({size_text(t.leaf.size)})" if t.leaf is not None else ""
        out.write(f"\nSTOP       {t.stop}{size}: {t.reason}\n")
        if t.leaf is not None:
            out.write(f"EFFECTIVE  {_perm_text(t.effective)}  (descriptor: {t.leaf.attrs})\n")
        if t.cont:
            c = t.cont
            state = "consistent" if c["consistent"] else "INCONSISTENT: " + "; ".join(c["problems"])
            out.write(f"CONTIG     {c['entries']} entries from index {c['first_index']}: "
                      f"{c['va']:#x}+{c['size']:#x} -> {c['pa']:#x}, {state}\n")
        if t.nonpresent:
            npd = t.nonpresent
            fields = "  ".join(f"{k} {v:#x}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v}"
                               for k, v in npd.items() if k not in ("meaning", "kind"))
            out.write(f"ENTRY      {npd['kind']}" + (f": {fields}" if fields else "") + "\n")
        if t.page is not None:
            for i, line in enumerate(page_lines(t.page)):
                out.write(("PAGE       " if i == 0 else "           ") + line + "\n")
        for c in t.checks:
            mark = {True: "agrees", False: "DISAGREES", None: "n/a"}[c.agrees]
            out.write(f"CHECK      {c.source}: {mark}: {c.detail}\n")


def translation_dict(t: Translation) -> Dict[str, Any]:
    return {
        "va": t.va,
        "tag": t.tag,
        "root": {"name": t.root.name, "phys": t.root.phys, "entries": t.root.entries},
        "region": t.region,
        "levels": [s.as_dict() for s in t.steps],
        "stop": t.stop,
        "reason": t.reason,
        "pa": t.pa,
        "leaf": None if t.leaf is None else {
            "va": t.leaf.va, "size": t.leaf.size, "pa": t.leaf.pa, "level": t.leaf.level_name,
            "attrs": t.leaf.attrs.split(), "desc_attr": t.leaf.desc_attr, "effective": t.leaf.effective},
        "contiguous": t.cont,
        "nonpresent": t.nonpresent,
        "page": t.page.as_dict() if t.page is not None else None,
        "checks": [c.as_dict() for c in t.checks],
    }


def vtop_json(results: Sequence[Translation], kernel, out: IO[str]) -> None:
    doc = {"schema": JSON_SCHEMA, "kernel": kernel.describe(),
           "translations": [translation_dict(t) for t in results]}
    json.dump(doc, out, indent=1)
    out.write("\n")
