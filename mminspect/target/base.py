"""
The target protocol
-------------------

Everything above this layer reads a kernel through :class:`Target`: physical
and kernel-virtual reads in blocks, symbols, type layout and VMCOREINFO.
Implementations wrap a drgn Program (vmcores, /proc/kcore, a QEMU guest over
QMP), a gdb session, or a captured bundle.
"""

from typing import Dict, Optional, Protocol, runtime_checkable

from mminspect.errors import MMInspectError

__all__ = ("Target", "TargetFault", "parse_vmcoreinfo")


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


def parse_vmcoreinfo(text: str) -> Dict[str, str]:
    """Split VMCOREINFO text into a dict (``KEY=VALUE`` per line)."""
    info: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    return info
