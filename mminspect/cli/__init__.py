"""
The ``mminspect`` command line.

Target options follow drgn's CLI: ``-c/--core VMCORE``, ``-s/--symbols
VMLINUX``, ``-k/--kernel`` for the running kernel, plus ``--qemu SOCKET`` for a
live QEMU guest's QMP socket. With no target, mminspect uses the running
kernel when this is an arm64 machine that allows it, and otherwise the
bundled sample dump (announced on stderr).
"""

from mminspect.cli.base import _block_ids, _errors, bundled_sample, main, open_kernel, parse_range, target_options
from mminspect.cli import classify as _classify  # noqa: F401 (registers its subcommands)
from mminspect.cli.explain import _parse_va  # noqa: F401
from mminspect.cli import map as _map  # noqa: F401 (registers its subcommands)
from mminspect.cli import remove as _remove  # noqa: F401 (registers its subcommands)
from mminspect.cli import walk as _walk  # noqa: F401 (registers its subcommands)

__all__ = ('_block_ids', '_errors', 'bundled_sample', 'main', 'open_kernel', 'parse_range', 'target_options', '_block_ids', '_parse_va')
