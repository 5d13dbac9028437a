"""Sets of 64-bit keys as sorted arrays: kept importable here; the helpers
live in :mod:`mminspect.bits`."""

from mminspect.bits import contains, unique

__all__ = ("contains", "unique")
