"""mminspect vtop, identify and diff (explain an address, a page, a change): each subcommand with its ``--drgn`` code."""

import os
import sys
from typing import Any, Dict

import click

from mminspect.cli.base import _errors, main, open_kernel, target_options
from mminspect.diff import (
    check_same,
    diff as do_diff,
    expect_simulation,
    load_simulation,
    state_of_kernel,
    state_of_snapshot,
)
from mminspect.errors import MMInspectError
from mminspect.files import check_input
from mminspect.hotremove import Snapshot
from mminspect.identify import all_roots, check_addresses, identify as do_identify, parse_address
from mminspect.kernel import Kernel
from mminspect.report.diff import diff_json, diff_text
from mminspect.report.identify import identify_json, identify_text
from mminspect.report.vtop import vtop_json, vtop_text
from mminspect.session import CodeSnippet, _quote, bound_kernel, register_drgn_code
from mminspect.target import open_target
from mminspect.vtop import vtop as do_vtop


def _diff_state(source, name: str):
    return state_of_kernel(source, name) if isinstance(source, Kernel) else state_of_snapshot(source, name)


def _diff_source(path: str, symbols):
    """A snapshot (.npz written by ``mminspect snapshot``) or a dump's Kernel."""
    check_input(path, "dump or snapshot")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":  # numpy's .npz is a zip file

        return Snapshot.load(path)
    return Kernel(open_target(core=path, symbols=symbols))


def _parse_va(text: str) -> int:
    """A virtual address: hex (0x optional), as crash's vtop takes it."""
    try:
        value = int(text, 16)
    except ValueError:
        raise MMInspectError(f"bad address {text!r}: expected a hexadecimal virtual address") from None
    if not 0 <= value < 1 << 64:
        raise MMInspectError(f"bad address {text!r}: not a 64-bit address")
    return value


