"""mminspect -k inside a real arm64 userspace, against what the running kernel
reports about itself.

The guest runs vmcores.userspace's Debian sid arm64 userspace (python3,
python3-drgn, numpy, click, tabulate; mminspect from its wheel; the kernel's
vmlinux at /usr/lib/debug) on the newest sid kernel, under QEMU with UEFI,
KASLR and ACPI memory hot-plug. Every command runs inside the guest, as root,
through the serial-console agent, as an engineer logged into an arm64 server
would type it. The references:

* QEMU's view of the same memory (drgn's QMP target from the host): efi_mm
  and the kernel image do not change, so the in-guest walk over /proc/kcore
  must equal it byte for byte; init_mm may differ only where the kernel
  changes it while it runs (vmalloc, KFENCE);
* the guest's own reports: /proc/kallsyms (KASLR), nr_page_table_pages after
  vm.stat_refresh, memory block states, dmesg;
* the real removal of a hot-added DIMM (QMP device_del), against the
  prediction made inside the guest before it.

Command times under TCG are recorded (``record_property``) and printed.
Skips, with the reason, when QEMU or the kernel is missing (the kernel is
fetched when MMINSPECT_MAKE_VMCORES lists it, as CI does)."""

from __future__ import annotations

import gc
import json
import os
import re

import pytest
from click.testing import CliRunner

from mminspect.cli import main as cli_main

from .conftest import boot_userspace_guest, ptdump_sections as _sections

KERNEL_ID = os.environ.get("MMINSPECT_INGUEST_KERNEL", "debian-sid-cloud-arm64")


@pytest.fixture(scope="module")
def guest():
    yield from boot_userspace_guest(KERNEL_ID)


# -- walk --------------------------------------------------------------------------------


def test_walk_efi_mm_equals_qemus_view(guest, record_property):
    """efi_mm does not change after boot: read through /proc/kcore inside the
    guest it must equal QEMU's physical view of the same guest."""
    inside_json = json.loads(guest.ok("mminspect -k walk --mm efi_mm --format json",
                                      "walk --mm efi_mm --format json (first run: byte-compiles)"))
    host_json = json.loads(guest.host("walk", "--mm", "efi_mm", "--format", "json"))
    inside_json.pop("stats"), host_json.pop("stats")  # timings
    assert inside_json == host_json
    assert inside_json["mappings"] and inside_json["root"]["name"] == "efi_mm"
    guest.host("walk", "--mm", "efi_mm")  # the text form, for the tests below
    # KASLR: the offset mminspect found inside equals the host's, and is the
    # one the guest's kallsyms shows for _text.
    assert inside_json["kernel"]["kaslr_offset"] != 0
    text = int(guest.ok("grep -w _text /proc/kallsyms").split()[0], 16)
    from drgn import Program

    p = Program()
    p.set_qemu_qmp(guest.socket)
    p.load_debug_info([guest.vmlinux])
    host_text = p.symbol("_text").address
    del p  # QEMU serves one client per QMP socket: let the next one in
    gc.collect()
    assert host_text == text
    record_property("kaslr_offset", hex(inside_json["kernel"]["kaslr_offset"]))


def test_walk_init_mm_ptdump_equals_qemus_view(guest):
    """init_mm inside vs outside: every region the running kernel does not
    change on its own is the same, line for line."""
    inside = guest.ok("mminspect -k walk --format ptdump", "walk --format ptdump")
    with guest.lg.paused():
        outside = guest.host("walk", "--format", "ptdump")
    a, b = _sections(inside), _sections(outside)
    assert list(a) == list(b)  # the same markers in the same order
    assert len(a) > 8
    # vmalloc (task stacks, the walker's own process) and the KFENCE pool in
    # the linear map change while the guest runs: compared below by count only.
    moving = {"vmalloc() area", "Linear Mapping start"}
    for name in a:
        if name not in moving:
            assert a[name] == b[name], name
    # the linear map: the same ranges up to KFENCE's page-granular pool
    diff = [l for l in set(a["Linear Mapping start"]) ^ set(b["Linear Mapping start"])]
    assert len(diff) <= 2 * 64, diff[:10]


# -- classify, audit -------------------------------------------------------------------


def test_classify_efi_mm_equals_qemus_view(guest):
    inside = guest.ok("mminspect -k classify --mm efi_mm", "classify --mm efi_mm")
    assert inside == guest.host("classify", "--mm", "efi_mm")
    summary = guest.ok("mminspect -k classify --summary", "classify --summary (init_mm)")
    assert "no findings" in summary, summary


