"""Fixtures for the front-end tests: a real arm64 dump (from the vmcores
cache; made on the way when MMINSPECT_MAKE_VMCORES allows it), a synthetic
kernel written as an ELF vmcore (always available), and tool lookups that
skip with a reason."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KERNEL_ID = os.environ.get("MMINSPECT_FRONTEND_KERNEL", "debian-6.1-cloud-arm64")


@functools.cache
def _dump(kernel_id: str, scenario: str):
    import vmcores
    from vmcores.scenarios import env_make_kernels

    d = vmcores.find(kernel_id, scenario)
    if d is not None:
        return d
    if kernel_id not in env_make_kernels():
        return (f"no cached vmcore {kernel_id}/{scenario} (python -m vmcores make --kernel "
                f"{kernel_id}, or set MMINSPECT_MAKE_VMCORES=1)")
    try:
        return vmcores.ensure(kernel_id, scenario)
    except Exception as e:  # RecipeError, missing QEMU
        return f"cannot make {kernel_id}/{scenario}: {e}"


@pytest.fixture(scope="session")
def real_dump():
    d = _dump(KERNEL_ID, "boot")
    if isinstance(d, str):
        pytest.skip(d)
    return d


@pytest.fixture(scope="session")
def real_prog(real_dump):
    return real_dump.program()


@pytest.fixture(scope="session")
def synthetic_core(tmp_path_factory):
    """A 4K/48-bit synthetic kernel as an ELF vmcore (VMCOREINFO only)."""
    from mminspect.synthetic import REGIMES_BY_NAME
    from mminspect.synthetic.sample import make_sample
    from mminspect.synthetic.vmcore import write_vmcore

    path = tmp_path_factory.mktemp("synthetic") / "vmcore"
    write_vmcore(str(path), make_sample(REGIMES_BY_NAME["4k-va48"], seed=1, oddities=False))
    return path


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path
