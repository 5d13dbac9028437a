"""mminspect snapshot (what a simulation needs, saved) and simulate-remove (a hot-remove replayed): each subcommand with its ``--drgn`` code."""

import os
import sys
from typing import Any, Dict

import click

from mminspect.cli.base import (
    _ONE_OF,
    _block_ids,
    _errors,
    _inputs,
    _proposal_range,
    main,
    open_kernel,
    parse_range,
    target_options,
)
from mminspect.errors import MMInspectError
from mminspect.files import check_output, target_files
from mminspect.findings import SEVERITIES
from mminspect.hotremove import (
    Proposal,
    Snapshot,
    available_policies,
    capture_snapshot,
    get_policy,
    select_policy,
    simulate,
)
from mminspect.hotremove.policy import load_plugin_file
from mminspect.report.simulate import simulate_json, simulate_text
from mminspect.session import CodeSnippet, UsageError, _hex, _quote, register_drgn_code


def _parse_options(pairs):
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise MMInspectError(f"bad --policy-option {p!r}: expected KEY=VALUE")
        if key in out:
            raise MMInspectError(f"--policy-option {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _load_or_capture(snapshot, core, symbols, live, qemu):
    if snapshot:
        return Snapshot.load(snapshot)
    return capture_snapshot(open_kernel(core, symbols, live, qemu))


@main.command()
@target_options
@click.option("-o", "--output", required=True, metavar="FILE", help="where to write the snapshot (.npz)")
@click.option("--force", is_flag=True, help="overwrite FILE if it exists")
@_errors
def snapshot(core, symbols, live, qemu, output, force) -> None:
    """Capture what a hot-remove simulation needs, for offline runs.

    The snapshot holds every init_mm table page with its entries, parents and
    classification, the efi_mm tables, memory sections and blocks, and the
    era facts of the kernel. simulate-remove --snapshot FILE runs on it
    repeatably; two snapshots can be compared with simulate-remove --diff.
    """
    inputs = _inputs(core, symbols)
    check_output(output, inputs, force)  # before the work, and again before the rename
    k = open_kernel(core, symbols, live, qemu)
    snap = capture_snapshot(k)
    snap.save(output, force=force, inputs=[*inputs, *target_files(k.target)])
    click.echo(f"{output}: {len(snap.tables)} table pages, {len(snap.blocks)} memory blocks, "
               f"{os.path.getsize(output)} bytes")


@main.command("simulate-remove")
@target_options
@click.option("--range", "range_", metavar="START-END", help="physical range to remove (hex; START+SIZE works)")
@click.option("--block", "blocks", multiple=True, metavar="N[..M]",
              help="memory block id, or ids N..M inclusive (repeatable)")
@click.option("--dimm", metavar="ID", help="a QEMU pc-dimm's range, asked of the --qemu SOCKET")
@click.option("--policy", metavar="ERA", help="freeing rules to replay (default: chosen from the dump); see --list-policies")
@click.option("--policy-option", "policy_options", multiple=True, metavar="KEY=VALUE",
              help="policy option, e.g. dtor_fix=yes for v6.16")
@click.option("--snapshot", "snapshot_path", metavar="FILE", help="simulate on a saved snapshot instead of a target")
@click.option("--force", is_flag=True, help="simulate even where the kernel would refuse the removal")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--tables", is_flag=True, help="list every freed and kept table page")
@click.option("--fail-on", type=click.Choice(list(SEVERITIES)), default="error",
              show_default=True, help="exit 1 if a finding of this severity or worse fires")
@click.option("--list-policies", is_flag=True, help="list the registered policies and exit")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE",
              help="load a policy plugin from a Python file (see plugins/example_policy)")