def test_audit_on_the_running_kernel(guest, record_property):
    """The audit's exact counter against the guest's own nr_page_table_pages
    after vm.stat_refresh, read right before and right after it; nothing the
    kernel changed while it read is reported as a finding."""
    before = guest.vmstat_refreshed()
    out = guest.ok("mminspect -k audit --format json > /tmp/audit.json & p=$!; wait $p; echo $p",
                   "audit --format json")
    after = guest.vmstat_refreshed()
    pid = int(out.split()[0])
    a = json.loads(guest.ok("cat /tmp/audit.json"))
    own = a["roots"].get(f"pid {pid}")
    assert own, f"the audit's own process (pid {pid}) among its roots: {sorted(a['roots'])}"
    record_property("nr_page_table_pages", {"before": before, "audit": a["counter"], "after": after,
                                            "typed": a["typed_pages"], "own_tables": own})
    # The guest holds still but for the audit: whatever the audit's own
    # process held at each moment comes on top of what the guest has without
    # it, never less (a misread memmap or counter would show fewer).
    assert before == after, (before, after)
    assert a["counter"] >= before and a["typed_pages"] >= before, (before, a["counter"], a["typed_pages"])
    # Every page typed, checked again: on 7.2 every kernel table is ctor'd.
    assert a["expected_ctor_missing"] == [], a["expected_ctor_missing"]
    unexplained = [u for u in a["unreachable_typed"] if "RCU" not in u["hint"] and "pending" not in u["hint"]]
    record_property("unexplained_unreachable_typed", len(unexplained))
    if unexplained:
        # Open (seen on 7.2 in two runs, counter = typed exactly: 229 and 258):
        # typed pages that no walked root reaches, still typed 5 s later and
        # in no task mm walked again. Not yet explained, so not hidden either.
        pytest.xfail(f"{len(unexplained)} typed page(s) no root reaches, still typed when read again "
                     f"(first {unexplained[0]['phys']:#x}): not explained yet")


# -- the errors ----------------------------------------------------------------------


def test_not_root(guest):
    rc, out, err = guest.run("su user -c 'mminspect -k walk'", "su user -c 'mminspect -k walk'")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "mminspect: error: /proc/kcore: permission denied: reading the running kernel needs root "
        "(run: sudo mminspect ... -k)"], err


def test_no_proc(guest):
    rc, out, err = guest.run("umount /proc; mminspect -k walk; rc=$?; mount -t proc proc /proc; exit $rc",
                             "mminspect -k walk without /proc")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "mminspect: error: /proc/kcore: /proc is not mounted: mount it (mount -t proc proc /proc) and run again"], err


# -- snapshot, capture, drgn -----------------------------------------------------------


def test_capture_inside_reads_like_the_guest(guest, tmp_path):
    """A bundle captured inside the guest, copied out, gives on the host the
    walk of efi_mm the guest printed (which equals QEMU's view of it)."""
    out = guest.ok("mkdir -p /tmp/ev && mminspect -k capture -o /tmp/ev/ev.core", "capture -o FILE")
    assert re.match(r"/tmp/ev/ev\.core: \d+ bytes, \d+ pages, roots init_mm, efi_mm", out), out
    guest.lg.guest.fetch_dir("/tmp/ev", tmp_path / "ev")
    inside = guest.host("walk", "--mm", "efi_mm")  # = the guest's own walk (test_walk_efi_mm_equals_qemus_view)
    r = CliRunner().invoke(cli_main, ["walk", "-c", str(tmp_path / "ev" / "ev.core"), "--mm", "efi_mm"])
    assert r.exit_code == 0, r.output
    assert r.stdout == inside


def test_drgn_k_session(guest):
    """drgn -k with %mminspect (the drgn.plugins entry point of the wheel) and
    the helpers, in the guest."""
    script = ("from drgn.commands import run_command\n"
              "run_command(prog, 'mminspect walk --mm efi_mm')\n"
              "from mminspect.drgn_plugin import *\n"
              "print(next(for_each_page_table('efi_mm')))\n"
              "print(ptdump_check_wx())\n")
    rc, out, err = guest.run(f"drgn -k -q -e {_sh_quote(script)}", "drgn -k -e (%mminspect walk, helpers)")
    assert rc == 0, err
    cli = guest.host("walk", "--mm", "efi_mm")
    assert out.startswith(cli), out[:2000]
    rest = out[len(cli):].splitlines()
    assert re.fullmatch(r"TablePage\(PGD phys=0x[0-9a-f]+ va=0x0\+0x[0-9a-f]+ valid=\d+/\d+ parents=1\)", rest[0]), rest
    assert rest[1] == "Checked W+X mappings: passed, no W+X pages found"


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# -- a live removal, end to end --------------------------------------------------------


