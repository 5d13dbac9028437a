"""
mminspect
---------

Inspect arm64 kernel page tables on vmcores and live kernels: walk any tree
(init_mm, efi_mm, the vmemmap region, a task's mm), classify every table page
by allocator origin and ptlock state, and simulate a memory hot-remove.

>>> import mminspect
>>> k = mminspect.open(core="vmcore", symbols=["vmlinux"])
>>> w = mminspect.walk(k, "efi_mm")
>>> for m in w.mappings():
...     print(m)
"""

from typing import Optional, Sequence

from mminspect.errors import MMInspectError
from mminspect.kernel import Kernel, Root
from mminspect.target import open_target

# Import the walk package before defining walk() below: importing a
# subpackage binds its name on this package, and the function must win.
from mminspect.walk import Mapping, Problem, TablePage, Walk  # isort: skip
from mminspect.walk.walker import walk as _walk  # isort: skip

__all__ = (
    "Kernel",
    "MMInspectError",
    "Mapping",
    "Problem",
    "Root",
    "TablePage",
    "Walk",
    "open",
    "walk",
)


def open(
    core: Optional[str] = None,
    symbols: Sequence[str] = (),
    kernel: bool = False,
    qemu: Optional[str] = None,
    prog=None,
) -> "Kernel":
    """
    Open a kernel: a vmcore (``core``), the running kernel (``kernel=True``),
    a QEMU guest's QMP socket (``qemu``), or a drgn ``prog`` you already hold.

    :raises MMInspectError: if the target cannot be opened or is not arm64
    """
    if prog is not None:
        from mminspect.target.drgn import DrgnTarget  # drgn only here: see open_target()

        return Kernel(DrgnTarget(prog, "drgn program"))
    return Kernel(open_target(core=core, symbols=symbols, kernel=kernel, qemu=qemu))


def walk(kernel: "Kernel", mm: str = "init_mm", start: Optional[int] = None,
         end: Optional[int] = None) -> "Walk":
    """
    Walk ``mm`` (``init_mm``, ``efi_mm``, ``vmemmap`` or a pid as a string)
    between ``start`` and ``end`` (exclusive) and return the :class:`Walk`.
    """
    return _walk(kernel, kernel.root(mm, start, end))
