"""vtop, identify and diff in drgn: the ``mminspect`` command prints what the
shell prints on the same dump, ``--drgn`` prints Python that gives the same
records, and the helpers take drgn Objects."""

from click.testing import CliRunner

import mminspect
from mminspect.cli import main as cli_main
from mminspect.drgn_plugin import identify_page_table, identify_pages, vtop

from .test_drgn import _capture, _exec


def _addresses(prog):
    k = mminspect.open(prog=prog)
    efi = mminspect.walk(k, "efi_mm")
    m = next(efi.mappings())
    init = mminspect.walk(k, "init_mm", k.layout.page_offset, k.layout.page_end)
    lin = next(init.mappings())
    return k, efi, m, lin


def test_commands_equal_cli(real_dump, real_prog):
    k, efi, m, lin = _addresses(real_prog)
    cases = [["vtop", f"{lin.va:x}", f"{lin.va + 0x1234:x}"],
             ["vtop", "--mm", "efi_mm", f"{m.va:x}", "--format", "json"],
             ["identify", f"{efi.root.phys:x}", f"pfn:{lin.pa >> k.regime.page_shift:#x}"]]
    for args in cases:
        cli = CliRunner().invoke(cli_main, [args[0], "-c", str(real_dump.vmcore), "-s", str(real_dump.vmlinux),
                                            *args[1:]])
        assert cli.exit_code == 0, cli.output
        got = _capture(real_prog, "mminspect " + " ".join(args))
        # A drgn session's program does not say which file it read: the
        # PT_LOAD check needs the dump file, which only the shell CLI opened.
        assert _no_pt_load(got) == _no_pt_load(cli.stdout), args


def _no_pt_load(text):
    import json

    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        for t in doc["translations"]:
            t["checks"] = [c for c in t["checks"] if c["source"] != "PT_LOAD"]
        return doc
    return [ln for ln in text.splitlines() if not ln.startswith("CHECK      PT_LOAD")]


def test_drgn_code_gives_the_same_records(real_prog):
    k, efi, m, lin = _addresses(real_prog)
    code = _capture(real_prog, f"mminspect vtop {lin.va:x} --drgn")
    glob, printed = _exec(code, real_prog)
    t = glob["t"]
    assert t.pa == vtop(real_prog, lin.va).pa == lin.pa
    assert printed.splitlines()[0] == repr(t)
    code = _capture(real_prog, f"mminspect identify {efi.root.phys:x} --drgn")
    glob, _ = _exec(code, real_prog)
    assert glob["ident"].is_page_table and glob["ident"].phys == efi.root.phys


def test_helpers(real_prog):
    k, efi, m, lin = _addresses(real_prog)
    t = vtop(real_prog, m.va, real_prog["efi_mm"].address_of_())
    assert t.pa == m.pa and t.root.name == "efi_mm"
    recs = identify_page_table(real_prog, efi.root.phys)
    assert any(r["root"] == "efi_mm" and r["level"] == "PGD" for r in recs)
    assert identify_page_table(real_prog, lin.pa) == [] or all(r["phys"] >> 12 == lin.pa >> 12 for r in recs)
    got = identify_pages(real_prog, [lin.pa])[0]
    assert any(x.root == "init_mm" and x.va == lin.va for x in got.mapped_at)
