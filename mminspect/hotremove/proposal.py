"""
Hot-remove proposals
--------------------

A :class:`Proposal` is a physical range to remove, given as a range or as
memory block ids, and :func:`check_proposal` checks it the way the kernel
does before any page table is touched: the range is aligned to the memory
block size (``check_hotplug_memory_range()``: "Block size [%#lx] unaligned
hotplug range"), present, every block can be offlined first (arm64's
boot-memory notifier refuses early sections since v5.7: "Boot memory [%lx
%lx] offlining attempted"), and the zone makes offlining likely (Movable).
"""

from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

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
        if not 0 <= self.start < self.end <= MAX_PHYS:
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
    """Why the kernel would not do (or not finish) the removal."""

    rule: str
    message: str  #: as the kernel would print it, when it prints one
    fatal: bool = True


def check_proposal(p: Proposal, snapshot, policy) -> List[Refusal]:
    """The kernel's checks, in its order; an empty list means it proceeds."""
    out: List[Refusal] = []
    bsize = snapshot.kernel["block_size"]
    if not p.size or p.start % bsize or p.size % bsize:
        out.append(Refusal(
            "alignment",
            f"Block size [{bsize:#x}] unaligned hotplug range: start {p.start:#x}, size {p.size:#x}",
        ))
        return out
    blocks = {b.id: b for b in snapshot.blocks}
    for bid in range(p.start // bsize, p.end // bsize):
        b = blocks.get(bid)
        lo, hi = bid * bsize, (bid + 1) * bsize - 1
        if b is None:
            out.append(Refusal("present", f"memory block {bid} [{lo:#x}-{hi:#x}] is not present"))
            continue
        if b.early and policy.refuses_boot_memory and snapshot.era.bootmem_notifier:
            # The notifier stops at the first early section of the block
            # (NOTIFY_BAD), printing PFN_PHYS(pfn) and the section's end.
            sec = next(s for s in snapshot.sections if lo <= s.start <= hi and s.early)
            out.append(Refusal(
                "boot-memory",
                f"Boot memory [{sec.start:x} {sec.start + sec.size:x}] offlining attempted",
            ))
            break
        elif b.state == "online" and b.zone not in (None, "Movable"):
            out.append(Refusal(
                "zone",
                f"memory{bid} is online in zone {b.zone}: offlining may fail (unmovable pages); "
                "simulating as if it succeeded",
                fatal=False,
            ))
    return out
