"""
What a running kernel changed while mminspect read it.

On /proc/kcore (``-k``) nothing holds still: tasks fork and exit, mmap and
munmap (mminspect itself among them: its own arrays come and go as it reads),
and the kernel frees page tables after an RCU grace period. An audit that
reads the NR_PAGETABLE counter, then walks every root, then scans the memmap
sees each at another moment. :func:`settle_audit` reads again what the first
pass found wrong and reports each page that changed in between as such
(freed while read, allocated while read, counter moved), so a live kernel
never shows a leak or a missing ctor that is only the passage of time. What
is still wrong when read again stays a finding.
"""

import time
from typing import Dict, List, Optional

import numpy as np

from mminspect.classify import Audit, classifier_for, resolve_roots
from mminspect.errors import MMInspectError
from mminspect.memory import node_stat
from mminspect.target.base import program_of
from mminspect.walk import walk

__all__ = ("is_live", "settle_audit")

#: how long to wait, and in which steps, for RCU-deferred table frees to land
RCU_WAIT_S = 5.0
RCU_STEP_S = 1.0


def is_live(kernel) -> bool:
    """Is the target a running kernel (drgn's /proc/kcore or QEMU-over-QMP
    program, not a dump)?"""
    prog = program_of(kernel.target, debug_info=False)
    if prog is None:
        return False
    import drgn

    return bool(prog.flags & drgn.ProgramFlags.IS_LIVE)


def _task_tables(kernel) -> Dict[int, str]:
    """Table PFN -> owning root, for every task's mm walked now."""
    c = classifier_for(kernel)
    out: Dict[int, str] = {}
    try:
        roots = resolve_roots(kernel, "tasks")
    except MMInspectError:
        return out
    for root in roots:
        try:
            w = walk(kernel, root)
        except MMInspectError:  # exited between the task list and its walk
            continue
        for pfn in (w.table_phys >> np.uint64(c.shift)).tolist():
            out.setdefault(int(pfn), root.name)
    return out


def settle_audit(kernel, a: Audit) -> Audit:
    """Read again, on a live kernel, what ``a`` found wrong; move what changed
    in between from the findings to ``a.changed_while_read``."""
    if not is_live(kernel):
        return a
    c = classifier_for(kernel)
    notes: List[str] = []
    after: Optional[int] = None
    try:
        after = sum(x.exact for x in node_stat(kernel, "NR_PAGETABLE"))
    except MMInspectError:
        pass
    if after is not None and a.counter is not None and after != a.counter:
        notes.append(f"NR_PAGETABLE {a.counter} when the audit began, {after} when it ended "
                     f"({after - a.counter:+d}: tables allocated and freed while it read)")
    now = _task_tables(kernel)
    # Typed pages no root reached: freed since the scan, or tables of a task
    # that were allocated after its mm was walked.
    if len(a.unreachable_typed):
        facts = c.pages.facts(a.unreachable_typed)
        still = {int(p): bool(t) for p, t in zip(facts["pfn"].tolist(), facts["table"].tolist())}
        keep = []
        for i, pfn in enumerate(a.unreachable_typed.tolist()):
            if not still.get(int(pfn), True):
                notes.append(f"{int(pfn) << c.shift:#x}: typed when the memmap was scanned, not typed when read "
                             "again: freed while read")
            elif int(pfn) in now:
                notes.append(f"{int(pfn) << c.shift:#x}: a table of {now[int(pfn)]} when its mm was walked again: "
                             "allocated while read")
            else:
                keep.append(i)
        # A table freed through an mmu_gather batch keeps its type until the
        # batch's RCU grace period ends (tlb_remove_table() queues the batch
        # with call_rcu(); the ptdesc itself carries no rcu_head then): read
        # the rest again after a pause, a few times.
        waited = 0.0
        while keep and waited < RCU_WAIT_S:
            time.sleep(RCU_STEP_S)
            waited += RCU_STEP_S
            pfns = a.unreachable_typed[keep]
            facts = c.pages.facts(pfns)
            typed_now = {int(p): bool(t) for p, t in zip(facts["pfn"].tolist(), facts["table"].tolist())}
            for i in list(keep):
                pfn = int(a.unreachable_typed[i])
                if not typed_now.get(pfn, True):
                    notes.append(f"{pfn << c.shift:#x}: typed and reached by no root, no longer typed {waited:.0f} s "
                                 "later: freed while read (an RCU-deferred table free)")
                    keep.remove(i)
        if len(keep) != len(a.unreachable_typed):
            a.unreachable_typed = a.unreachable_typed[keep]
            a.unreachable_facts = a.unreachable_facts[keep]
            a.unreachable_hints = [a.unreachable_hints[i] for i in keep]
    # Tables whose ctor was expected, found without the type: a task's table
    # freed (and its page reused) between the walk and the struct page read.
    if a.expected_ctor_missing:
        pfns = np.array([phys >> c.shift for _, phys, _ in a.expected_ctor_missing], dtype=np.uint64)
        facts = c.pages.facts(pfns)
        typed_now = {int(p): bool(t) for p, t in zip(facts["pfn"].tolist(), facts["table"].tolist())}
        still_missing = []
        for root, phys, lvl in a.expected_ctor_missing:
            pfn = phys >> c.shift
            if typed_now.get(pfn) or (root.startswith("pid ") and now.get(pfn) != root):
                notes.append(f"{phys:#x}: {root} {lvl} table without the type when read, "
                             + ("typed when read again" if typed_now.get(pfn) else "no longer in that mm")
                             + ": changed while read")
            else:
                still_missing.append((root, phys, lvl))
        a.expected_ctor_missing = still_missing
    a.changed_while_read = notes
    return a
