"""
identify reports
----------------

Text (one block per address: the page-table records, every VA that maps
the page, the struct page) and JSON (schema ``mminspect.identify/1``).
"""

import json
from typing import IO, Sequence

from mminspect.identify import JSON_SCHEMA, Identity
from mminspect.report.common import size_text
from mminspect.report.vtop import page_lines

__all__ = ("identify_json", "identify_text")


def identify_text(results: Sequence[Identity], out: IO[str]) -> None:
    for n, ident in enumerate(results):
        if n:
            out.write("\n")
        kind = "page-table page" if ident.is_page_table else (
            "mapped page" if ident.mapped_at else "page no walked root maps")
        out.write(f"PHYS {ident.phys:#x}  pfn {ident.pfn:#x}  {kind}\n")
        for t in ident.tables:
            parents = ", ".join("root" if p["phys"] is None else f"{p['phys']:x}[{p['index']}]"
                                for p in t["parents"][:4])
            if len(t["parents"]) > 4:
                parents += f", ... ({len(t['parents'])} entries)"
            out.write(f"  TABLE   {t['root']}: {t['level']} table {t['phys']:#x} for "
                      f"{t['va']:#x}+{size_text(t['span'])} ({t['region']}), {t['valid']}/{t['entries']} valid, "
                      f"from {parents}\n")
            out.write(f"          origin {t['origin']} ({t['allocator']}), ptlock {t['ptlock']}"
                      + ("" if t["origin"] in t["expected"] else f"; expected {'/'.join(t['expected'])}") + "\n")
            for e in t["evidence"]:
                out.write(f"          - {e}\n")
        for m in ident.mapped_at:
            what = f"{m.level} {m.kind}" + (f", {size_text(m.size)} of VA all mapping it" if m.repeated else "")
            out.write(f"  MAPPED  {m.root:<10} {m.va:016x}  {what:<22} {m.attrs}\n")
        if ident.page is not None:
            for i, line in enumerate(page_lines(ident.page)):
                out.write(("  PAGE    " if i == 0 else "          ") + line + "\n")


def identify_json(results: Sequence[Identity], kernel, roots: Sequence[str], out: IO[str]) -> None:
    doc = {"schema": JSON_SCHEMA, "kernel": kernel.describe(), "roots": list(roots),
           "addresses": [i.as_dict() for i in results]}
    json.dump(doc, out, indent=1)
    out.write("\n")
