"""
Binding a front end's session, and the ``--drgn`` code registry
-----------------------------------------------------------------

A drgn or gdb session runs the CLI's subcommands on its own target: :func:`bound`
makes it the target of every subcommand run inside the block. Each subcommand's
``--drgn`` code generator (beside the subcommand, in :mod:`mminspect.cli`)
registers with :func:`register_drgn_code`. Importing this module imports neither
click nor tabulate.
"""

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from mminspect.errors import MMInspectError
from mminspect.kernel import Kernel


class UsageError(MMInspectError):
    """Bad arguments to a subcommand; the message says which and how to get help."""


@dataclass
class Binding:
    """The target a front end's session supplies, for the command being run."""

    target: Any
    frontend: str
    kernel: Any = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def get_kernel(self):
        if self.kernel is None:
            self.kernel = Kernel(self.target)
        return self.kernel


_BOUND: contextvars.ContextVar[Optional[Binding]] = contextvars.ContextVar("mminspect_bound", default=None)


@contextlib.contextmanager
def bound(target, frontend: str, kernel=None) -> Iterator[Binding]:
    """
    Make ``target`` (and optionally an already built
    :class:`~mminspect.kernel.Kernel` over it) the target of every mminspect
    subcommand run inside the block.
    """
    binding = Binding(target, frontend, kernel)
    token = _BOUND.set(binding)
    try:
        yield binding
    finally:
        _BOUND.reset(token)


def bound_target():
    """The target bound by :func:`bound`, or None in the shell CLI."""
    b = _BOUND.get()
    return b.target if b is not None else None


def bound_kernel():
    """A :class:`~mminspect.kernel.Kernel` over the bound target, or None."""
    b = _BOUND.get()
    return b.get_kernel() if b is not None else None


def _frontend() -> str:
    b = _BOUND.get()
    return b.frontend if b is not None else "cli"


@dataclass
class CodeSnippet:
    """
    Python for ``--drgn``: imports and a body, for drgn's
    :class:`~drgn.commands.DrgnCodeBuilder` (``imports`` are ``(module,
    names)`` with ``names`` empty for ``import module``).
    """

    imports: List[Tuple[str, Tuple[str, ...]]] = field(default_factory=list)
    body: str = ""

    def add_import(self, module: str, *names: str) -> None:
        self.imports.append((module, names))

    def append(self, code: str) -> None:
        self.body += code

    def text(self) -> str:
        """Standalone text (what DrgnCodeBuilder prints, minus its sorting)."""
        lines = []
        for module, names in self.imports:
            lines.append(f"from {module} import {', '.join(names)}" if names else f"import {module}")
        return "\n".join(lines) + ("\n\n\n" if lines else "") + self.body


_DRGN_CODE: Dict[str, Callable[[Dict[str, Any]], CodeSnippet]] = {}


def register_drgn_code(name: str) -> Callable:
    """
    Decorator: register the ``--drgn`` code generator of subcommand ``name``.
    It gets the parsed parameters (click names) and returns a
    :class:`CodeSnippet` that, run in a drgn session (``prog`` defined), does
    what the subcommand does through the API.
    """

    def deco(fn: Callable[[Dict[str, Any]], CodeSnippet]) -> Callable[[Dict[str, Any]], CodeSnippet]:
        _DRGN_CODE[name] = fn
        return fn

    return deco


def _hex(n: int) -> str:
    return f"{n:#x}"


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'
