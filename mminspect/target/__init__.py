"""Targets: how mminspect reads a kernel (see :mod:`mminspect.target.base`)."""

from typing import Optional, Sequence

from mminspect.target.base import Target, TargetFault
from mminspect.target.elf import check_core_file

__all__ = ("Target", "TargetFault", "open_target")


def open_target(
    core: Optional[str] = None,
    symbols: Sequence[str] = (),
    kernel: bool = False,
    qemu: Optional[str] = None,
) -> Target:
    """Open a vmcore, an mminspect bundle, the running kernel or a QEMU guest."""
    # drgn only here: the gdb front end imports the library without it.
    from mminspect.target.bundle import BundleTarget, read_bundle_note
    from mminspect.target.drgn import DrgnTarget

    if core is not None:
        check_core_file(core)
    if core is not None and not symbols:
        note = read_bundle_note(core)
        if note is not None:
            return BundleTarget.open_bundle(core, note)
    return DrgnTarget.open(core=core, symbols=symbols, kernel=kernel, qemu=qemu)
