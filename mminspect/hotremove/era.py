"""
Kernel-era facts for the removal, detected from the dump
--------------------------------------------------------

The :class:`~mminspect.hotremove.policy.Era` a policy reads: which
ctor/dtor and offline/remove behaviour the dumped kernel has, each fact with
its evidence. Every fact is detected once, by its own detector in
:mod:`mminspect.era` (the classifier reads the same ones): by feature, not by
version; the kernel's own code is read where that is where a fact shows
(:mod:`mminspect.arch.insn`: whether the hot-remove table-freeing functions
call into NR_PAGETABLE accounting, which is how the 2026 dtor fix shows
itself). Only facts no dump can show fall back to OSRELEASE, and their
evidence says so.
"""

from mminspect.arch.insn import function_calls, function_strings
from mminspect.era import era_facts
from mminspect.hotremove.policy import Era

__all__ = ("detect_era", "function_calls", "function_strings")

#: The Era's facts, in the order their evidence is listed; dtor_fix has
#: evidence only (the policy option decides it).
_FACTS = ("page_type", "init_mm_ctor", "alloc_split", "dtor_fix", "ptlock_free_null_safe", "free_clears_type",
          "debug_vm", "check_pages", "bootmem_notifier", "leaf_split_notifier", "block_memmap",
          "altmap_per_block", "memmap_on_memory")


def detect_era(kernel) -> Era:
    """The :class:`~mminspect.hotremove.policy.Era` of ``kernel``, each fact
    with its evidence (:func:`mminspect.era.era_facts`)."""
    facts = era_facts(kernel)
    era = Era(evidence={})
    for name in _FACTS:
        value, evidence = facts.fact(name)
        if name == "page_type":
            value = "pgty" if value == "pgty" else "inverted"
        if name != "dtor_fix":
            setattr(era, name, value)
        if evidence is not None:
            era.evidence[name] = evidence
    return era
