"""mminspect walk (any tree, in the kernel's ptdump format too) and capture (an evidence bundle): each subcommand with its ``--drgn`` code."""

from typing import Any, Dict

import click

from mminspect.cli.base import (
    _errors,
    _incomplete,
    _inputs,
    _progress,
    main,
    open_kernel,
    parse_range,
    target_options,
)
from mminspect.errors import MMInspectError
from mminspect.files import check_output
from mminspect.report.ptdump import ptdump_lines
from mminspect.report.walk import walk_json, walk_text
from mminspect.session import CodeSnippet, bound_target, register_drgn_code
from mminspect.target import open_target
from mminspect.walk import walk as do_walk


def _root_args(params: Dict[str, Any]) -> str:
    start, end = parse_range(params.get("range_"))
    args = f"{params.get('mm', 'init_mm')!r}".replace("'", '"')
    if start is not None:
        args += f", start={start:#x}, end={end:#x}"
    return args


@main.command()
@target_options
@click.option("--mm", "mm", default="init_mm", show_default=True, metavar="ROOT",
              help="init_mm, efi_mm, vmemmap, a pid, or pgd:PHYS (any user-half pgd)")
@click.option("--range", "range_", metavar="START-END", help="only VAs in START-END or START+SIZE (hex)")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "ptdump"]), default="table",
              show_default=True, help="ptdump: the kernel's kernel_page_tables/efi_page_tables format")
@click.option("--tables", is_flag=True, help="also list every table page with its parents")
@click.option("--progress/--no-progress", default=True, help="progress on stderr when it is a terminal")
@_errors
def walk(core, symbols, live, qemu, mm, range_, fmt, tables, progress) -> None:
    """Walk one page-table tree and print its mappings.

    Reads each table page once, decodes descriptors as the MMU does (4K/16K/64K
    granules, 2 to 5 levels, LPA/LPA2, runtime-folded top levels) and coalesces
    contiguous leaf ranges. init_mm needs only VMCOREINFO; efi_mm and pids need
    debug info. The table format ends with the kernel's DEBUG_WX verdict for
    init_mm; --format json has the schema mminspect.walk/1.

    \b
    Exit status: 0 the whole tree was seen; 1 part of it could not be
                 (a loop, a table outside RAM or missing from the dump:
                 one line on stderr, the output leaves it out); 2 bad input.
    """
    start, end = parse_range(range_)
    k = open_kernel(core, symbols, live, qemu)
    root = k.root(mm, start, end)
    w = do_walk(k, root, _progress(progress))
    out = click.get_text_stream("stdout")
    if fmt == "json":
        walk_json(w, out, tables=tables)
    elif fmt == "ptdump":
        for line in ptdump_lines(w):
            out.write(line + "\n")
    else:
        walk_text(w, out, tables=tables)
    _incomplete(out, [w])


@main.command()
@target_options
@click.option("-o", "--output", required=True, metavar="FILE", help="the bundle to write")
@click.option("--mm", "roots", multiple=True, default=("init_mm", "efi_mm"), show_default=True,
              metavar="ROOT", help="roots to capture (repeatable)")
@click.option("--force", is_flag=True, help="overwrite FILE if it exists")
@_errors
def capture(core, symbols, live, qemu, output, roots, force) -> None:
    """Write a small evidence bundle that opens without a vmlinux.

    The bundle is an ELF core holding only the pages mminspect reads for the
    given roots (table pages, the struct pages and globals the analyses use),
    VMCOREINFO, and the type layout they need. Opening it with -c gives the
    same output as the full dump, so it can go on a mailing list instead of a
    multi-GB vmcore and a 300 MB debug package.
    """
    from mminspect.capture import capture as do_capture

    target = bound_target()
    if target is None and not (core or live or qemu):
        raise MMInspectError("capture needs a target: -c VMCORE, -k or --qemu SOCKET")
    inputs = _inputs(core, symbols)
    check_output(output, inputs, force)  # before the work, and again before the rename
    result = do_capture(target or open_target(core=core, symbols=symbols, kernel=live, qemu=qemu),
                        output, roots, force, inputs=inputs)
    click.echo(f"{output}: {result['bytes']} bytes, {result['pages']} pages, roots {', '.join(result['roots'])}")
    for root, why in result["skipped"].items():
        click.echo(f"  skipped {root}: {why}", err=True)


@register_drgn_code("walk")
def _walk_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.drgn_plugin", "walk_page_tables")
    code.append(f"walk = walk_page_tables(prog, {_root_args(params)})\n")
    fmt = params.get("fmt", "table")
    if fmt == "ptdump":
        code.add_import("mminspect.report.ptdump", "ptdump_lines")
        code.append("for line in ptdump_lines(walk):\n    print(line)\n")
        return code
    if fmt == "json":
        code.add_import("sys")
        code.add_import("mminspect.report.walk", "walk_json")
        code.append(f"walk_json(walk, sys.stdout, tables={bool(params.get('tables'))})\n")
        return code
    code.append(
        "for mapping in walk.mappings():\n"
        "    # mapping.va, .end, .size, .pa, .level_name, .kind, .attrs, .effective\n"
        "    print(mapping)\n"
    )
    if params.get("tables"):
        code.append(
            "for table in walk.tables():\n"
            "    # table.phys, .level_name, .va, .span, .valid, .entries, .parents\n"
            "    print(table)\n"
        )
    code.append("for problem in walk.problems:\n    print(problem)\n")
    return code


@register_drgn_code("capture")
def _capture_code(params: Dict[str, Any]) -> CodeSnippet:
    code = CodeSnippet()
    code.add_import("mminspect.capture", "capture")
    code.add_import("mminspect.drgn_plugin", "mminspect_kernel")
    roots = ", ".join(f'"{r}"' for r in params.get("roots") or ("init_mm", "efi_mm"))
    code.append(
        f"result = capture(mminspect_kernel(prog).target, {str(params['output'])!r}, "
        f"roots=({roots},), force={bool(params.get('force'))})\n".replace("'", '"')
    )
    code.append("print(result)\n")
    return code
