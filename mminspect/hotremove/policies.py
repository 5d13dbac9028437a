"""
The built-in hot-remove policies, one per kernel era
----------------------------------------------------

- ``rfc2017``: the 2017 arm64 RFC (v1/v2, never merged): x86-style recursive
  ``remove_pagetable(start, end, direct)``, a child table freed as soon as it
  is empty (no floor/ceiling), ``free_pagetable(page, order, direct)`` running
  ``pgtable_page_dtor()`` for every non-reserved linear-map table and
  ``free_reserved_page()`` for reserved ones. No boot-memory notifier.
- ``v5.7``: mainline v5.7..v6.15 (bbd6ec605c0f): ``vmemmap_free()`` per
  section, then ``__remove_pgd_mapping()``; ``free_empty_tables()`` with the
  floor/ceiling rule; tables freed with ``free_pages()`` and no dtor.
- ``v6.16``: the same code, but hot-add tables now carry a ctor
  (5e8eb9aeeda3, cb5d2be83862) while hot-remove still frees them without a
  dtor (S12).
- ``v6.16-dtor``: after Alistair Popple's 2026 fix ("arm64: mm: call pagetable
  dtor when freeing hot-removed page tables"): ``free_hotplug_pgtable_page()``
  runs ``pagetable_dtor()`` on every freed table, vmemmap tables included
  (S14). The fix cannot be seen in memory, so ``v6.16`` takes the option
  ``dtor_fix=yes`` to the same effect.
"""

from mminspect.hotremove.engine import (
    free_empty_tables,
    remove_pagetable_rfc2017,
    unmap_hotplug_range,
)
from mminspect.hotremove.policy import Era, Policy

__all__ = ("Mainline57", "Mainline616", "Mainline616DtorFix", "RFC2017", "register")


class _Mainline(Policy):
    def remove(self, sim) -> None:
        k = sim.layout
        # arch_remove_memory() once, or per block with its altmap (v6.9+).
        for piece in sim.removal_pieces():
            for sec_start, sec_end in piece.sections(sim.section_size):
                vs = sim.pfn_to_page(sec_start >> sim.page_shift)
                ve = sim.pfn_to_page(sec_end >> sim.page_shift)
                unmap_hotplug_range(sim.state, vs, ve, True, "vmemmap_free")
                free_empty_tables(sim.state, vs, ve, k["vmemmap_start"], k["vmemmap_end"], "vmemmap_free")
            lv = sim.phys_to_virt(piece.start)
            le = sim.phys_to_virt(piece.end)
            unmap_hotplug_range(sim.state, lv, le, False, "__remove_pgd_mapping")
            free_empty_tables(sim.state, lv, le, k["page_offset"], k["page_end"], "__remove_pgd_mapping")


class Mainline57(_Mainline):
    name = "v5.7"
    summary = "mainline v5.7..v6.15: hot-add tables without ctor, freed with free_pages() and no dtor"

    @classmethod
    def applies_to(cls, era: Era) -> int:
        return 2 if era.bootmem_notifier and not era.init_mm_ctor else 0


class Mainline616(_Mainline):
    name = "v6.16"
    summary = "v6.16+: hot-add tables ctor'd, freed without dtor (before the 2026 fix; dtor_fix=yes for after)"
    option_values = {"dtor_fix": ("no", "yes")}

    @classmethod
    def applies_to(cls, era: Era) -> int:
        return 3 if era.init_mm_ctor else 0

    def dtor_on_free(self, routine: str, table) -> bool:
        return self.options.get("dtor_fix", "no") == "yes"


class Mainline616DtorFix(Mainline616):
    name = "v6.16-dtor"
    summary = "v6.16+ with the 2026 fix: pagetable_dtor() on every freed table, vmemmap tables included"

    @classmethod
    def applies_to(cls, era: Era) -> int:
        return 4 if era.init_mm_ctor and era.evidence.get("dtor_fix", "").startswith("yes") else 0

    def dtor_on_free(self, routine: str, table) -> bool:
        return True


class RFC2017(Policy):
    name = "rfc2017"
    summary = "the 2017 RFC: recursive remove_pagetable(), no floor/ceiling, dtor for non-reserved linear-map tables"
    refuses_boot_memory = False
    frees_reserved_pages = True

    @classmethod
    def applies_to(cls, era: Era) -> int:
        return 1 if not era.bootmem_notifier else 0

    def remove(self, sim) -> None:
        for sec_start, sec_end in sim.proposal.sections(sim.section_size):
            vs = sim.pfn_to_page(sec_start >> sim.page_shift)
            ve = sim.pfn_to_page(sec_end >> sim.page_shift)
            remove_pagetable_rfc2017(sim.state, vs, ve, direct=False)
        lv = sim.phys_to_virt(sim.proposal.start)
        le = sim.phys_to_virt(sim.proposal.end)
        remove_pagetable_rfc2017(sim.state, lv, le, direct=True)

    def dtor_on_free(self, routine: str, table) -> bool:
        # free_pagetable(): reserved pages go to free_reserved_page() with no
        # dtor; otherwise "if (direct) pgtable_page_dtor(page)".
        return routine.endswith("(direct)") and not table.reserved


def register():
    """Entry point of the ``mminspect.policies`` group."""
    return [RFC2017, Mainline57, Mainline616, Mainline616DtorFix]
