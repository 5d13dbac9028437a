"""
Roots: where a walk starts
--------------------------

A :class:`Root` is a root table and the VA range of interest under it. This
module is the one place roots are found: swapper's (``init_mm``, and the
vmemmap region under it), the KPTI trampoline's ``tramp_pg_dir``, ``efi_mm``,
a task's mm by pid, a raw ``pgd:PHYS``, and every mm in use
(:func:`task_roots`), through :func:`resolve_roots`.
"""

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

from mminspect.bits import U64
from mminspect.errors import MMInspectError
from mminspect.target.base import HasTaskPgd, TargetFault, program_of

if TYPE_CHECKING:
    from mminspect.kernel import Kernel

__all__ = ("Root", "find_root", "resolve_roots", "task_roots", "tramp_root", "user_root")


@dataclass(frozen=True)
class Root:
    """
    Where a walk starts.

    :ivar name: ``init_mm``, ``efi_mm``, ``vmemmap`` or ``pid N``
    :ivar phys: physical address of the root table (may be a sub-page slab object)
    :ivar entries: number of entries in the root table
    :ivar va_base: VA mapped by entry 0 (sign-extended for the TTBR1 half)
    :ivar start: first VA of interest (inclusive)
    :ivar end: last VA of interest (exclusive; 0 means 2**64)
    """

    name: str
    phys: int
    entries: int
    va_base: int
    start: int
    end: int
    ttbr1: bool

    @property
    def end_inclusive(self) -> int:
        return (self.end - 1) & U64

    def __repr__(self) -> str:
        return (f"Root({self.name} phys={self.phys:#x} entries={self.entries} "
                f"range={self.start:#x}-{self.end_inclusive:#x})")


def find_root(kernel: "Kernel", spec: str, start: Optional[int] = None, end: Optional[int] = None) -> Root:
    """``init_mm``, ``efi_mm``, ``vmemmap``, a pid or ``pgd:PHYS`` as a
    :class:`Root` (see :meth:`mminspect.kernel.Kernel.root`)."""
    r = kernel.regime
    t = kernel.target
    if spec in ("init_mm", "swapper", "vmemmap"):
        swapper = t.symbol("swapper_pg_dir")
        if swapper is None:
            raise MMInspectError(f"{t.name}: no swapper_pg_dir in VMCOREINFO or symbols")
        phys = kernel.virt_to_phys(swapper)
        entries = r.root_entries(index_bits=r.va_bits)
        base = r.ttbr1_va(0, r.va_bits)
        lo, hi = base, 0
        if spec == "vmemmap":
            lo, hi = kernel.layout.vmemmap_start, kernel.layout.vmemmap_end
        return _clip(Root(spec, phys, entries, base, lo, hi, True), start, end)
    if spec.startswith("pgd:"):
        try:
            phys = int(spec[4:], 16)
        except ValueError:
            raise MMInspectError(f"bad root {spec!r}: expected pgd:PHYS in hex") from None
        _check_pgd(kernel, spec, phys)
        return _clip(user_root(kernel, spec, phys), start, end)
    if spec == "efi_mm":
        pgd = _mm_pgd_of_symbol(kernel, "efi_mm")
    elif spec.isdigit() or spec.startswith("pid"):
        pgd = _mm_pgd_of_pid(kernel, int(spec.removeprefix("pid").strip()))
        spec = f"pid {int(spec.removeprefix('pid').strip())}"
    else:
        raise MMInspectError(f"unknown root {spec!r}: use init_mm, efi_mm, vmemmap, a pid or pgd:PHYS")
    return _clip(user_root(kernel, spec, kernel.virt_to_phys(pgd)), start, end)


def _check_pgd(kernel: "Kernel", spec: str, phys: int) -> None:
    """A user-given pgd is a physical address the regime allows, aligned
    as the kernel allocates a pgd (PGD_SIZE from pgd_cache when that is
    below a page: arch/arm64/mm/pgd.c; a page otherwise), and in the
    dump's memory."""
    r = kernel.regime
    size = min(r.root_entries() * 8, r.page_size)
    if not 0 <= phys < 1 << r.pa_bits:
        raise MMInspectError(f"bad root {spec!r}: not a physical address below 2^{r.pa_bits}")
    if phys % size:
        raise MMInspectError(f"bad root {spec!r}: a pgd is aligned to its {size} bytes; "
                             f"{phys:#x} is {phys % size} bytes into one")
    try:
        kernel.target.read_phys(phys, 8)
    except TargetFault:
        raise MMInspectError(f"bad root {spec!r}: {phys:#x} is not in the dump's memory "
                             "(not RAM, or left out of the dump)") from None


def user_root(kernel: "Kernel", name: str, phys: int) -> Root:
    """A TTBR0 (user-half) root at physical address ``phys``, as for
    efi_mm and tasks: ``[0, TASK_SIZE_64)``."""
    r = kernel.regime
    if r.folded:
        # pgdir_is_page_size(): a runtime-folded top level means the pgd
        # page *is* the next level's table (p4d_offset aligns down).
        phys &= ~(r.page_size - 1)
    return Root(name, phys, r.root_entries(), 0, 0, 1 << r.vabits_actual, False)


def _clip(root: Root, start: Optional[int], end: Optional[int]) -> Root:
    lo, hi = root.start, root.end
    if start is not None:
        lo = max(lo, start)
    if end is not None:
        hi = end if hi == 0 else min(hi, end)
    if hi != 0 and lo >= hi:
        raise MMInspectError(
            f"range {start:#x}-{end:#x} lies outside {root.name} "
            f"({root.start:#x}-{(root.end - 1) & U64:#x})"
        )
    return Root(root.name, root.phys, root.entries, root.va_base, lo, hi, root.ttbr1)