@main.command()
@target_options
@click.argument("addresses", nargs=-1, required=True, metavar="VA...")
@click.option("--mm", "mm", metavar="ROOT",
              help="init_mm (default for kernel addresses), efi_mm, a pid or pgd:PHYS (user addresses)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def vtop(core, symbols, live, qemu, addresses, mm, fmt) -> None:
    """Translate virtual addresses level by level, and say why one faults.

    As crash's vtop: for each VA, one line per level (table PA, index, entry
    PA, raw descriptor, decoded type), then where and why the walk stopped
    (page, block, contiguous run, empty or invalid entry, reserved type,
    table outside RAM or missing from the dump, loop), the permissions after
    table-level inheritance, the physical page's facts, and drgn's
    follow_phys, __pa() and the dump's PT_LOAD headers as checks. Non-present
    entries of user mms are decoded as the kernel encodes them (swap,
    migration, device-private, PROT_NONE, uffd-wp, markers). --format json
    has the schema mminspect.vtop/1.
    """
    vas = [_parse_va(a) for a in addresses]
    k = open_kernel(core, symbols, live, qemu)
    results = [do_vtop(k, va, mm) for va in vas]
    out = click.get_text_stream("stdout")
    if fmt == "json":
        vtop_json(results, k, out)
    else:
        vtop_text(results, out)


@main.command()
@target_options
@click.argument("addresses", nargs=-1, metavar="PHYS|pfn:N...")
@click.option("--from", "from_file", metavar="FILE", help="read addresses from FILE, one per line ('-': stdin)")
@click.option("--mm", "mm", default="all", show_default=True, metavar="ROOT",
              help="roots to search: all, init_mm, efi_mm, tramp, tasks, a pid or pgd:PHYS")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def identify(core, symbols, live, qemu, addresses, from_file, mm, fmt) -> None:
    """Say what physical pages are and which virtual addresses map them.

    For each address (hex PA, or pfn:N): if it is a page-table page, which
    roots reach it, at which level and VA span, its origin, ptlock and
    evidence; every VA of every root that maps it (one walk per root and one
    reverse map for all addresses); and what its struct page says (flags,
    type, refcount, mapping, memcg, slab cache). --format json has the
    schema mminspect.identify/1.
    """
    texts = list(addresses)
    if from_file:
        if from_file == "-":
            texts += [line for line in sys.stdin.read().split() if line]
        else:
            check_input(from_file, "list of addresses")
            with open(from_file) as f:
                texts += [w for line in f for w in line.split("#", 1)[0].split()]
    if not texts:
        raise MMInspectError("give addresses (PHYS or pfn:N) or --from FILE")
    k = open_kernel(core, symbols, live, qemu)
    pas = [parse_address(t, k.regime.page_shift) for t in texts]
    check_addresses(k, pas)
    roots = all_roots(k, mm)
    results = do_identify(k, pas, roots)
    out = click.get_text_stream("stdout")
    if fmt == "json":
        identify_json(results, k, [r.name for r in roots], out)
    else:
        identify_text(results, out)


@main.command()
@target_options
@click.argument("state_a", metavar="A")
@click.argument("state_b", metavar="[B]", required=False)
@click.option("--expect", "expect", metavar="SIMULATION.json",
              help="simulate-remove --format json output: does the simulated removal match what happened?")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def diff(core, symbols, live, qemu, state_a, state_b, expect, fmt) -> None:
    """Compare the page tables of two states of one kernel.

    A and B are dumps of the same kernel and boot (before and after a
    hot-remove) or a snapshot (mminspect snapshot -o FILE) and a dump; with
    B left out, B is the target (-c/-k/--qemu, or the drgn/gdb session).
    Prints the table pages freed, allocated and reused as another table,
    the mapping ranges added, removed or changed, and the NR_PAGETABLE
    change explained page by page; --expect checks a simulate-remove JSON
    against the tables really freed (exit 1 when it does not match).
    --format json has the schema mminspect.diff/1.
    """
    if expect and not os.path.isfile(expect):
        raise MMInspectError(f"{expect}: no such file")
    sim = load_simulation(expect) if expect else None

    src_a = _diff_source(state_a, symbols)
    if state_b:
        src_b, name_b = _diff_source(state_b, symbols), state_b
    else:
        session = bound_kernel()
        if session is None and not (core or live or qemu):
            raise MMInspectError("give B, or the target to compare A with (-c VMCORE, -k, --qemu)")
        src_b = session or open_kernel(core, symbols, live, qemu)
        name_b = "this kernel" if session is not None else (core or ("running kernel" if live else qemu))
    # Refuse different kernels, regimes or boots before walking anything.
    check_same(src_a, state_a, src_b, name_b)
    d = do_diff(_diff_state(src_a, state_a), _diff_state(src_b, name_b))
    if sim is not None:
        expect_simulation(d, sim)
    out = click.get_text_stream("stdout")
    if fmt == "json":
        diff_json(d, out)
    else:
        diff_text(d, out)
    if d.expect is not None and not d.expect["matches"]:
        sys.exit(1)


@register_drgn_code("vtop")
def _vtop_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "vtop")
    mm = params.get("mm")
    arg = f", {_quote(mm)}" if mm else ""

    for text in params.get("addresses") or ():
        code.append(f"t = vtop(prog, {_parse_va(text):#x}{arg})\n")
        code.append("# t.steps (level_name, table, index, entry, desc, kind), t.stop, t.reason, t.pa,\n"
                    "# t.effective, t.cont, t.nonpresent, t.page, t.checks\n"
                    "print(t)\nfor step in t.steps:\n    print(step)\n")
    return code


@register_drgn_code("identify")
def _identify_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "identify_pages")
    addrs = ", ".join(_quote(a) for a in params.get("addresses") or ())
    code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
    code.add_import("mminspect.identify", "parse_address")
    code.append("shift = mminspect_kernel(prog).regime.page_shift\n"
                f"addrs = [parse_address(a, shift) for a in [{addrs}]]\n")
    if params.get("from_file"):
        code.append(f"with open({_quote(params['from_file'])}) as f:\n"
                    "    addrs += [parse_address(w, shift) for line in f for w in line.split('#', 1)[0].split()]\n")
    code.append(f"for ident in identify_pages(prog, addrs, mm={_quote(params.get('mm') or 'all')}):\n"
                "    # ident.tables (page-table records), ident.mapped_at (root, va, level, attrs), ident.page\n"
                "    print(hex(ident.phys), ident.is_page_table, ident.tables, ident.mapped_at, ident.page)\n")
    return code


@register_drgn_code("diff")
def _diff_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "diff_page_tables")
    code.append(f"d = diff_page_tables(prog, {_quote(params['state_a'])})\n"
                "for line in d.explanation():\n    print(line)\n"
                "print(len(d.freed), 'freed', len(d.allocated), 'allocated', len(d.moved), 'reused')\n"
                "for root, ranges in d.mappings.items():\n    for r in ranges:\n        print(root, r)\n")
    return code
