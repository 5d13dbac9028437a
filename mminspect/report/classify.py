"""
Classification and audit reports
--------------------------------

Text in the style of the walk report (crash-style upper-case headers, fixed
widths, streamed) and JSON (schemas ``mminspect.classify/1`` and
``mminspect.audit/1``, long lists streamed) for
:class:`~mminspect.classify.Classification` and
:class:`~mminspect.classify.Audit`. The CLI, drgn and gdb commands all print
through these functions.
"""

import json
from collections import Counter
from typing import IO, Any, Dict, Iterator, List, Sequence

from mminspect.classify import (
    AUDIT_SCHEMA,
    CLASSIFY_SCHEMA,
    Audit,
    Classification,
    TableClass,
)
from mminspect.report.common import size_text

__all__ = ("audit_json", "audit_text", "classify_json", "classify_text", "summary_rows", "table_class_dict")




def summary_rows(classes: Sequence[Classification]) -> List[tuple]:
    """(root, level, origin, ptlock, count) rows, roots in walk order."""
    rows = []
    for cl in classes:
        order = {name: i for i, name in enumerate(("PGD", "P4D", "PUD", "PMD", "PTE"))}
        items = sorted(cl.summary().items(), key=lambda kv: (order.get(kv[0][1], 9), kv[0][2], kv[0][3]))
        rows += [(*key, n) for key, n in items]
    return rows


def _head(classes: Sequence[Classification]) -> Dict[str, Any]:
    k = classes[0].kernel
    c = classes[0].classifier
    F = c.features
    era = [f"page type {F.page_type}"]
    for name, label in (("pud_ctor", "PUD ctor"), ("p4d_ctor", "P4D ctor"), ("pgd_ctor", "pgd ctor"),
                        ("kernel_pte_ctor", "kernel PTE ctor"), ("init_mm_ctor", "init_mm ctors (v6.16)"),
                        ("image_static", "static image tables (v6.9)")):
        if getattr(F, name):
            era.append(label)
    return {
        "kernel": k.vmcoreinfo.get("OSRELEASE", "?"),
        "regime": k.regime.describe(),
        "era": ", ".join(era),
        "ptl": ("pointer (ALLOC_SPLIT_PTLOCKS)" + (", DEBUG_SPINLOCK" if F.debug_spinlock else "")
                if F.alloc_split else "inline"),
        "split ptlocks": ", ".join(x for x, on in (("PTE", F.split_pte), ("PMD", F.split_pmd)) if on) or "none",
    }


def classify_text(classes: Sequence[Classification], out: IO[str], summary: bool = False) -> None:
    """One row per table page (or, with ``summary``, counts by root x level x
    origin x ptlock), then the findings."""
    from tabulate import tabulate  # only here: the Python API must not need it

    if not classes:
        out.write("no roots classified\n")
        return
    head = _head(classes)
    head["roots"] = ", ".join(f"{cl.root.name} ({len(cl)} tables)" for cl in classes)
    out.write(tabulate(list(head.items()), tablefmt="plain") + "\n\n")
    if summary:
        rows = summary_rows(classes)
        out.write(tabulate(rows, headers=["ROOT", "LEVEL", "ORIGIN", "PTLOCK", "TABLES"], tablefmt="plain")
                  + "\n")
    else:
        for cl in classes:
            out.write(f"{cl.root.name}:\n")
            out.write(f"{'PHYS':<14}  {'LEVEL':<5}  {'VA':<16}  {'SPAN':>5}  {'REGION':<22}  {'ORIGIN':<13}  "
                      f"{'PTLOCK':<11}  EVIDENCE\n")
            for t in cl.records():
                ev = "; ".join((t.allocator,) + t.evidence)
                out.write(f"{t.phys:014x}  {t.level_name:<5}  {t.va:016x}  {size_text(t.span):>5}  {t.region:<22}  "
                          f"{t.origin:<13}  {t.ptlock:<11}  {ev}\n")
            out.write("\n")
    findings = [f for cl in classes for f in cl.findings]
    unread = sum(int((~cl.facts["ok"]).sum()) for cl in classes)
    if unread:
        out.write(f"\n{unread} table page(s) whose struct page is not in the dump: origin and ptlock unknown "
                  "(a bundle captured before the classifier existed, or a filtered dump)\n")
    if findings:
        by = Counter(f.severity for f in findings)
        out.write(f"\n{len(findings)} finding(s): "
                  + ", ".join(f"{by[s]} {s}" for s in ("critical", "error", "warning", "info") if by[s]) + "\n")
        for f in findings:
            out.write(f"  {f.severity}: {f.kind}: {f.sentence}\n")
    elif not unread:
        out.write("\nno findings: every table page has the origin this kernel's allocation sites give it\n")


def table_class_dict(t: TableClass) -> Dict[str, Any]:
    return t.as_dict()


def _stream_list(out: IO[str], key: str, items: Iterator[Any], indent: str = "  ") -> None:
    out.write(f',\n{indent}"{key}": [')
    first = True
    for item in items:
        out.write(("\n" if first else ",\n") + indent + "  " + json.dumps(item))
        first = False
    out.write(f"\n{indent}]" if not first else "]")


def _open(out: IO[str], head: Dict[str, Any]) -> None:
    body = json.dumps(head, indent=2)
    out.write(body[: body.rstrip().rfind("}")].rstrip())