def _mm_pgd_of_symbol(kernel: "Kernel", name: str) -> int:
    t = kernel.target
    addr = t.symbol(name)
    off = t.offsetof("struct mm_struct", "pgd")
    if addr is None or off is None:
        raise MMInspectError(f"{t.name}: walking {name} needs the kernel's debug info (-s VMLINUX)")
    # efi_virtmap_init() sets efi_mm.pgd only when the runtime services
    # are mapped: not without UEFI, with efi=noruntime, nor by default on
    # PREEMPT_RT ("EFI runtime services will be disabled.").
    why = ("EFI runtime services were not mapped: no UEFI, efi=noruntime, or PREEMPT_RT's default"
           if name == "efi_mm" else "not set up on this kernel")
    return _read_pointer(kernel, addr + off, f"{name}.pgd", why)


def _mm_pgd_of_pid(kernel: "Kernel", pid: int) -> int:
    t = kernel.target
    prog = program_of(t)
    if prog is None:
        if isinstance(t, HasTaskPgd):
            return t.task_mm_pgd(pid)
        raise MMInspectError(f"{t.name}: walking a pid needs debug info (-s VMLINUX)")
    from drgn.helpers.linux.pid import find_task

    try:
        task = find_task(prog, pid)
    except Exception as e:  # drgn FaultError, LookupError
        raise MMInspectError(f"cannot look up pid {pid}: {e}") from None
    if not task:
        raise MMInspectError(f"no task with pid {pid}")
    if not task.mm:
        raise MMInspectError(f"pid {pid} ({task.comm.string_().decode()}) is a kernel thread: no mm")
    return task.mm.pgd.value_()


def _read_pointer(kernel: "Kernel", addr: int, what: str, why: str) -> int:
    try:
        value = int.from_bytes(kernel.target.read_virt(addr, 8), "little")
    except TargetFault as e:
        raise MMInspectError(f"cannot read {what}: {e}") from None
    if value == 0:
        raise MMInspectError(f"{what} is NULL ({why})")
    return value


def tramp_root(kernel: "Kernel") -> Optional[Root]:
    """The KPTI trampoline's root (``tramp_pg_dir``), a TTBR1 root like
    swapper's; None when the kernel has none."""
    addr = kernel.image_symbol("tramp_pg_dir")
    if addr is None:
        return None
    base = find_root(kernel, "init_mm")
    try:
        data = kernel.target.read_phys(kernel.virt_to_phys(addr), base.entries * 8)
    except TargetFault:
        return None
    if not any(data):
        return None  # KPTI not in use: map_entry_trampoline() never ran
    return dataclasses.replace(base, name="tramp_pg_dir", phys=kernel.virt_to_phys(addr))


def task_roots(kernel: "Kernel") -> List[Root]:
    """One root per distinct mm in use (needs a drgn Program with debug info):
    every task's mm, then the mms borrowed lazily as ``active_mm`` by kernel
    threads and each CPU's idle task. A lazy mm outlives its process (its
    mm_count holds it, mm_users is 0), and from v6.14 a page-sized pgd
    carries the table type, so without it the audit would call that pgd a
    leak."""
    prog = program_of(kernel.target)
    if prog is None:
        return []
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.sched import idle_task

    seen = {prog["init_mm"].address_}  # the kernel root, walked as init_mm
    out = []

    def add(mm, name: str) -> None:
        if mm.value_() and mm.value_() not in seen:
            seen.add(mm.value_())
            out.append(user_root(kernel, name, kernel.virt_to_phys(mm.pgd.value_())))

    lazy = []
    try:
        for task in for_each_task(prog):
            add(task.mm, f"pid {task.pid.value_()}")
            if not task.mm:
                lazy.append((task.active_mm, f"lazy mm ({task.comm.string_().decode()}[{task.pid.value_()}])"))
        lazy += [(idle_task(prog, cpu).active_mm, f"lazy mm (cpu {cpu} idle)") for cpu in for_each_possible_cpu(prog)]
        for mm, name in lazy:
            add(mm, name)
    except Exception:  # a damaged task list: the roots found so far
        pass
    return out


def resolve_roots(kernel: "Kernel", spec: str) -> List[Root]:
    """``init_mm``, ``efi_mm``, ``vmemmap``, ``tramp``, a pid, ``pgd:PHYS``,
    ``tasks`` (every task's mm) or ``all`` (init_mm, efi_mm, tramp_pg_dir
    and every task's mm)."""
    if spec in ("tramp", "tramp_pg_dir"):
        root = tramp_root(kernel)
        if root is None:
            raise MMInspectError(f"{kernel.target.name}: no KPTI trampoline tables (tramp_pg_dir empty or absent)")
        return [root]
    if spec == "tasks":
        roots = task_roots(kernel)
        if not roots:
            raise MMInspectError(f"{kernel.target.name}: no task mms (needs debug info)")
        return roots
    if spec != "all":
        return [find_root(kernel, spec)]
    roots = [find_root(kernel, "init_mm")]
    try:
        roots.append(find_root(kernel, "efi_mm"))
    except MMInspectError:
        pass
    tr = tramp_root(kernel)
    if tr is not None:
        roots.append(tr)
    roots += task_roots(kernel)
    return roots
