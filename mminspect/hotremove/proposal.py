"""
Hot-remove proposals
--------------------

A :class:`Proposal` is a physical range to remove, given as a range or as
memory block ids, and :func:`check_proposal` checks it the way the kernel
does before offlining: the range is whole memory blocks
(``check_hotplug_memory_range()``: "Block size [%#lx] unaligned hotplug
range") of present memory, else it is bad input; a block online in a zone
other than Movable gets a note. The offline's own refusals (memory
notifiers) are :mod:`~mminspect.hotremove.offline`'s.
"""

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from mminspect.errors import MMInspectError

__all__ = ("MAX_PHYS", "Proposal", "Refusal", "check_proposal")

#: arm64's largest physical address space (MAX_PHYSMEM_BITS 52).
MAX_PHYS = 1 << 52


@dataclass(frozen=True)
class Proposal:
    """Remove physical ``[start, end)``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        # An empty range is a proposal the kernel refuses (check_proposal);
        # one that is negative, inverted or beyond arm64's PAs is not one.
        if not 0 <= self.start <= self.end <= MAX_PHYS:
            raise MMInspectError(f"bad range [{self.start:#x}-{self.end:#x}): physical memory to remove lies in "
                                 "[0, 2^52) with START below END")

    @classmethod
    def from_blocks(cls, blocks: Sequence[int], block_size: int) -> "Proposal":
        ids = sorted(set(blocks))
        if not ids:
            raise MMInspectError("no memory blocks given")
        if block_size <= 0:
            raise MMInspectError(f"memory block size {block_size}: the target has no memory blocks")
        if ids[0] < 0 or (ids[-1] + 1) * block_size > MAX_PHYS:
            bad = ids[0] if ids[0] < 0 else ids[-1]
            raise MMInspectError(f"no memory block {bad}: blocks are numbered from 0 to "
                                 f"{MAX_PHYS // block_size - 1} ({block_size >> 20} MiB each)")
        if ids != list(range(ids[0], ids[-1] + 1)):
            raise MMInspectError(f"memory blocks {ids} are not contiguous; remove them one range at a time")
        return cls(ids[0] * block_size, (ids[-1] + 1) * block_size)

    @property
    def size(self) -> int:
        return self.end - self.start

    def sections(self, section_size: int) -> Iterator[Tuple[int, int]]:
        """The per-section pieces, as ``__remove_pages()`` iterates them."""
        pa = self.start
        while pa < self.end:
            nxt = min((pa // section_size + 1) * section_size, self.end)
            yield pa, nxt
            pa = nxt

    def __str__(self) -> str:
        return f"[{self.start:#x}-{self.end - 1:#x}] ({self.size >> 20} MiB)"


@dataclass(frozen=True)
class Refusal:
    """Why the kernel would not do (or not finish) the removal.

    ``fatal`` refusals stop it (an ACPI eject ends busy, nothing removed);
    the others are notes. A refusal of one memory block names the block, the
    physical range the kernel checked (``offline_pages()``' range, after the
    block's own memmap), and the era fact that says the kernel has the check.
    """

    rule: str
    message: str  #: as the kernel would print it, when it prints one
    fatal: bool = True
    block: Optional[int] = None
    range: Optional[Tuple[int, int]] = None
    evidence: str = ""


def check_proposal(p: Proposal, snapshot, policy) -> List[Refusal]:
    """The checks before the kernel starts offlining: a proposal that is not
    whole memory blocks of present memory is bad input
    (:class:`~mminspect.errors.MMInspectError`; the kernel's own
    ``check_hotplug_memory_range()`` says "Block size [%#lx] unaligned hotplug
    range"); a block online in a zone other than Movable gets a note (its
    pages may not migrate). The refusals of the offline itself are
    :func:`mminspect.hotremove.offline.eject`'s."""
    out: List[Refusal] = []
    bsize = snapshot.kernel["block_size"]
    if not p.size or p.start % bsize or p.size % bsize:
        raise MMInspectError(
            f"{p} is not whole memory blocks: the kernel removes memory in blocks of {bsize >> 20} MiB "
            f"(Block size [{bsize:#x}] unaligned hotplug range: start {p.start:#x}, size {p.size:#x})")
    blocks = {b.id: b for b in snapshot.blocks}
    absent = [bid for bid in range(p.start // bsize, p.end // bsize) if bid not in blocks]
    if absent:
        lo = absent[0] * bsize
        raise MMInspectError(f"{p} is not all present memory: memory block {absent[0]} "
                             f"[{lo:#x}-{lo + bsize - 1:#x}] is not present")
    for bid in range(p.start // bsize, p.end // bsize):
        b = blocks[bid]
        if b.state == "online" and b.zone not in (None, "Movable") and not b.early:
            out.append(Refusal(
                "zone",
                f"memory{bid} is online in zone {b.zone}: every page in use must migrate for it to "
                "offline (ZONE_MOVABLE guarantees only movable allocations)",
                fatal=False, block=bid,
            ))
    return out
