"""
The target protocol
-------------------

Everything above this layer reads a kernel through :class:`Target`: physical
and kernel-virtual reads in blocks, symbols, type layout and VMCOREINFO.
Implementations wrap a drgn Program (vmcores, /proc/kcore, a QEMU guest over
QMP), a gdb session, or a captured bundle.

Some targets can do more, and say so by having the members of an optional
capability: :class:`HasProgram` (a drgn Program with the kernel's debug info:
tasks, memory blocks through drgn's helpers), :class:`HasSymbolSizes`
(``sizeof`` of a symbol: NR_CPUS, the static tables of the image),
:class:`HasCoreFile` (the dump file read directly, outside drgn),
:class:`HasMemoryBlocks` (memory blocks answered by the target itself: a
recording or a bundle) and :class:`HasTaskPgd` (a task's ``mm->pgd`` without
drgn: gdb). Callers ask through :func:`program_of`, :func:`symbol_size`,
:func:`core_file_of` and ``isinstance``, never by probing attributes.
"""

from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

from mminspect.errors import MMInspectError

__all__ = (
    "HasCoreFile",
    "HasMemoryBlocks",
    "HasProgram",
    "HasSymbolSizes",
    "HasTaskPgd",
    "Target",
    "TargetFault",
    "core_file_of",
    "parse_vmcoreinfo",
    "program_of",
    "symbol_size",
)


class TargetFault(MMInspectError):
    """A read of memory the target does not hold (filtered out, outside RAM,
    or not mapped)."""

    def __init__(self, address: int, size: int, physical: bool, reason: str = "") -> None:
        self.address = address
        self.size = size
        self.physical = physical
        kind = "physical" if physical else "virtual"
        super().__init__(
            f"cannot read {size:#x} bytes at {kind} address {address:#x}"
            + (f": {reason}" if reason else "")
        )


@runtime_checkable
class Target(Protocol):
    """What mminspect needs from a kernel. All addresses are integers."""

    #: A short description for messages ("vmcore /path", "QEMU guest ...").
    name: str

    def read_phys(self, address: int, size: int) -> bytes:
        """Read ``size`` bytes of physical memory; raise :class:`TargetFault`."""
        ...

    def read_virt(self, address: int, size: int) -> bytes:
        """Read kernel virtual memory; raise :class:`TargetFault`."""
        ...

    def vmcoreinfo(self) -> Dict[str, str]:
        """The VMCOREINFO key/value pairs (``SYMBOL(x)``, ``NUMBER(x)`` ...)."""
        ...

    def symbol(self, name: str) -> Optional[int]:
        """Address of a kernel symbol, or None when unknown."""
        ...

    def sizeof(self, type_name: str) -> Optional[int]:
        """``sizeof(type)``, or None without debug info for it."""
        ...

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        """``offsetof(type, member)`` (dotted members allowed), or None."""
        ...

    def constant(self, name: str) -> Optional[int]:
        """The value of an enumerator (``PG_reserved``, ``PGTY_table``), or None."""
        ...

    @property
    def has_debug_info(self) -> bool:
        """True when types and symbols beyond VMCOREINFO are available."""
        ...


@runtime_checkable
class HasProgram(Protocol):
    """A target over a drgn Program (``drgn.Program``)."""

    prog: Any


@runtime_checkable
class HasSymbolSizes(Protocol):
    """A target that knows the size of a symbol."""

    def symbol_size(self, name: str) -> Optional[int]:
        """``sizeof`` of the object at a symbol (0 or unknown: None)."""
        ...


@runtime_checkable
class HasCoreFile(Protocol):
    """A target whose dump file can be read directly
    (:class:`mminspect.target.corefile.CoreFile`, or None when it cannot)."""

    core_file: Any


@runtime_checkable
class HasMemoryBlocks(Protocol):
    """A target that answers for the kernel's memory blocks itself."""

    def memory_blocks(self, bsize: int, sections: List[Any], section_bits: int,
                      page_shift: int) -> Optional[List[Any]]:
        """The memory blocks (:class:`mminspect.memory.Block`), or None."""
        ...


@runtime_checkable
class HasTaskPgd(Protocol):
    """A target that finds a task's ``mm->pgd`` without drgn."""

    def task_mm_pgd(self, pid: int) -> int:
        """The kernel VA of ``mm->pgd`` of task ``pid``."""
        ...


def program_of(target: Target, debug_info: bool = True) -> Optional[Any]:
    """The drgn Program behind ``target`` (with ``debug_info``, only when
    it has the kernel's debug info), else None."""
    if isinstance(target, HasProgram) and (target.has_debug_info or not debug_info):
        return target.prog
    return None


def symbol_size(target: Target, name: str) -> Optional[int]:
    """``sizeof`` of symbol ``name`` when the target can tell, else None."""
    return target.symbol_size(name) if isinstance(target, HasSymbolSizes) else None


def core_file_of(target: Target) -> Optional[Any]:
    """The directly readable dump file behind ``target``, else None."""
    return target.core_file if isinstance(target, HasCoreFile) else None


def parse_vmcoreinfo(text: str) -> Dict[str, str]:
    """Split VMCOREINFO text into a dict (``KEY=VALUE`` per line)."""
    info: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    return info
