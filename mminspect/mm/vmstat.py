"""
Node statistics, exactly
------------------------

:func:`node_stat`: a node stat item (``NR_PAGETABLE``) exactly as the kernel
would report it after ``vm.stat_refresh``: per node the global
``pglist_data.vm_stat[item]`` plus every possible CPU's
``per_cpu_nodestats->vm_node_stat_diff[item]``. Layout comes from DWARF
through the target (``offsetof``/``sizeof``).
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from mminspect.bits import U64
from mminspect.errors import MMInspectError
from mminspect.target.base import TargetFault

__all__ = ("NodeCount", "global_node_stat", "node_stat", "online_pgdats", "possible_cpus")


def _u64(data: bytes, off: int = 0) -> int:
    return int.from_bytes(data[off : off + 8], "little")



@dataclass(frozen=True)
class NodeCount:
    """One node's value of a node stat item."""

    nid: int
    global_value: int  #: pglist_data.vm_stat[item]
    percpu_delta: int  #: sum of per_cpu_nodestats->vm_node_stat_diff[item]

    @property
    def exact(self) -> int:
        return self.global_value + self.percpu_delta


def _bitmap(data: bytes) -> List[int]:
    bits = []
    for i in range(0, len(data), 8):
        w = _u64(data, i)
        b = 0
        while w:
            if w & 1:
                bits.append(i * 8 + b)
            w >>= 1
            b += 1
    return bits


def possible_cpus(kernel) -> List[int]:
    """Possible CPUs from ``__cpu_possible_mask``.

    :raises MMInspectError: when it cannot be read"""
    t = kernel.target
    addr = t.symbol("__cpu_possible_mask")
    size = t.sizeof("struct cpumask") or 8
    if addr is None:
        raise MMInspectError(f"{t.name}: no __cpu_possible_mask symbol")
    try:
        return _bitmap(t.read_virt(addr, size))
    except TargetFault as e:
        raise MMInspectError(f"cannot read __cpu_possible_mask: {e}") from None


def online_pgdats(kernel) -> List[Tuple[int, int]]:
    """(nid, pglist_data address) of every online node.

    :raises MMInspectError: without the symbols to find them"""
    t = kernel.target
    nd = t.symbol("node_data")
    if nd is None:
        contig = t.symbol("contig_page_data")
        if contig is None:
            raise MMInspectError(f"{t.name}: neither node_data nor contig_page_data: cannot find the nodes")
        return [(0, contig)]
    states = t.symbol("node_states")
    n_online = t.constant("N_ONLINE")
    msize = t.sizeof("nodemask_t")
    nodes = [0]
    if states is not None and n_online is not None and msize:
        try:
            nodes = _bitmap(t.read_virt(states + n_online * msize, msize))
        except TargetFault:
            pass
    out = []
    for nid in nodes:
        try:
            p = _u64(t.read_virt(nd + 8 * nid, 8))
        except TargetFault:
            continue
        if p:
            out.append((nid, p))
    return out


def node_stat(kernel, item: str = "NR_PAGETABLE") -> List[NodeCount]:
    """``item`` of ``enum node_stat_item`` per online node, as the global
    counter plus the per-CPU differences not yet folded into it.

    :raises MMInspectError: without the DWARF that locates them
    """
    t = kernel.target
    idx = t.constant(item)
    off_vm_stat = t.offsetof("struct pglist_data", "vm_stat")
    off_pcp = t.offsetof("struct pglist_data", "per_cpu_nodestats")
    off_diff = t.offsetof("struct per_cpu_nodestat", "vm_node_stat_diff")
    pco = t.symbol("__per_cpu_offset")
    if None in (idx, off_vm_stat, off_pcp, off_diff, pco):
        raise MMInspectError(
            f"{t.name}: reading {item} needs the kernel's debug info (enum node_stat_item, pglist_data)"
        )
    cpus = possible_cpus(kernel)
    try:
        offsets = np.frombuffer(t.read_virt(pco, 8 * (max(cpus) + 1)), dtype="<u8")
    except TargetFault as e:
        raise MMInspectError(f"cannot read __per_cpu_offset: {e}") from None
    out = []
    for nid, pgdat in online_pgdats(kernel):
        try:
            g = int.from_bytes(t.read_virt(pgdat + off_vm_stat + 8 * idx, 8), "little", signed=True)
            pcp = _u64(t.read_virt(pgdat + off_pcp, 8))
            delta = 0
            for cpu in cpus:
                addr = (pcp + int(offsets[cpu])) & U64
                delta += int.from_bytes(t.read_virt(addr + off_diff + idx, 1), "little", signed=True)
        except TargetFault as e:
            raise MMInspectError(f"cannot read node {nid}'s {item}: {e}") from None
        out.append(NodeCount(nid, g, delta))
    return out


def global_node_stat(kernel, item: str = "NR_PAGETABLE") -> Optional[int]:
    """The global ``vm_node_stat[item]`` (the sum of the nodes' folded values)."""
    t = kernel.target
    idx = t.constant(item)
    addr = t.symbol("vm_node_stat")
    if idx is None or addr is None:
        return None
    try:
        return int.from_bytes(t.read_virt(addr + 8 * idx, 8), "little", signed=True)
    except TargetFault:
        return None
