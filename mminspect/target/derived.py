"""
Kernel facts a target derives without drgn
------------------------------------------

What a target with symbols, types and reads but no drgn Program (gdb on a
live kernel) finds by itself, through the :class:`~mminspect.target.base.Target`
protocol only:

- :func:`kernel_vmcoreinfo`: the kernel's own ``vmcoreinfo_data`` buffer
  (kernel/crash_core.c; kernel/vmcore_info.c since v6.9), the VMCOREINFO
  note a dump of the same kernel would carry;
- :func:`computed_vmcoreinfo`: the keys mminspect needs, from symbols,
  variables and the translation regime, for a kernel without that buffer;
- :func:`task_mm_pgd`: a task's ``mm->pgd`` by following
  ``init_task.tasks``, as ``for_each_process()`` does.
"""

from typing import Dict, Optional

from mminspect.arch.arm64 import Regime
from mminspect.errors import MMInspectError
from mminspect.target.base import Target, TargetFault, parse_vmcoreinfo

__all__ = ("computed_vmcoreinfo", "kernel_vmcoreinfo", "task_mm_pgd")


def read_u64(target: Target, name: str) -> Optional[int]:
    """The u64 at symbol ``name``, or None."""
    addr = target.symbol(name)
    if addr is None:
        return None
    try:
        return int.from_bytes(target.read_virt(addr, 8), "little")
    except TargetFault:
        return None


def kernel_vmcoreinfo(target: Target) -> Optional[Dict[str, str]]:
    """The kernel's ``vmcoreinfo_data`` buffer, parsed, or None when it is
    missing or does not hold the keys every arm64 kernel writes."""
    data, size = read_u64(target, "vmcoreinfo_data"), read_u64(target, "vmcoreinfo_size")
    if not data or not size or size > 1 << 16:
        return None
    try:
        raw = target.read_virt(data, size)
    except TargetFault:
        return None
    info = parse_vmcoreinfo(raw.split(b"\0", 1)[0].decode("ascii", "replace"))
    if "PAGESIZE" not in info or "NUMBER(VA_BITS)" not in info:
        return None
    return info


def computed_vmcoreinfo(target: Target, regime: Regime, kaslr_delta: int,
                        va_bits: Optional[int] = None) -> Dict[str, str]:
    """
    The VMCOREINFO keys mminspect needs, computed from symbols and variables
    and the running ``regime`` (TCR_EL1), for a kernel without
    ``vmcoreinfo_data``; ``va_bits`` is the build's VA_BITS when known.

    :raises MMInspectError: if a key cannot be computed
    """
    info: Dict[str, str] = {"PAGESIZE": str(regime.page_size)}
    vabits = read_u64(target, "vabits_actual")
    info["NUMBER(VA_BITS)"] = str(va_bits or vabits or regime.vabits_actual)
    info["NUMBER(TCR_EL1_T1SZ)"] = f"0x{64 - regime.vabits_actual:x}"
    for key, var in (("kimage_voffset", "kimage_voffset"), ("PHYS_OFFSET", "memstart_addr")):
        value = read_u64(target, var)
        if value is None:
            raise MMInspectError(f"{target.name}: cannot read {var}")
        info[f"NUMBER({key})"] = f"0x{value:x}"
    info["NUMBER(MAX_PHYSMEM_BITS)"] = str(regime.pa_bits)
    info["KERNELOFFSET"] = f"{kaslr_delta:x}"
    swapper = target.symbol("swapper_pg_dir")
    if swapper is None:
        raise MMInspectError(f"{target.name}: no swapper_pg_dir symbol")
    info["SYMBOL(swapper_pg_dir)"] = f"{swapper:x}"
    uts = target.symbol("init_uts_ns")
    off = target.offsetof("struct uts_namespace", "name.release")
    if uts is not None and off is not None:
        try:
            info["OSRELEASE"] = target.read_virt(uts + off, 65).split(b"\0", 1)[0].decode()
        except TargetFault:
            pass
    return info


def _u64_at(target: Target, address: int) -> int:
    try:
        return int.from_bytes(target.read_virt(address, 8), "little")
    except TargetFault as e:
        raise MMInspectError(f"cannot follow the task list: {e}") from None


def task_mm_pgd(target: Target, pid: int) -> int:
    """
    The ``mm->pgd`` (a kernel VA) of the process with ``pid``, found by
    following ``init_task.tasks`` (thread-group leaders).

    :raises MMInspectError: if there is no such process, it is a kernel
        thread, or the debug info lacks the fields
    """
    offs = [target.offsetof("struct task_struct", m) for m in ("tasks", "pid", "mm", "comm")]
    pgd_off = target.offsetof("struct mm_struct", "pgd")
    head = target.symbol("init_task")
    if None in offs or pgd_off is None or head is None:
        raise MMInspectError(f"{target.name}: walking a pid needs the kernel's debug info (file vmlinux)")
    tasks, pid_off, mm_off, comm_off = offs
    head += tasks
    node = _u64_at(target, head)
    for _ in range(1 << 20):
        if node == head:
            break
        task = node - tasks
        if int.from_bytes(target.read_virt(task + pid_off, 4), "little", signed=True) == pid:
            mm = _u64_at(target, task + mm_off)
            if not mm:
                comm = target.read_virt(task + comm_off, 16).split(b"\0", 1)[0].decode(errors="replace")
                raise MMInspectError(f"pid {pid} ({comm}) is a kernel thread: no mm")
            return _u64_at(target, mm + pgd_off)
        node = _u64_at(target, node)
    raise MMInspectError(f"no task with pid {pid}")
