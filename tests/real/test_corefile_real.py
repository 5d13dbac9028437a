"""The dump file read directly (mminspect.target.corefile) on every cached
real arm64 vmcore: the bytes drgn reads, and the same memmap scan with the
file as without it. A dump that is not cached is skipped (conftest.py)."""

from __future__ import annotations

import numpy as np

import mminspect
from mminspect.classify import scan_typed
from tests.corefile_check import compare_with_drgn


def test_pages_read_from_the_file_equal_drgn(real_dump):
    seen = compare_with_drgn(real_dump.vmcore, count=2000)
    assert seen["read"] > 100 and seen["fault"] > 100


def test_pages_memmap_scan_equal_with_and_without_the_file(real_dump):
    k = mminspect.open(core=str(real_dump.vmcore), symbols=[str(real_dump.vmlinux)])
    assert k.target.core_file is not None
    fast = scan_typed(k)
    k.target.core_file = None
    slow = scan_typed(k)
    assert len(fast[0]) > 0  # a booted kernel has page tables with a ctor
    assert np.array_equal(fast[0], slow[0]) and fast[1].tobytes() == slow[1].tobytes()
    assert fast[2:] == slow[2:]
