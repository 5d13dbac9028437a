"""mminspect map (the HTML map of physical memory and page tables): each subcommand with its ``--drgn`` code."""

import io
import json
import os
from typing import Any, Dict

import click

from mminspect.classify import classifier_for, resolve_roots
from mminspect.cli.base import (
    _block_ids,
    _errors,
    _inputs,
    _progress,
    _proposal_range,
    main,
    open_kernel,
    parse_range,
    target_options,
)
from mminspect.errors import MMInspectError
from mminspect.files import atomic_output, check_output, target_files
from mminspect.hotremove import Proposal, get_policy
from mminspect.report.map import build_map, map_html
from mminspect.session import CodeSnippet, _hex, _quote, register_drgn_code


@main.command("map")
@target_options
@click.option("-o", "--output", metavar="FILE", help="where to write (default map.html, or map.json with --format json; - for stdout)")
@click.option("--mm", "roots", multiple=True, metavar="ROOT",
              help="roots to draw (repeatable; as classify --mm: init_mm, efi_mm, tramp, a pid, tasks, all); "
                   "default init_mm and efi_mm when it exists")
@click.option("--simulate", "range_", metavar="START-END", help="overlay the removal of this physical range (hex; START+SIZE works)")
@click.option("--block", "blocks", multiple=True, metavar="N[..M]", help="overlay the removal of memory blocks N..M")
@click.option("--dimm", metavar="ID", help="overlay the removal of a QEMU pc-dimm (asked of --qemu SOCKET)")
@click.option("--policy", metavar="ERA", help="freeing rules to replay (default: chosen from the dump)")
@click.option("--format", "fmt", type=click.Choice(["html", "json"]), default="html", show_default=True)
@click.option("--force", is_flag=True, help="replace FILE if it exists (never an input)")
@click.option("--progress/--no-progress", default=True, help="progress on stderr when it is a terminal")
@_errors
def map_(core, symbols, live, qemu, output, roots, range_, blocks, dimm, policy, fmt, force, progress) -> None:
    """Write a self-contained HTML map of physical memory and page tables.

    Physical memory by memory block (boot, hot-added, holes, zones, nodes)
    with every page-table page as a mark coloured and shaped by its origin
    (density cells that zoom into marks on big machines), the classification
    evidence on hover, a VA overview per root, and with --simulate, --block or
    --dimm the proposed removal as an overlay: freed and kept tables,
    refusals with the kernel's message, the NR_PAGETABLE change, the
    findings. One file, no network. --format json writes the same data
    (schema mminspect.map/1).
    """
    want = _proposal_range(range_, blocks, dimm, qemu, "--simulate")
    output = output or ("map.json" if fmt == "json" else "map.html")
    inputs = _inputs(core, symbols)
    if output != "-":
        check_output(output, inputs, force)  # before the work, and again before the rename
    k = open_kernel(core, symbols, live, qemu)
    specs = roots or ("init_mm", "efi_mm")
    resolved = []
    for spec in specs:
        try:
            resolved += resolve_roots(k, spec)
        except MMInspectError as e:
            if roots:
                raise
            click.echo(f"mminspect: {spec} not drawn: {e}", err=True)
    proposal = None
    if want is not None:
        text, ids = want
        if text:
            start, end = parse_range(text)
            proposal = Proposal(start, end)
        else:
            memory = classifier_for(k).memory
            if memory is None:
                raise MMInspectError(f"{k.target.name}: no memory blocks: give the removal as --simulate START-END")
            proposal = Proposal.from_blocks(ids, memory.block_size)
    pol = (lambda era: get_policy(policy, era, {})) if policy else None
    data = build_map(k, resolved, proposal, pol, _progress(progress))

    def write(out) -> None:
        if fmt == "json":
            json.dump(data, out, indent=1)
            out.write("\n")
        else:
            map_html(data, out)

    if output == "-":
        write(click.get_text_stream("stdout"))
        return
    with atomic_output(output, [*inputs, *target_files(k.target)], force) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8")
        write(text)
        text.flush()
        text.detach()  # atomic_output fsyncs and closes the file itself
    size = os.path.getsize(output)
    t = data["tables"]
    p = data["proposal"]
    line = f"{output}: {size} bytes, {t['count']} table pages from {', '.join(r['name'] for r in data['roots'])}"
    if p is not None:
        line += (f"; removal {p['text']}: " + ("refused" if not p["simulated"] else
                 f"{p['freed']['count']} freed, {len(p['kept'])} kept, NR_PAGETABLE {p['delta_nr_pagetable']:+d}, "
                 f"{len(p['findings'])} finding(s)"))
    click.echo(line)


@register_drgn_code("map")
def _map_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
    code.add_import("mminspect.classify", "resolve_roots")
    code.add_import("mminspect.report.map", "build_map", *(("map_html",) if params.get("fmt") != "json" else ()))
    roots = params.get("roots") or ("init_mm", "efi_mm")
    code.append("k = mminspect_kernel(prog)\n")
    code.append("roots = " + " + ".join(f"resolve_roots(k, {_quote(r)})" for r in roots) + "\n")
    proposal = "None"
    if params.get("range_") or params.get("blocks"):
        code.add_import("mminspect.hotremove", "Proposal")
        if params.get("range_"):
            start, end = parse_range(params["range_"])
            proposal = f"Proposal({_hex(start)}, {_hex(end)})"
        else:
            code.add_import("mminspect.classify", "classifier_for")
            code.append("block_size = classifier_for(k).memory.block_size\n")
            proposal = f"Proposal.from_blocks({_block_ids(params['blocks'])!r}, block_size)"
    code.append(f"data = build_map(k, roots, {proposal})\n")
    output = params.get("output") or ("map.json" if params.get("fmt") == "json" else "map.html")
    if params.get("fmt") == "json":
        code.add_import("json")
        code.append(f"with open({_quote(output)}, \"x\") as f:  # \"x\": never over an existing file\n"
                    "    json.dump(data, f)\n")
    else:
        code.append(f"with open({_quote(output)}, \"x\") as f:  # \"x\": never over an existing file\n"
                    "    map_html(data, f)\n")
    return code
