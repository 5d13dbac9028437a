"""``mminspect map`` in a drgn session: ``%mminspect map`` writes what the
shell CLI writes for the same dump, and its ``--drgn`` code, run in the
session, builds the same mminspect.map/1 data."""

import contextlib
import io
import json

import pytest
from click.testing import CliRunner
from drgn.commands import CommandError, run_command

from mminspect.cli import main as cli_main


def _json(path):
    d = json.loads(path.read_text())
    d["roots"] = [{k: v for k, v in r.items() if k != "problems"} for r in d["roots"]]
    return d


def test_drgn_map_equals_cli(real_dump, real_prog, tmp_path):
    cli_out, drgn_out = tmp_path / "cli.json", tmp_path / "drgn.json"
    args = ["map", "--format", "json", "--mm", "init_mm", "--simulate", "78000000+128M"]
    cli = CliRunner().invoke(cli_main, [*args, "-c", str(real_dump.vmcore), "-s", str(real_dump.vmlinux),
                                        "-o", str(cli_out)])
    assert cli.exit_code == 0, cli.output
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_command(real_prog, "mminspect " + " ".join([*args, "-o", str(drgn_out)]))
    assert out.getvalue().replace("drgn.json", "cli.json") == cli.stdout
    assert _json(drgn_out) == _json(cli_out)
    # the file exists now: the session refuses to write over it, as the CLI does
    with pytest.raises(CommandError, match="exists"):
        run_command(real_prog, "mminspect " + " ".join([*args, "-o", str(drgn_out)]))


def test_map_drgn_code_builds_the_same_data(real_dump, real_prog, tmp_path):
    out = tmp_path / "cli.json"
    cli = CliRunner().invoke(cli_main, ["map", "--format", "json", "--block", "15", "-c", str(real_dump.vmcore),
                                        "-s", str(real_dump.vmlinux), "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    code = io.StringIO()
    with contextlib.redirect_stdout(code):
        run_command(real_prog, f"mminspect map --format json --block 15 -o {tmp_path / 'code.json'} --drgn")
    glob = {"prog": real_prog}
    exec(compile(code.getvalue(), "<--drgn>", "exec"), glob)
    assert _json(tmp_path / "code.json") == _json(out)
