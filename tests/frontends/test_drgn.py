"""The drgn front end: the ``mminspect`` command in drgn's CLI prints what
the shell CLI prints on the same dump, honours redirections and pipes, reports
user errors as CommandError, and ``--drgn`` prints Python that runs and gives
the same records; the helpers follow drgn's conventions."""

import contextlib
import io
import json
import subprocess
import sys

import drgn
import pytest
from click.testing import CliRunner
from drgn.commands import CommandArgumentError, CommandError, CommandNotFoundError, run_command

import mminspect
from mminspect import drgn_plugin
from mminspect.cli import main as cli_main

from .conftest import need_tool

CASES = [
    ["walk", "--mm", "efi_mm"],
    ["walk", "--mm", "init_mm", "--tables"],
    ["walk", "--mm", "init_mm", "--format", "ptdump"],
    ["walk", "--mm", "efi_mm", "--format", "ptdump"],
    ["walk", "--mm", "efi_mm", "--format", "json", "--tables"],
    ["walk", "--mm", "1"],
    ["walk", "--mm", "vmemmap", "--range", "fffffc0000000000+1G"],
]

MARK = "=== mminspect case {} ==="


def _cli(core, symbols, args):
    argv = [args[0], "-c", str(core), *(["-s", str(symbols)] if symbols else []), *args[1:]]
    result = CliRunner().invoke(cli_main, argv)
    assert result.exit_code == 0, result.output
    return result.stdout


def _normalise(args, text):
    if "json" in args:
        doc = json.loads(text)
        doc.pop("stats")
        return doc
    return text


