"""Fixtures for tests on real arm64 vmcores made by the ``vmcores`` recipe.

Dumps are found in the cache (``$MMINSPECT_CACHE``, default ``~/.cache/mminspect``);
a test whose dump is not cached is skipped with the reason. To make dumps on the
way, set ``MMINSPECT_MAKE_VMCORES``:

* ``1``: make the default set (``debian-6.1-cloud-arm64``, all its scenarios;
  about 20 s after a one-time 280 MB download);
* ``all``: every registered kernel (slow: includes the 800 MB generic -dbg and
  source-built kernels);
* a comma-separated list of kernel ids.

The removal runs' dumps (``vmcores.removal``: bootmem-*, unmovable-*, mom-*,
blockmap-*) are made only as ``MMINSPECT_MAKE_REMOVAL`` says: ``KERNEL:RUN``
pairs, comma-separated, or ``all`` (every run of every kernel above).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vmcores  # noqa: E402
from vmcores import RecipeError  # noqa: E402

from vmcores.scenarios import may_make  # noqa: E402
from vmcores.removal import RUN_OF  # noqa: E402


@functools.cache
def get_dump(kernel_id: str, scenario: str) -> vmcores.Dump | str:
    """A Dump, or the reason why there is none (a str), made at most once per session."""
    d = vmcores.find(kernel_id, scenario)
    if d is not None:
        return d
    try:
        kf = vmcores.cached_kernel(kernel_id)
    except RecipeError:
        kf = None
    if kf is not None:
        why = vmcores.supported_scenarios(kf)[scenario]
        if why:
            return f"{kernel_id} cannot make {scenario}: {why}"
    if not may_make(kernel_id, scenario):
        if scenario in RUN_OF:
            return (f"no cached vmcore {kernel_id}/{scenario} (make it with: python -m vmcores make "
                    f"--kernel {kernel_id} --scenario {RUN_OF[scenario].name}, or set MMINSPECT_MAKE_REMOVAL="
                    f"{kernel_id}:{RUN_OF[scenario].name})")
        return (f"no cached vmcore {kernel_id}/{scenario} (make it with: python -m vmcores make "
                f"--kernel {kernel_id}, or set MMINSPECT_MAKE_VMCORES)")
    try:
        return vmcores.ensure(kernel_id, scenario)
    except RecipeError as e:
        return f"cannot make {kernel_id}/{scenario}: {e}"


@functools.lru_cache(maxsize=1)
def get_program(kernel_id: str, scenario: str):
    """A drgn Program on the dump (only the last one is kept: a Program with a
    300 MB vmlinux loaded takes a few hundred MB)."""
    d = get_dump(kernel_id, scenario)
    assert not isinstance(d, str)
    return d.program()


DUMP_CASES = [(k, s) for k in vmcores.kernel_ids() for s in vmcores.SCENARIOS]


# Session-scoped and parametrized: pytest then runs the tests grouped by dump, so
# each dump's Program is made once.
@pytest.fixture(scope="session", params=DUMP_CASES, ids=[f"{k}-{s}" for k, s in DUMP_CASES])
def real_dump(request) -> vmcores.Dump:
    d = get_dump(*request.param)
    if isinstance(d, str):
        pytest.skip(d)
    return d


@pytest.fixture(scope="session")
def real_prog(real_dump):
    """(Dump, drgn.Program on it with its vmlinux loaded)."""
    return real_dump, get_program(real_dump.kernel_id, real_dump.scenario)


def efi_runtime(dump) -> bool:
    """The guest mapped its EFI runtime services (so efi_mm exists): booted
    by UEFI and not "EFI runtime services will be disabled." (PREEMPT_RT's
    default, efi=noruntime), as its own dmesg says."""
    dmesg = (dump.dir / "truth" / "dmesg").read_text(errors="replace")
    return "efi: EFI v" in dmesg and "EFI runtime services will be disabled" not in dmesg


def require_efi_mm(dump) -> None:
    if not efi_runtime(dump):
        pytest.skip(f"{dump.kernel_id}: the guest reports no EFI runtime services, so no efi_mm")
