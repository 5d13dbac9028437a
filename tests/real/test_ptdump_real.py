"""`walk --format ptdump` equals the kernel's own debugfs files, and the W+X
verdict equals the one the kernel printed at boot.

The guest wrote /sys/kernel/debug/kernel_page_tables and efi_page_tables
just before it was dumped (kernels built with PTDUMP_DEBUGFS); nothing is
excluded from the comparison.
"""

import re

import pytest

import mminspect
from mminspect.report.ptdump import check_wx, ptdump_lines


@pytest.mark.parametrize("mm,debugfs", [("init_mm", "kernel_page_tables"), ("efi_mm", "efi_page_tables")])
def test_ptdump_equals_debugfs(real_prog, mm, debugfs):
    dump, prog = real_prog
    truth = dump.truth / debugfs
    if not truth.exists():
        pytest.skip(f"{dump.kernel_id} has no PTDUMP_DEBUGFS")
    ours = list(ptdump_lines(mminspect.walk(mminspect.open(prog=prog), mm)))
    assert ours == truth.read_text().splitlines()


def test_wx_verdict_equals_dmesg(real_prog):
    dump, prog = real_prog
    m = re.search(r"Checked W\+X mappings: .*", dump.truth_text("dmesg"))
    if not m:
        pytest.skip(f"{dump.kernel_id} did not run the DEBUG_WX check")
    _, _, message = check_wx(mminspect.walk(mminspect.open(prog=prog), "init_mm"))
    assert message == m.group(0).strip()
