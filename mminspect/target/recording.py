"""
A recording target
------------------

:class:`RecordingTarget` wraps another target and remembers every physical
page mminspect read (virtual reads are translated through the kernel's own
page tables to the pages behind them) and every answer about symbols, types
and constants. :mod:`mminspect.capture` runs mminspect's work through it and
writes exactly that evidence into a bundle, so a bundle holds what the
analysis needs and nothing else, whatever later stages come to read.
"""

from typing import Dict, Optional, Set, Tuple

from mminspect.mm.blocks import drgn_blocks
from mminspect.target.base import Target, program_of, symbol_size

__all__ = ("RecordingTarget",)


class RecordingTarget:
    """A :class:`~mminspect.target.base.Target` that records what is asked of it."""

    def __init__(self, inner: Target, page_size: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.page_size = page_size
        self.pages: Set[int] = set()
        self.answers: Dict[str, Dict[str, Optional[int]]] = {
            "symbol": {},
            "sizeof": {},
            "offsetof": {},
            "constant": {},
            "symbol_size": {},
        }
        self._swapper: Optional[int] = None
        #: Kernel-virtual ranges read, so that a capture can keep the table
        #: pages a reader of the bundle needs to translate them again.
        self.virt_reads: Set[Tuple[int, int]] = set()

    def _note_phys(self, address: int, size: int) -> None:
        mask = ~(self.page_size - 1)
        for page in range(address & mask, address + max(size, 1), self.page_size):
            self.pages.add(page)

    def read_phys(self, address: int, size: int) -> bytes:
        data = self.inner.read_phys(address, size)
        self._note_phys(address, size)
        return data

    def read_virt(self, address: int, size: int) -> bytes:
        data = self.inner.read_virt(address, size)
        self.virt_reads.add((address, size))
        mask = ~(self.page_size - 1)
        for page in range(address & mask, address + max(size, 1), self.page_size):
            pa = self._translate(page)
            if pa is not None:
                self.pages.add(pa & mask)
        return data

    def _translate(self, va: int) -> Optional[int]:
        # The drgn target translates with the kernel's own walker (what a
        # bundle reader will do), so record the pages it would need.
        from drgn import FaultError
        from drgn.helpers.linux.mm import _linux_helper_follow_phys  # type: ignore

        prog = program_of(self.inner, debug_info=False)
        if prog is None:
            return None
        if self._swapper is None:
            self._swapper = int(self.inner.vmcoreinfo()["SYMBOL(swapper_pg_dir)"], 16)
        try:
            return _linux_helper_follow_phys(prog, self._swapper, va)
        except FaultError:
            return None

    def vmcoreinfo(self) -> Dict[str, str]:
        return self.inner.vmcoreinfo()

    @property
    def has_debug_info(self) -> bool:
        return self.inner.has_debug_info

    def _ask(self, kind: str, key: str, value: Optional[int]) -> Optional[int]:
        self.answers[kind][key] = value
        return value

    def symbol(self, name: str) -> Optional[int]:
        return self._ask("symbol", name, self.inner.symbol(name))

    def sizeof(self, type_name: str) -> Optional[int]:
        return self._ask("sizeof", type_name, self.inner.sizeof(type_name))

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        return self._ask("offsetof", f"{type_name}::{member}", self.inner.offsetof(type_name, member))

    def constant(self, name: str) -> Optional[int]:
        return self._ask("constant", name, self.inner.constant(name))

    def symbol_size(self, name: str) -> Optional[int]:
        size = symbol_size(self.inner, name)
        return self._ask("symbol_size", name, size)

    def memory_blocks(self, bsize, sections, section_bits, page_shift):
        """The inner target's memory blocks, remembered for the bundle."""
        blocks = drgn_blocks(self.inner, bsize, sections, section_bits, page_shift)
        self.answers["memory_blocks"] = None if blocks is None else [b.as_dict() for b in blocks]
        return blocks

    def page_runs(self) -> Tuple[Tuple[int, int], ...]:
        """The recorded pages as sorted (start, size) runs."""
        runs = []
        for page in sorted(self.pages):
            if runs and runs[-1][0] + runs[-1][1] == page:
                runs[-1][1] += self.page_size
            else:
                runs.append([page, self.page_size])
        return tuple((a, b) for a, b in runs)
