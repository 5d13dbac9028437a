"""Real arm64 vmcores for mminspect's tests: fetch a kernel, boot it under QEMU,
record ground truth inside the guest, and dump the paused guest (see README.md).

API for tests::

    import vmcores
    d = vmcores.find("debian-6.1-cloud-arm64", "boot")    # a Dump or None (never makes)
    d = vmcores.ensure("debian-6.1-cloud-arm64", "hotadd")  # makes it if missing
    d.vmcore, d.vmlinux, d.truth, d.meta, d.program()
"""

from .cache import RecipeError, cache_dir
from .kernels import KernelFiles, KernelSpec, cached_kernel, ensure_kernel, kernel_ids, registry
from .scenarios import ALL_SCENARIOS, SCENARIOS, Dump, ensure, find, make, supported_scenarios

__all__ = [
    "RecipeError", "cache_dir", "KernelFiles", "KernelSpec", "cached_kernel", "ensure_kernel",
    "kernel_ids", "registry", "SCENARIOS", "ALL_SCENARIOS", "Dump", "ensure", "find", "make", "supported_scenarios",
]