@_errors
def simulate_remove(core, symbols, live, qemu, range_, blocks, dimm, policy, policy_options, snapshot_path,
                    force, fmt, tables, fail_on, list_policies, plugins) -> None:
    """Simulate a memory hot-remove and flag every unbalanced pgtable dtor.

    Replays the page-table freeing code of a kernel era on the captured state
    (vmemmap_free() per section, then __remove_pgd_mapping() for the linear
    map, with free_empty_tables()' floor/ceiling rule; or the 2017 RFC's
    recursive removal) and judges every freed table page against its struct
    page: dtor without ctor, ctor without dtor, memblock page freed to buddy,
    kernel-image table freed, shared table freed, ptlock held, efi_mm touched.

    Before any table is freed it replays the kernel's offline path, block by
    block as an ACPI eject does: the range offline_pages() gets (after a
    memmap_on_memory block's own memmap) and every memory-notifier check of
    the dump's era, with the kernel's own message; one refused block stops
    the eject and nothing is removed. A check the dump cannot decide is
    listed as unchecked, never passed.

    \b
    Exit status: 0 clean, 1 a finding at or above --fail-on,
                 3 the kernel would refuse the removal (also with --force),
                 2 bad input.
    """
    for path in plugins:
        load_plugin_file(path)
    if list_policies:
        for name, cls in sorted(available_policies().items()):
            click.echo(f"{name:<12} {cls.summary}")
        return
    want = _proposal_range(range_, blocks, dimm, qemu, "--range")
    if want is None:
        raise MMInspectError(_ONE_OF.format("--range"))
    range_ = want[0]
    options = _parse_options(policy_options)
    snap = _load_or_capture(snapshot_path, core, symbols, live, qemu)
    if range_:
        start, end = parse_range(range_)
        proposal = Proposal(start, end)
    else:
        proposal = Proposal.from_blocks(_block_ids(blocks), snap.kernel["block_size"])
    pol = get_policy(policy, snap.era, options) if policy else select_policy(snap.era, options)
    result = simulate(snap, proposal, pol, force=force)
    out = click.get_text_stream("stdout")
    if fmt == "json":
        simulate_json(result, snap, out)
    else:
        simulate_text(result, snap, out, tables=tables, fail_on=fail_on)
    if any(r.fatal for r in result.refusals):
        sys.exit(3)  # the kernel refuses, --force or not

    if any(SEVERITIES.index(f.severity) >= SEVERITIES.index(fail_on) for f in result.findings):
        sys.exit(1)


@register_drgn_code("snapshot")
def _snapshot_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "snapshot_page_tables")
    code.append("snap = snapshot_page_tables(prog)\n")
    code.append(f"snap.save({_quote(params['output'])})\n")
    code.append("print(len(snap.tables), 'table pages,', len(snap.blocks), 'memory blocks')\n")
    return code


@register_drgn_code("simulate-remove")
def _simulate_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    if params.get("list_policies"):
        code.add_import("mminspect.hotremove", "available_policies")
        code.append("for name, policy in sorted(available_policies().items()):\n"
                    "    print(name, policy.summary)\n")
        return code
    code.add_import("mminspect.drgn_plugin", "simulate_remove_memory")
    args = []
    snap = params.get("snapshot_path")
    if snap:
        code.add_import("mminspect.hotremove", "Snapshot")
        code.append(f"snap = Snapshot.load({_quote(snap)})\n")
    elif params.get("blocks") or params.get("fmt") == "json":
        code.add_import("mminspect.drgn_plugin", "snapshot_page_tables")
        code.append("snap = snapshot_page_tables(prog)\n")
        snap = True
    if params.get("range_"):
        start, end = parse_range(params["range_"])
        args += [_hex(start), _hex(end - start)]
    elif params.get("blocks"):
        ids = sorted(set(params["blocks"]))
        code.append('block_size = snap.kernel["block_size"]\n')
        args += [f"{ids[0]} * block_size", f"{len(ids)} * block_size"]
    else:
        raise UsageError("give the memory to remove with --range START-END or --block N (one of them)")
    if params.get("policy"):
        args.append(f"policy={_quote(params['policy'])}")
    opts = dict(p.partition("=")[::2] for p in params.get("policy_options") or ())
    if opts:
        args.append("options={" + ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in opts.items()) + "}")
    if params.get("force"):
        args.append("force=True")
    if snap:
        args.append("snapshot=snap")
    code.append(f"result = simulate_remove_memory(prog, {', '.join(args)})\n")
    if params.get("fmt") == "json":
        code.add_import("sys")
        code.add_import("mminspect.report.simulate", "simulate_json")
        code.append("simulate_json(result, snap, sys.stdout)\n")
        return code
    code.append(
        "print(result.policy)\n"
        "for refusal in result.refusals:\n"
        "    print(refusal)\n"
        "for finding in result.findings:\n"
        "    # finding.severity, .rule, .phys, .level, .origin, .ptlock, .routine, .sentence\n"
        "    print(finding.severity, finding.rule, hex(finding.phys), finding.level, finding.sentence)\n"
    )
    return code
