"""mminspect -k inside the guest against the kernel's own ptdump.

debug-6.12-4k (built by vmcores.build) has PTDUMP_DEBUGFS: the guest itself
prints kernel_page_tables and efi_page_tables. mminspect's ptdump format,
read through /proc/kcore in the same guest right after, must equal them line
for line; the only lines allowed to differ are in the vmalloc area, which
the kernel changes while it runs (the stacks of the processes that read)."""

from __future__ import annotations

import os

import pytest

from .conftest import boot_userspace_guest, ptdump_sections

KERNEL_ID = os.environ.get("MMINSPECT_INGUEST_PTDUMP_KERNEL", "debug-6.12-4k")


@pytest.fixture(scope="module")
def guest():
    yield from boot_userspace_guest(KERNEL_ID)


def test_efi_page_tables_line_for_line(guest):
    ours = guest.ok("mminspect -k walk --mm efi_mm --format ptdump", "walk --mm efi_mm --format ptdump")
    theirs = guest.ok("cat /sys/kernel/debug/efi_page_tables")
    assert theirs.count("\n") > 10
    assert ours == theirs


def test_kernel_page_tables_line_for_line(guest, record_property):
    out = guest.ok("mminspect -k walk --format ptdump > /tmp/ours; cat /sys/kernel/debug/kernel_page_tables "
                   "> /tmp/theirs; cat /tmp/ours; echo @@@; cat /tmp/theirs", "walk --format ptdump")
    ours, theirs = out.split("@@@\n")
    a, b = ptdump_sections(ours), ptdump_sections(theirs)
    assert list(a) == list(b)
    assert len(a) > 8
    changed = 0
    for name in a:
        if name == "vmalloc() area":
            changed = len(set(a[name]) ^ set(b[name]))
            continue
        assert a[name] == b[name], name
    # the vmalloc area: the readers' own stacks came and went in between;
    # every line that differs is a page mapping or a hole (a stack, a vmap), never a block
    record_property("vmalloc_lines_changed", changed)
    for line in set(a["vmalloc() area"]) ^ set(b["vmalloc() area"]):
        assert "BLK" not in line, line
