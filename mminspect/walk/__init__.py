"""
Page-table walks
----------------

:func:`walk` walks one root's page tables in one batched pass and returns a
:class:`Walk` (see :mod:`mminspect.walk.walker` for how, and
:mod:`mminspect.walk.model` for the records it holds).
"""

from mminspect.walk.model import (
    CLS_INVALID,
    CLS_LEAF,
    CLS_NONE,
    INH_NOEL0,
    INH_PXN,
    INH_RO,
    INH_UXN,
    RUN_DTYPE,
    TABLE_DTYPE,
    UNIFORM_DTYPE,
    Mapping,
    Parent,
    Problem,
    TableEntries,
    TablePage,
    Walk,
)
from mminspect.walk.read import MAX_READ
from mminspect.walk.runs import merge as _merge  # noqa: F401 (the name tests/unit/test_walk_repeat.py imports)
from mminspect.walk.walker import CHUNK_BYTES, CHUNK_TABLES, SHARED_LIMIT, walk
from mminspect.walk.wx import check_wx

__all__ = (
    "CHUNK_BYTES",
    "CHUNK_TABLES",
    "CLS_INVALID",
    "CLS_LEAF",
    "CLS_NONE",
    "INH_NOEL0",
    "INH_PXN",
    "INH_RO",
    "INH_UXN",
    "MAX_READ",
    "Mapping",
    "Parent",
    "Problem",
    "RUN_DTYPE",
    "SHARED_LIMIT",
    "TABLE_DTYPE",
    "TableEntries",
    "TablePage",
    "UNIFORM_DTYPE",
    "Walk",
    "check_wx",
    "walk",
)