def test_live_removal_predicted_inside_the_guest(guest, tmp_path, record_property):
    """Hot-add a DIMM, predict its removal from inside the guest, remove it
    through QEMU, and compare: the tables freed (snapshots before and after,
    taken inside), NR_PAGETABLE and dmesg."""
    from mminspect.hotremove import diff_snapshots
    from mminspect.hotremove.snapshot import Snapshot

    lg = guest.lg
    dimm = lg.hotadd(ident="dimm0")
    blocks = f"{dimm['blocks'][0]}..{dimm['blocks'][-1]}"
    states = guest.ok("for b in " + " ".join(str(b) for b in dimm["blocks"])
                      + "; do cat /sys/devices/system/memory/memory$b/state; done").split()
    assert states == ["online"] * len(dimm["blocks"])
    guest.ok("mkdir -p /tmp/snaps && mminspect -k snapshot -o /tmp/snaps/before.snap", "snapshot -o FILE")
    rc, pred_out, err = guest.run(f"mminspect simulate-remove --snapshot /tmp/snaps/before.snap --block {blocks} "
                                  "--format json", "simulate-remove --snapshot FILE --block N..M")
    assert rc in (0, 1), err
    predicted = json.loads(pred_out)
    assert predicted["simulated"] and not predicted["refusals"], predicted["refusals"]
    # The same prediction straight from the running kernel.
    rc, live_out, err = guest.run(f"mminspect -k simulate-remove --block {blocks} --format json",
                                  "simulate-remove -k --block N..M")
    assert rc in (0, 1), err
    assert {t["phys"] for t in json.loads(live_out)["freed"]} == {t["phys"] for t in predicted["freed"]}
    # Boot memory: the kernel refuses to offline it, and so does the prediction.
    rc, refused, err = guest.run("mminspect simulate-remove --snapshot /tmp/snaps/before.snap --block 8")
    assert rc == 3 and "Boot memory" in refused, refused + err
    nr_before = guest.vmstat_refreshed()
    dmesg_before = guest.ok("dmesg").splitlines()
    lg.hotremove(ident="dimm0")
    nr_after = guest.vmstat_refreshed()
    dmesg_new = guest.ok("dmesg").splitlines()[len(dmesg_before):]
    for b in dimm["blocks"]:
        rc, _, _ = guest.run(f"[ -e /sys/devices/system/memory/memory{b} ]")
        assert rc != 0, f"memory block {b} still there"
    guest.ok("mminspect -k snapshot -o /tmp/snaps/after.snap", "snapshot -o FILE (after)")
    guest.lg.guest.fetch_dir("/tmp/snaps", tmp_path / "snaps")
    real = diff_snapshots(Snapshot.load(str(tmp_path / "snaps" / "before.snap")),
                          Snapshot.load(str(tmp_path / "snaps" / "after.snap")))
    freed_pred = {t["phys"] for t in predicted["freed"]}
    assert freed_pred, "a 1 GiB DIMM on a page-granular linear map frees tables"
    assert freed_pred == set(real["freed"]), (sorted(freed_pred ^ set(real["freed"]))[:10])
    # NR_PAGETABLE: the kernel's change is the predicted one, give or take the
    # tables of the processes that ran between the two reads (none now).
    record_property("nr_page_table_pages", {"before": nr_before, "after": nr_after,
                                            "predicted_delta": predicted["delta_nr_pagetable"]})
    assert nr_after - nr_before == predicted["delta_nr_pagetable"], (nr_before, nr_after, predicted["delta_nr_pagetable"])
    warned = any(re.search(r"WARNING:|BUG:|Bad page state", l) for l in dmesg_new)
    assert warned == any(f["severity"] in ("error", "critical") for f in predicted["findings"]), dmesg_new


def test_lockdown_confidentiality(guest):
    """Last: lockdown only goes up. Raised to confidentiality at run time (as
    lockdown=confidentiality does at boot), open_kcore() refuses even root."""
    guest.ok("echo confidentiality > /sys/kernel/security/lockdown")
    assert "[confidentiality]" in guest.ok("cat /sys/kernel/security/lockdown")
    rc, out, err = guest.run("mminspect -k walk", "mminspect -k walk under lockdown")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "mminspect: error: /proc/kcore: refused by kernel lockdown (confidentiality mode): the running kernel "
        "cannot be read; boot without lockdown=confidentiality, or take a dump (kdump) and use -c VMCORE"], err