def _drgn_cli(core, symbols, cases):
    """Run every case in one ``drgn -c VMCORE -s VMLINUX -e ...`` process, as a
    user would, and split the output per case."""
    script = "from drgn.commands import run_command\n" + "".join(
        f"print({MARK.format(i)!r})\nrun_command(prog, {'mminspect ' + ' '.join(args)!r})\n" for i, args in enumerate(cases)
    )
    cmd = [need_tool("drgn"), "-q", "-c", str(core)]
    cmd += ["-s", str(symbols)] if symbols else ["--no-default-symbols"]
    proc = subprocess.run(cmd + ["-e", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = {}
    parts = proc.stdout.split("\n")
    current = None
    for line in parts:
        if line.startswith("=== mminspect case "):
            current = int(line.split()[3])
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {i: "\n".join(lines).rstrip("\n") + "\n" for i, lines in out.items()}


def test_drgn_command_equals_cli_on_real_dump(real_dump):
    got = _drgn_cli(real_dump.vmcore, real_dump.vmlinux, CASES)
    for i, args in enumerate(CASES):
        want = _cli(real_dump.vmcore, real_dump.vmlinux, args)
        assert _normalise(args, got[i]) == _normalise(args, want), args


def test_drgn_command_equals_cli_without_debug_info(synthetic_core):
    cases = [["walk"], ["walk", "--tables"], ["walk", "--format", "ptdump"]]
    got = _drgn_cli(synthetic_core, None, cases)
    for i, args in enumerate(cases):
        assert got[i] == _cli(synthetic_core, None, args), args


def _capture(prog, command):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_command(prog, command)
    return out.getvalue()


def _exec(code, prog):
    out = io.StringIO()
    glob = {"prog": prog}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<--drgn>", "exec"), glob)
    return glob, out.getvalue()


@pytest.mark.parametrize("mm", ["efi_mm", "init_mm", "1"])
def test_drgn_code_gives_the_same_records(real_prog, mm):
    code = _capture(real_prog, f"mminspect walk --mm {mm} --tables --drgn")
    assert "walk_page_tables(prog" in code and "import" in code
    glob, printed = _exec(code, real_prog)
    w = glob["walk"]
    ref = mminspect.walk(mminspect.open(prog=real_prog), mm)
    assert list(w.mappings()) == list(ref.mappings())
    assert list(w.tables()) == list(ref.tables())
    lines = printed.splitlines()
    assert lines == [repr(m) for m in ref.mappings()] + [repr(t) for t in ref.tables()] + [
        str(p) for p in ref.problems
    ]
    # ... and they are the records the command prints.
    text = _capture(real_prog, f"mminspect walk --mm {mm}")
    rows = [ln.split() for ln in text.splitlines() if ln[:1] in "0123456789abcdef" and "  " in ln]
    assert [(int(r[0], 16), int(r[1], 16), int(r[3], 16)) for r in rows] == [
        (m.va, m.end, m.pa) for m in ref.mappings()
    ]


@pytest.mark.parametrize("fmt", ["ptdump", "json"])
def test_drgn_code_prints_the_same_output(real_prog, fmt):
    args = f"walk --mm efi_mm --format {fmt}"
    code = _capture(real_prog, f"mminspect {args} --drgn")
    _, printed = _exec(code, real_prog)
    want = _capture(real_prog, f"mminspect {args}")
    assert _normalise(fmt, printed) == _normalise(fmt, want)


def test_capture_drgn_code(real_prog, tmp_path):
    out = tmp_path / "b.core"
    code = _capture(real_prog, f"mminspect capture -o {out} --mm init_mm --mm efi_mm --drgn")
    glob, _ = _exec(code, real_prog)
    assert glob["result"]["roots"] == ["init_mm", "efi_mm"]
    small = mminspect.open(core=str(out))
    assert list(mminspect.walk(small, "efi_mm").mappings()) == list(
        drgn_plugin.for_each_mapping(real_prog, "efi_mm")
    )


def test_redirection_and_pipe(real_prog, tmp_path):
    path = tmp_path / "efi.txt"
    assert _capture(real_prog, f"mminspect walk --mm efi_mm --format ptdump > {path}") == ""
    lines = path.read_text().splitlines()
    assert lines[0] == "---[ UEFI runtime start ]---"
    run_command(real_prog, f"mminspect walk --mm efi_mm | grep -c PTE > {tmp_path / 'n'}")
    # a pipe writes to the real stdout, so count through a file
    run_command(real_prog, f"mminspect walk --mm efi_mm | grep PTE > {tmp_path / 'pte'}")
    pte = (tmp_path / "pte").read_text().splitlines()
    assert pte and all("PTE" in ln for ln in pte)
    run_command(real_prog, f"mminspect walk --mm efi_mm >> {path}")
    assert len(path.read_text().splitlines()) > len(lines)


@pytest.mark.parametrize(
    "command,exc,needle",
    [
        ("mminspect walk --mm nosuchroot", CommandError, "unknown root"),
        ("mminspect walk --range 1000-2000", CommandError, "outside init_mm"),
        ("mminspect walk --bogus", CommandArgumentError, "--bogus"),
        ("mminspect walk -c /some/vmcore", CommandArgumentError, "target is this drgn program"),
        ("mminspect walk --qemu=/x.sock", CommandArgumentError, "target is this drgn program"),
        ("mminspect frobnicate", CommandArgumentError, "no subcommand 'frobnicate'"),
    ],
)
def test_user_errors_are_command_errors(real_prog, command, exc, needle):
    with pytest.raises(exc) as info:
        run_command(real_prog, command)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_help(real_prog):
    top = _capture(real_prog, "mminspect")
    assert "walk" in top and "capture" in top
    sub = _capture(real_prog, "mminspect walk -h")
    assert "--mm ROOT" in sub and "--drgn" in sub
    assert "--core" not in sub and "--qemu" not in sub


def test_enabled_only_for_linux_kernels():
    prog = drgn.Program()
    with pytest.raises(CommandNotFoundError):
        run_command(prog, "mminspect walk")


def test_not_arm64(tmp_path):
    # An x86-64 kernel program: the command exists (Linux kernel) but says why it cannot run.
    prog = drgn.Program()
    prog.set_core_dump(_x86_core(tmp_path))
    with pytest.raises(CommandError, match="arm64"):
        run_command(prog, "mminspect walk")


def _x86_core(tmp_path):
    """A minimal x86-64 ELF core with a VMCOREINFO note."""
    import struct

    desc = b"OSRELEASE=6.1\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)=ffffffff82000000\nKERNELOFFSET=0\n"
    name = b"VMCOREINFO\0"
    note = struct.pack("<III", len(name), len(desc), 0) + name.ljust(12, b"\0") + desc.ljust(
        (len(desc) + 3) & ~3, b"\0"
    )
    ehdr_size, phdr_size = 64, 56
    off = ehdr_size + phdr_size
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 0, off, 0, 0, len(note), len(note), 4)
    path = tmp_path / "x86.core"
    path.write_bytes(ehdr + phdr + note)
    return str(path)


def test_helpers_accept_objects(real_prog):
    from drgn.helpers.linux.pid import find_task

    task = find_task(real_prog, 1)
    by_pid = list(drgn_plugin.for_each_mapping(real_prog, 1))
    assert list(drgn_plugin.for_each_mapping(task)) == by_pid
    w = drgn_plugin.walk_page_tables(task.mm)
    assert w.root.name.startswith("mm 0x") and list(w.mappings()) == by_pid
    init = drgn_plugin.walk_page_tables(real_prog["init_mm"].address_of_())
    assert init.root.name == "init_mm"
    with pytest.raises(TypeError):
        drgn_plugin.walk_page_tables(real_prog["jiffies"])
    assert drgn_plugin.ptdump_check_wx(real_prog).startswith("Checked W+X mappings")
    assert drgn_plugin.mminspect_kernel(real_prog) is drgn_plugin.mminspect_kernel(real_prog)


def test_helpers_use_the_default_program(real_prog):
    old = None
    try:
        old = drgn.get_default_prog()
    except drgn.NoDefaultProgramError:
        pass
    drgn.set_default_prog(real_prog)
    try:
        first = next(drgn_plugin.for_each_mapping("efi_mm"))
        assert "PMD block" in repr(first)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            drgn_plugin.print_ptdump("efi_mm")
        assert out.getvalue().startswith("---[ UEFI runtime start ]---\n")
    finally:
        drgn.set_default_prog(old)


def test_api_path_imports_neither_click_nor_tabulate():
    code = (
        "import sys, mminspect, mminspect.drgn_plugin, mminspect.commands, mminspect.report.walk;"
        "mminspect.walk; assert 'click' not in sys.modules and 'tabulate' not in sys.modules, "
        "[m for m in sys.modules if m in ('click', 'tabulate')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_helpers_are_documented_like_drgn_helpers():
    assert drgn_plugin.__doc__.lstrip().startswith("Page Tables (mminspect)\n---")
    assert list(drgn_plugin.__all__) == sorted(drgn_plugin.__all__)
    for name in drgn_plugin.__all__:
        doc = getattr(drgn_plugin, name).__doc__
        assert ">>> " in doc and ":raises" in doc, name


#: Arguments that exercise each subcommand on the Debian 6.1 boot dump
#: ({out} is a fresh file); subcommands not listed run with no arguments.
SUBCOMMAND_ARGS = {
    "walk": ["--mm", "efi_mm", "--tables"],
    "simulate-remove": ["--range", "78000000+128M", "--force", "--tables"],
    "snapshot": ["-o", "{out}"],
    "classify": ["--mm", "init_mm", "--summary"],
    "audit": [],
}


@pytest.mark.parametrize("name", sorted(set(SUBCOMMAND_ARGS) | {"capture"}))
def test_every_subcommand_equals_cli(real_dump, real_prog, tmp_path, name):
    from mminspect import commands

    if name not in commands.subcommand_names("drgn"):
        pytest.skip(f"no {name} subcommand yet")
    args = SUBCOMMAND_ARGS.get(name, ["-o", "{out}"] if name == "capture" else [])
    cli_args = [a.replace("{out}", str(tmp_path / "cli.out")) for a in args]
    drgn_args = [a.replace("{out}", str(tmp_path / "drgn.out")) for a in args]
    argv = [name, "-c", str(real_dump.vmcore), "-s", str(real_dump.vmlinux), *cli_args]
    cli = CliRunner().invoke(cli_main, argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = run_command(real_prog, "mminspect " + " ".join([name, *drgn_args]))
    assert (status or 0) == cli.exit_code, cli.output
    assert out.getvalue().replace("drgn.out", "cli.out") == cli.stdout


def test_new_cli_subcommands_appear_in_drgn(synthetic_core):
    """A subcommand added to the click group is in drgn with its options,
    on the session's program, with no front-end code."""
    import click

    from mminspect.cli import _errors, open_kernel, target_options

    @cli_main.command("echo-regime")
    @target_options
    @click.option("--upper", is_flag=True)
    @_errors
    def echo_regime(core, symbols, live, qemu, upper):
        """Print the translation regime."""
        text = open_kernel(core, symbols, live, qemu).regime.describe()
        click.echo(text.upper() if upper else text)

    try:
        prog = drgn.Program()
        prog.set_core_dump(str(synthetic_core))
        assert _capture(prog, "mminspect echo-regime --upper") == "4K PAGES, 48-BIT VA, 4 LEVELS\n"
        assert "echo-regime" in _capture(prog, "mminspect")
        with pytest.raises(CommandArgumentError, match="No such option"):
            run_command(prog, "mminspect echo-regime --lower")
    finally:
        del cli_main.commands["echo-regime"]


@pytest.mark.parametrize("args", [
    "--range 78000000+128M --force --format json",
    "--block 15 --force --policy v5.7 --format json",
])
def test_simulate_drgn_code_prints_the_same_json(real_prog, args):
    from mminspect import commands

    if "simulate-remove" not in commands.subcommand_names("drgn"):
        pytest.skip("no simulate-remove subcommand")
    code = _capture(real_prog, f"mminspect simulate-remove {args} --drgn")
    glob, printed = _exec(code, real_prog)
    assert printed == _capture(real_prog, f"mminspect simulate-remove {args}")
    assert glob["result"].simulated


def test_simulate_drgn_code_gives_the_same_findings(real_prog):
    from mminspect import commands

    if "simulate-remove" not in commands.subcommand_names("drgn"):
        pytest.skip("no simulate-remove subcommand")
    code = _capture(real_prog, "mminspect simulate-remove --range 78000000+128M --force --drgn")
    glob, printed = _exec(code, real_prog)
    ref = drgn_plugin.simulate_remove_memory(real_prog, 0x78000000, 128 << 20, force=True)
    assert glob["result"].findings == ref.findings and ref.findings
    assert len(printed.splitlines()) == 1 + len(ref.refusals) + len(ref.findings)
