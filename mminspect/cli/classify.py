"""mminspect classify (who allocated each table page, its ptlock) and audit (NR_PAGETABLE): each subcommand with its ``--drgn`` code."""

import click

from mminspect.classify import audit as do_audit, classifier_for, classify_walk, resolve_roots
from mminspect.cli.base import _errors, _incomplete, _progress, main, open_kernel, target_options
from mminspect.live import settle_audit
from mminspect.report.classify import audit_json, audit_text, classify_json, classify_text
from mminspect.session import CodeSnippet, register_drgn_code
from mminspect.walk import walk as do_walk


@main.command()
@target_options
@click.option("--mm", "mm", default="init_mm", show_default=True, metavar="ROOT",
              help="init_mm, efi_mm, vmemmap, tramp, a pid, pgd:PHYS, tasks (every task's mm) or all")
@click.option("--summary", is_flag=True, help="counts by root x level x origin x ptlock instead of one row per table")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=True, help="progress on stderr when it is a terminal")
@_errors
def classify(core, symbols, live, qemu, mm, summary, fmt, progress) -> None:
    """Classify every page-table page by allocator origin and ptlock state.

    For each table page of the walked roots: who allocated it (kernel-image
    static table by symbol, memblock, buddy with ctor, buddy without ctor,
    slab, altmap, unknown), its split-ptlock state (n/a, initialised,
    inline-zero, held, missing, stale, dangling), the region its span covers
    and the evidence from its struct page. Origins this kernel's allocation
    sites would not produce are listed as findings. --format json has the
    schema mminspect.classify/1.

    \b
    Exit status: 0 done; 1 a walk could not see part of its tree (one
                 line on stderr, as for walk); 2 bad input.
    """
    k = open_kernel(core, symbols, live, qemu)
    # classify_roots(), keeping the walks to say when one was incomplete
    walks = [do_walk(k, root, _progress(progress)) for root in resolve_roots(k, mm)]
    c = classifier_for(k)
    classes = [classify_walk(k, w, c) for w in walks]
    out = click.get_text_stream("stdout")
    if fmt == "json":
        classify_json(classes, out, summary=summary)
    else:
        classify_text(classes, out, summary=summary)
    _incomplete(out, walks)


@main.command()
@target_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def audit(core, symbols, live, qemu, fmt) -> None:
    """Audit NR_PAGETABLE against the pages typed as page tables.

    Reads the kernel's exact counter (per node: vm_stat plus every CPU's
    vm_node_stat_diff), scans the whole memmap for pages with the page-table
    type, and walks init_mm, efi_mm, the KPTI trampoline and every task's
    mm. Prints the difference and the pages that explain it: typed pages no
    root reaches, tables without a ctor, tables reachable from two roots,
    tables spanning hot-added memory. --format json has the schema
    mminspect.audit/1.
    """
    k = open_kernel(core, symbols, live, qemu)
    result = settle_audit(k, do_audit(k))
    out = click.get_text_stream("stdout")
    if fmt == "json":
        audit_json(result, out)
    else:
        audit_text(result, out)


def _register_classify_drgn_code() -> None:
    @register_drgn_code("classify")
    def _classify_code(params):
        code = CodeSnippet()
        code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
        code.add_import("mminspect.classify", "classify_roots", "resolve_roots")
        mm = params.get("mm", "init_mm")
        code.append(f'k = mminspect_kernel(prog)\nclasses = classify_roots(k, resolve_roots(k, "{mm}"))\n')
        code.append(
            "for cls in classes:\n"
            "    print(cls.root.name, cls.summary())\n"
            "    for t in cls:\n"
            "        # t.phys, .level_name, .region, .origin, .allocator, .ptlock, .expected, .evidence\n"
            "        print(t.phys, t.level_name, t.region, t.origin, t.ptlock, t.evidence)\n"
            "    for finding in cls.findings:\n"
            "        print(finding)\n"
        )
        return code

    @register_drgn_code("audit")
    def _audit_code(params):
        code = CodeSnippet()
        code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
        code.add_import("mminspect.classify", "audit")
        code.append("result = audit(mminspect_kernel(prog))\n"
                    "print(result.counter, result.typed_count, result.difference)\n"
                    "for line in result.explanation():\n    print(line)\n")
        return code


_register_classify_drgn_code()
