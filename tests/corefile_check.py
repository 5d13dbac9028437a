"""Reads of a vmcore's physical memory from the file (mminspect.target.corefile)
checked against drgn's, for the unit tests and the real-dump tests."""

import random

import drgn

from mminspect.target.base import TargetFault
from mminspect.target.corefile import CoreFile


def compare_with_drgn(path, count=3000, seed=1):
    """Read ``count`` random ranges from ``path`` with CoreFile and with drgn,
    biased to segment edges; returns how many read, faulted, held zero-fill
    and crossed a segment edge. Asserts every one agrees."""
    core = CoreFile.open(str(path))
    assert core is not None
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    rnd = random.Random(seed)
    seen = {"read": 0, "fault": 0, "zero-fill": 0, "crossing": 0}
    segs = core._segments
    for _ in range(count):
        start, end, file_end, _ = segs[rnd.randrange(len(segs))]
        at = rnd.choice([start, end, file_end, start + rnd.randrange(end - start)])
        pa = max(0, at + rnd.randrange(-9000, 64))
        size = rnd.randrange(1, 3 * 4096)
        try:
            want = prog.read(pa, size, True)
        except drgn.FaultError:
            want = None
        buf = bytearray(b"\xaa" * size)
        try:
            core.readinto(pa, buf)
            got = bytes(buf)
        except TargetFault:
            got = None
        assert got == want, f"{size:#x} bytes at {pa:#x}"
        seen["fault" if got is None else "read"] += 1
        if got is not None and any(s < pa + size and fe < e and pa < e and fe < pa + size
                                   for s, e, fe, _ in segs):
            seen["zero-fill"] += 1
        if got is not None and any(pa < e < pa + size for _, e, _, _ in segs):
            seen["crossing"] += 1
    return seen
