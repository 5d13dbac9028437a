"""
Physical memory facts for the classifier and the audit
------------------------------------------------------

The names this module always offered, now at home in :mod:`mminspect.mm`:
memblock (:mod:`mminspect.mm.memblock`), memory sections and blocks
(:mod:`mminspect.mm.blocks`) and exact node statistics
(:mod:`mminspect.mm.vmstat`).
"""

from mminspect.mm.blocks import (
    MAPS_BOOT,
    MAPS_HOT,
    MAPS_MIXED,
    MAPS_NAMES,
    MAPS_NONE,
    Block,
    MemoryMap,
    drgn_blocks,
)
from mminspect.mm.memblock import in_regions, read_memblock
from mminspect.mm.vmstat import NodeCount, global_node_stat, node_stat, online_pgdats, possible_cpus

__all__ = (
    "Block",
    "MAPS_BOOT",
    "MAPS_HOT",
    "MAPS_MIXED",
    "MAPS_NAMES",
    "MAPS_NONE",
    "MemoryMap",
    "NodeCount",
    "drgn_blocks",
    "global_node_stat",
    "in_regions",
    "node_stat",
    "online_pgdats",
    "possible_cpus",
    "read_memblock",
)
