"""drgn as an independent oracle on synthetic vmcores.

:func:`open_drgn` opens a vmcore written by :func:`~.vmcore.write_vmcore`;
:func:`drgn_translate` asks drgn's own arm64 page-table walker (through
``_linux_helper_follow_phys``, which needs no debug info) for the PA of a VA under a
root; :func:`compare` checks drgn against the generator's ground truth.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Iterable, Iterator

from .builder import BuiltKernel, Status, Translation
from .regime import U64, Regime

FAULT = "fault"


def open_drgn(path: str | os.PathLike):
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(os.fspath(path))
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise RuntimeError("drgn did not recognise the vmcore as a Linux kernel")
    return prog


def drgn_translate(prog, pgtable_va: int, va: int) -> int | None | str:
    """PA drgn finds for ``va`` walking the table at ``pgtable_va`` (a kernel VA:
    ``SYMBOL(swapper_pg_dir)``, or the linear-map VA of another pgd).

    Returns the PA, ``None`` if drgn says the address is not mapped, or ``"fault"``
    if drgn could not read a table.
    """
    import drgn
    from _drgn import _linux_helper_follow_phys

    try:
        return _linux_helper_follow_phys(prog, pgtable_va, va)
    except drgn.FaultError as e:
        if "not mapped" in str(e):
            return None
        return FAULT


def drgn_support(regime: Regime) -> tuple[bool, str]:
    """Whether drgn 0.3.0's arm64 walker covers ``regime`` (checked empirically by
    tests/synthetic/test_generator.py; see the package docstring)."""
    return True, ""


def expected_drgn(t: Translation) -> int | None | str:
    """What a correct reader of the dump should answer, from the ground truth."""
    if t.dump_view == "fault":
        return FAULT
    if t.status == Status.MAPPED and t.dump_view == "mapped":
        return t.pa
    if t.status in (Status.UNMAPPED, Status.MAPPED):
        return None
    if t.status == Status.UNREADABLE:
        return FAULT
    return "undefined"


def sample_vas(built: BuiltKernel, seed: int = 0, per_run: int = 3,
               max_runs_per_label: int = 6) -> Iterator[tuple[str, int]]:
    """(root, VA) pairs: inside every leaf run (first byte, last byte, random) and in
    every region of the sample, including holes, plus the gaps between runs."""
    rng = random.Random(seed)
    r = built.regime
    seen_label: dict[tuple[str, str], int] = {}
    for x in built.leaf_runs:
        key = (x.root, x.label + ("/alias" if x.alias_of is not None else ""))
        n = seen_label.get(key, 0)
        seen_label[key] = n + 1
        if n >= max_runs_per_label and x.count > 0 and rng.random() < 0.7:
            continue
        end = x.va_end
        yield x.root, x.va
        yield x.root, end - 1
        for _ in range(per_run - 2):
            yield x.root, x.va + rng.randrange(x.count * x.leaf_size)
        # just past the run (either another run or a hole)
        if end < (1 << 64) and (x.root != "swapper" or end >= r.kernel_va_min):
            yield x.root, end & U64
        if x.va > 0:
            yield x.root, x.va - 1
    for reg in getattr(built, "regions", ()):
        for _ in range(4):
            yield reg.root, reg.va + rng.randrange(reg.size)
    for a in built.anomalies:
        yield a.root, a.va_start
        yield a.root, a.va_end - 1
    # far away addresses
    for root, rr in built.roots.items():
        if rr.ttbr == 1:
            yield root, r.kernel_va_min
            yield root, (r.kernel_va_min - 1) & U64
            yield root, U64
        else:
            yield root, 0
            yield root, r.user_va_limit - 1


@dataclass(frozen=True)
class Mismatch:
    root: str
    va: int
    expected: object
    got: object
    truth: Translation

    def __str__(self) -> str:
        f = lambda v: hex(v) if isinstance(v, int) else str(v)
        return (f"{self.root} {self.va:#x}: expected {f(self.expected)}, drgn {f(self.got)} "
                f"({self.truth.status.value}{', ' + self.truth.anomaly.kind if self.truth.anomaly else ''}"
                f"{', ' + self.truth.leaf.label if self.truth.leaf else ''})")


def compare(prog, built: BuiltKernel, vas: Iterable[tuple[str, int]]) -> tuple[int, list[Mismatch]]:
    """Compare drgn with the ground truth at ``vas``; "undefined" points are skipped.
    Returns (number compared, mismatches)."""
    n = 0
    bad: list[Mismatch] = []
    for root, va in vas:
        va &= U64
        t = built.lookup(root, va)
        exp = expected_drgn(t)
        if exp == "undefined":
            continue
        got = drgn_translate(prog, built.roots[root].va if root != "swapper" else built.swapper_pg_dir, va)
        n += 1
        if got != exp:
            bad.append(Mismatch(root, va, exp, got, t))
    return n, bad