def classify_json(classes: Sequence[Classification], out: IO[str], summary: bool = False) -> None:
    """Write the classification as JSON (schema ``mminspect.classify/1``);
    with ``summary`` the per-table lists are left out."""
    c = classes[0].classifier if classes else None
    head = {
        "schema": CLASSIFY_SCHEMA,
        "kernel": classes[0].kernel.describe() if classes else None,
        "features": c.features.as_dict() if c else None,
        "layout": c.layout.as_dict() if c else None,
        "summary": [{"root": a, "level": b, "origin": o, "ptlock": p, "count": n}
                    for a, b, o, p, n in summary_rows(classes)],
    }
    _open(out, head)
    out.write(',\n  "roots": [')
    for k, cl in enumerate(classes):
        out.write("\n    " if k == 0 else ",\n    ")
        rhead = {
            "name": cl.root.name,
            "phys": cl.root.phys,
            "tables": len(cl),
            "mismatches": cl.mismatches,
            "stats": cl.stats,
        }
        body = json.dumps(rhead)
        out.write(body[:-1])
        if not summary:
            _stream_list(out, "table_pages", (t.as_dict() for t in cl.records()), indent="    ")
        _stream_list(out, "findings", (f.as_dict() for f in cl.findings), indent="    ")
        out.write("\n    }")
    out.write("\n  ]\n}\n")


def audit_text(a: Audit, out: IO[str]) -> None:
    from tabulate import tabulate

    rows = [
        ("NR_PAGETABLE (exact)", a.counter if a.counter is not None else "unknown"),
        ("  per node", ", ".join(f"node {n['nid']}: {n['vm_stat']} + {n['percpu_delta']} per-CPU = {n['exact']}"
                                 for n in a.per_node) or "-"),
        ("  global vm_node_stat", a.global_vm_node_stat if a.global_vm_node_stat is not None else "-"),
        ("typed as page tables", f"{a.typed_count} of {a.scanned_pages} struct pages scanned"
                                 + (f" ({a.unreadable_pages} unreadable)" if a.unreadable_pages else "")),
        ("difference", f"{a.difference:+d}" if a.difference is not None else "-"),
        ("reachable typed", f"{len(a.reachable_typed)} from "
                            + ", ".join(f"{r} ({n} tables)" for r, n in a.roots.items())),
        ("unreachable typed", len(a.unreachable_typed)),
    ]
    out.write(tabulate(rows, tablefmt="plain") + "\n\n")
    for line in a.explanation():
        out.write(line + "\n")
    for root, why in a.root_errors.items():
        out.write(f"  not walked: {root}: {why}\n")
    if a.changed_while_read:
        out.write(f"\nchanged while read (running kernel, read again): {len(a.changed_while_read)}\n")
        for line in a.changed_while_read:
            out.write(f"  {line}\n")
    if len(a.unreachable_facts):
        out.write(f"\n{'PHYS':<14}  {'PAGE_TYPE':<10}  {'REFCOUNT':>8}  {'PTL':<18}  LRU/RCU WORDS\n")
        for f, hint in zip(a.unreachable_facts, a.unreachable_hints):
            out.write(f"{int(f['pfn']) << a.page_shift:014x}  {int(f['page_type']):#010x}  {int(f['refcount']):>8}  "
                      f"{int(f['ptl']):#018x}  {int(f['w1']):#x} {int(f['w2']):#x}\n      {hint}\n")
    if a.untyped_tables:
        out.write("\ntables without a ctor (not counted by NR_PAGETABLE):\n")
        rows = [(r, l, g, n) for (r, l, g), n in sorted(a.untyped_tables.items())]
        out.write(tabulate(rows, headers=["ROOT", "LEVEL", "REGION", "TABLES"], tablefmt="plain") + "\n")
    if a.expected_ctor_missing:
        out.write(f"\n{len(a.expected_ctor_missing)} table(s) this kernel ctors, found without the type:\n")
        for root, phys, lvl in a.expected_ctor_missing:
            out.write(f"  {root} {lvl} {phys:#x}\n")
    if a.multi_root:
        out.write("\ntables reachable from more than one root:\n")
        for phys, roots in a.multi_root:
            out.write(f"  {phys:#x}: {', '.join(roots)}\n")
    if a.hot_overlap:
        out.write("\ntables whose span maps hot-added memory:\n")
        rows = [(r, l, m, n) for (r, l, m), n in sorted(a.hot_overlap.items())]
        out.write(tabulate(rows, headers=["ROOT", "LEVEL", "MAPS", "TABLES"], tablefmt="plain") + "\n")
        for root, phys, lvl in a.mixed_spans:
            out.write(f"  {root} {lvl} {phys:#x} maps boot and hot-added memory: removing the block cannot free it\n")
    for line in a.writable_roots:
        out.write(f"\nwarning: {line}\n")
    if a.memcg:
        charged = {k: v for k, v in a.memcg.items() if k}
        if charged:
            out.write("\ntyped pages charged to memcgs: "
                      + ", ".join(f"{k:#x}: {v}" for k, v in sorted(charged.items())) + "\n")


def audit_json(a: Audit, out: IO[str]) -> None:
    d = {"schema": AUDIT_SCHEMA}
    d.update(a.as_dict())
    json.dump(d, out, indent=2)
    out.write("\n")
