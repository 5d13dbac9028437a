"""
An example third-party hot-remove policy: a patch modelled as a plugin
----------------------------------------------------------------------

Suppose a kernel developer proposes this change to arch/arm64/mm/mmu.c
instead of the 2026 fix that calls pagetable_dtor() unconditionally::

    static void free_hotplug_pgtable_page(struct page *page)
    {
    +	if (PageTable(page))
    +		pagetable_dtor(page_ptdesc(page));
     	free_hotplug_page_range(page, PAGE_SIZE, NULL);
    }

This module models it: the freeing code is mainline's (so it subclasses the
built-in v6.16 policy), and only the dtor decision changes. Install it (``pip
install plugins/example_policy``) or load it for one run with ``mminspect
simulate-remove --plugin plugins/example_policy/mminspect_balanced_dtor.py
--policy balanced-dtor ...``.
"""

from mminspect.hotremove.policies import Mainline616


class BalancedDtor(Mainline616):
    name = "balanced-dtor"
    summary = "example patch: pagetable_dtor() only on pages that carry the page-table type"

    @classmethod
    def applies_to(cls, era):
        return 0  # never chosen automatically: it models a proposal

    def dtor_on_free(self, routine, table):
        # PageTable(page) at free time is what the snapshot saw: its ctor ran.
        return bool(table.typed)


def register():
    """Entry point of the ``mminspect.policies`` group."""
    return [BalancedDtor]
