"""
The kernel's W+X check over a walk
----------------------------------

``ptdump_check_wx()`` (arch/arm64/mm/ptdump.c, CONFIG_DEBUG_WX) counts the
pages mapped writable and executable at EL1, and those executable at EL0,
from leaf attributes only; :func:`check_wx` counts them the same way over a
:class:`~mminspect.walk.model.Walk` and words the result as the kernel does.
"""

from typing import Optional, Tuple

from mminspect.arch.arm64 import PTDUMP_MASK, PTE_PXN, PTE_RDONLY, PTE_UXN
from mminspect.walk.model import Walk

__all__ = ("check_wx",)


def check_wx(w: Walk) -> Tuple[int, int, Optional[str]]:
    """
    The kernel's DEBUG_WX check over the walked range: pages that are
    writable and executable at EL1, and pages executable at EL0, counted from
    leaf attributes only, exactly as ``ptdump_check_wx()`` counts them.

    :return: (wx_pages, non_uxn_pages, the message the kernel would print)
    """
    r = w.regime
    wx = uxn = 0
    for run in w.runs:
        if not run["cls"]:
            continue
        prot = int(run["attr"]) & PTDUMP_MASK
        pages = int(run["size"]) >> r.page_shift
        if not prot & PTE_UXN:
            uxn += pages
        if not (prot & PTE_RDONLY) and not (prot & PTE_PXN):
            wx += pages
    if wx or uxn:
        msg = f"Checked W+X mappings: FAILED, {wx} W+X pages found, {uxn} non-UXN pages found"
    else:
        msg = "Checked W+X mappings: passed, no W+X pages found"
    return wx, uxn, msg
