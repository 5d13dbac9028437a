"""Errors mminspect reports to its users: one line each, never a traceback."""

__all__ = ("MMInspectError",)


class MMInspectError(Exception):
    """A problem with the user's input or target, explained in one line."""
