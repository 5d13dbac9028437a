"""
vtop: why a virtual address translates, or faults, level by level
-----------------------------------------------------------------

:func:`vtop` follows one VA down one root's tables the way the MMU does and
records every level (the table's PA, the index, the entry's PA, the raw
descriptor and what it is), the permissions after table-level
PXNTable/UXNTable/APTable inheritance, and where and why the walk stopped:

==================  ========================================================
``page``            a level-3 page descriptor
``block``           a block descriptor at a level that may hold one
``contiguous``      a page or block with PTE_CONT: one of a run of
                    CONT_PTES/CONT_PMDS entries (the run is checked)
``none``            an empty entry (the address faults)
``invalid``         a non-zero entry with the valid bit clear (for a user
                    mm: a swap, migration, device-private, PROT_NONE,
                    uffd-wp or marker entry, decoded by
                    :mod:`mminspect.nonpresent`)
``reserved``        a descriptor type the MMU treats as invalid at this
                    level (a block where no block may be, ``0b01`` at level 3)
``outside-ram``     the next table's PA is in no present memory section
``missing``         the next table is RAM, but not in the dump
``loop``            the next table is one already on the path
==================  ========================================================

For a mapped address it adds the physical page's facts
(:func:`mminspect.pageinfo.page_info`) and checks the answer against drgn's
``follow_phys()`` (when the target is a drgn program) and, for the linear
map, against ``__pa()`` and against the dump's own ``PT_LOAD`` headers
(``p_vaddr`` -> ``p_paddr``): a disagreement is a finding about the dump or
the tables (drgn#461).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from mminspect.arch.arm64 import (
    PTDUMP_MASK,
    PTE_AF,
    PTE_CONT,
    PTE_DBM,
    PTE_RDONLY,
    TABLE_APTABLE_NOEL0,
    TABLE_APTABLE_RO,
    TABLE_PXN,
    TABLE_UXN,
    decode_prot,
)
from mminspect.bits import U64
from mminspect.classify import classifier_for
from mminspect.errors import MMInspectError
from mminspect.kernel import Kernel, Root
from mminspect.nonpresent import SwapEncoding, decode_nonpresent
from mminspect.pageinfo import page_info
from mminspect.target.base import TargetFault, core_file_of, program_of
from mminspect.target.elf import PT_LOAD, core_phdrs
from mminspect.walk import Mapping

__all__ = ("JSON_SCHEMA", "Check", "Step", "Translation", "resolve_va_root", "vtop")

JSON_SCHEMA = "mminspect.vtop/1"

STOPS = ("page", "block", "contiguous", "none", "invalid", "reserved", "outside-ram", "missing", "loop")


@dataclass(frozen=True)
class Step:
    """One level of the walk: the entry read and what it is."""

    level: int
    level_name: str
    table: int  #: PA of the table (or sub-page pgd object)
    index: int
    entry: int  #: PA of the entry
    desc: int
    kind: str  #: table, page, block, none, invalid, reserved
    next_table: Optional[int] = None
    attrs: str = ""  #: ptdump attributes of a leaf; table bits of a table

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Check:
    """An independent answer for the same VA and whether it agrees."""

    source: str  #: "drgn follow_phys", "__pa()", "PT_LOAD"
    pa: Optional[int]
    agrees: Optional[bool]  #: None: the source has no answer here
    detail: str

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Translation:
    """The result of :func:`vtop` (see the module docstring)."""

    va: int
    root: Root
    region: str
    steps: List[Step]
    stop: str
    reason: str
    pa: Optional[int] = None
    leaf: Optional[Mapping] = None
    cont: Optional[Dict[str, object]] = None
    nonpresent: Optional[Dict[str, object]] = None
    page: Optional[object] = None  #: pageinfo.PageInfo of the mapped page
    checks: List[Check] = field(default_factory=list)
    tag: Optional[int] = None  #: the top byte ignored (TBI) when the VA carried one

    @property
    def mapped(self) -> bool:
        return self.pa is not None

    @property
    def effective(self) -> Optional[Dict[str, bool]]:
        return self.leaf.effective if self.leaf is not None else None

    def __repr__(self) -> str:
        where = f"-> {self.pa:#x}" if self.pa is not None else f"faults ({self.stop})"
        return f"Translation({self.va:#x} in {self.root.name} {where}: {self.reason})"


def _table_bits(desc: int) -> str:
    names = [(TABLE_PXN, "PXNTable"), (TABLE_UXN, "UXNTable"), (TABLE_APTABLE_NOEL0, "APTable[0] (no EL0)"),
             (TABLE_APTABLE_RO, "APTable[1] (read-only)")]
    return " ".join(n for bit, n in names if desc & bit)


def resolve_va_root(kernel: Kernel, va: int, mm: Optional[str] = None) -> Root:
    """The root that translates ``va``: ``mm`` when given, init_mm for an
    address in the TTBR1 half.

    :raises MMInspectError: for a user-half VA without ``mm``, or a VA
        outside the root (non-canonical)"""
    top = va >> 55 & 1
    if mm is None:
        if not top:
            raise MMInspectError(f"{va:#x} is a user-half (TTBR0) address: give the mm with --mm ROOT "
                                 "(efi_mm, a pid or pgd:PHYS)")
        mm = "init_mm"
    root = kernel.root(mm)
    if root.ttbr1 != bool(top):
        half = "kernel (TTBR1)" if root.ttbr1 else "user (TTBR0)"
        raise MMInspectError(f"{va:#x} is outside {root.name}: that root translates the {half} half")
    return root


def vtop(kernel: Kernel, va: int, mm: Optional[str] = None, root: Optional[Root] = None,
         page_facts: bool = True, checks: bool = True) -> Translation:
    """
    Translate ``va`` through ``mm`` (default: init_mm for kernel addresses)
    as the MMU does, recording every level.

    >>> t = vtop(k, 0xffff800008001234)
    >>> t.stop, hex(t.pa)
    ('page', '0x40001234')
    >>> [s.level_name for s in t.steps]
    ['PGD', 'PUD', 'PMD', 'PTE']

    :raises MMInspectError: for a VA outside every root (non-canonical, or a
        user address with no ``mm``)
    """
    r = kernel.regime
    tag = None
    if va >> 55 & 1 and va >> 56 != 0xFF:
        tag = va >> 56  # TBI: the MMU ignores the top byte
        va |= 0xFF << 56
    root = root or resolve_va_root(kernel, va, mm)
    if va < root.start or (root.end and va >= root.end):
        raise MMInspectError(f"{va:#x} is outside {root.name} "
                             f"({root.start:#x}-{(root.end - 1) & U64:#x}): not a canonical address there")
    region = kernel.layout.region_of(va) if root.ttbr1 else ("EFI runtime" if root.name == "efi_mm" else "user")
    steps: List[Step] = []
    table, entries, level = root.phys, root.entries, r.top_level
    inherit = 0
    path = {table}
    memory = _memory(kernel)
    while True:
        shift = r.shift(level)
        idx = (((va - root.va_base) & U64) >> shift) & (entries - 1)
        entry_pa = table + idx * 8
        ram, stored = _where(kernel, memory, table, entries * 8)
        rows = None
        err = "the dump leaves it out (beyond its PT_LOAD p_filesz: makedumpfile excluded it)"
        if stored is not False:
            try:
                rows = kernel.target.read_phys(table, entries * 8)
            except TargetFault as e:
                err = f"its PA is RAM but the dump does not hold it ({e})"
        if rows is None:
            stop = "outside-ram" if ram is False else "missing"
            why = "its PA is in no present memory section (not RAM)" if stop == "outside-ram" else err
            if not steps:
                why = f"the root table {table:#x} cannot be read: {why}"
            else:
                prev = steps[-1]
                why = (f"{prev.level_name} entry {prev.index} points to {r.level_name(level)} table {table:#x}: "
                       f"{why}")
            return Translation(va, root, region, steps, stop, why, tag=tag)
        desc = int.from_bytes(rows[idx * 8 : idx * 8 + 8], "little")
        typ = desc & 3
        name = r.level_name(level)
        if not desc & 1:
            kind = "none" if desc == 0 else "invalid"
            steps.append(Step(level, name, table, idx, entry_pa, desc, kind))
            t = Translation(va, root, region, steps, kind,
                            f"{name} entry {idx} of table {table:#x} is "
                            + ("empty (pte_none): the access faults" if kind == "none"
                               else f"not valid ({desc:#x}): the access faults"), tag=tag)
            if kind == "invalid" and not root.ttbr1:
                enc = kernel.__dict__.get("_swap_encoding") or SwapEncoding.detect(kernel)
                kernel.__dict__["_swap_encoding"] = enc
                t.nonpresent = decode_nonpresent(desc, level == 3 or level in r.block_levels(), enc)
                t.reason += f"; {t.nonpresent['meaning']}"
            return t
        if typ == 3 and level < 3:
            nxt = r.desc_to_phys(desc)
            inherit |= (desc >> 59) & 0xF
            steps.append(Step(level, name, table, idx, entry_pa, desc, "table", nxt, _table_bits(desc)))
            if nxt in path:
                return Translation(va, root, region, steps, "loop",
                                   f"{name} entry {idx} points to table {nxt:#x}, already on this path: a loop",
                                   tag=tag)
            path.add(nxt)
            table, entries, level = nxt, r.entries_per_table, level + 1
            continue
        leaf = (typ == 3 and level == 3) or (typ == 1 and level < 3 and level in r.block_levels())
        if not leaf:
            steps.append(Step(level, name, table, idx, entry_pa, desc, "reserved"))
            why = ("0b01 at level 3 is reserved" if level == 3
                   else f"a block descriptor where this regime allows none ({name})")
            return Translation(va, root, region, steps, "reserved",
                               f"{name} entry {idx} of table {table:#x}: {why}; the MMU faults", tag=tag)
        span = 1 << shift
        attrs = " ".join(decode_prot(desc & PTDUMP_MASK).split())
        kind = "page" if level == 3 else "block"
        steps.append(Step(level, name, table, idx, entry_pa, desc, kind, None, attrs))
        base = r.desc_to_phys(desc)
        pa = base + (va & (span - 1))
        m = Mapping(va & ~(span - 1) & U64, span, base, level, name, desc & ~r.oa_mask, inherit)
        t = Translation(va, root, region, steps, kind, "", pa=pa, leaf=m, tag=tag)
        if desc & PTE_CONT:
            t.cont = _cont_run(kernel, rows, idx, level, va)
            t.stop = "contiguous"
        t.reason = (f"{name} {'page' if level == 3 else 'block'} descriptor"
                    + (f", one of a contiguous run of {t.cont['entries']}" if t.cont else "")
                    + f": {va:#x} -> {pa:#x}")
        if page_facts:
            t.page = page_info(kernel, [pa >> r.page_shift])[0]
        if checks:
            t.checks = _checks(kernel, root, va, pa)
        return t


def _memory(kernel: Kernel):
    try:
        return classifier_for(kernel).memory
    except MMInspectError:
        return None


def _where(kernel: Kernel, memory, pa: int, size: int) -> Tuple[Optional[bool], Optional[bool]]:
    """(is it RAM, does the dump hold its bytes), each None when unknown.
    RAM by the present memory sections, else by the ELF dump's PT_LOAD
    p_memsz coverage; held by PT_LOAD p_filesz."""
    ram = None
    if memory is not None and memory.sections:
        ram = any(s.start <= pa < s.start + s.size for s in memory.sections)
    stored = None
    core = core_file_of(kernel.target)
    if core is not None:
        seg = [sg for sg in core._segments if sg[0] <= pa < sg[1]]
        if ram is None:
            ram = bool(seg)
        if seg:
            stored = pa + size <= seg[-1][2]
    return ram, stored


#: Bits a contiguous run's entries may differ in: the access flag and the
#: dirty state (hardware DBM updates each entry on its own: the kernel's
#: contpte code folds them, arch/arm64/mm/contpte.c).
_CONT_FREE = PTE_AF | PTE_RDONLY | PTE_DBM | (1 << 55)


def _cont_run(kernel: Kernel, rows: bytes, idx: int, level: int, va: int) -> Dict[str, object]:
    """The CONT_PTES/CONT_PMDS run around entry ``idx``, and whether its
    entries are what the architecture requires (every one valid, with the
    same attributes, mapping consecutive output addresses from an aligned
    start); anything else is CONSTRAINED UNPREDICTABLE."""
    r = kernel.regime
    n = r.cont_entries(level)
    first = idx & ~(n - 1)
    span = 1 << r.shift(level)
    descs = [int.from_bytes(rows[(first + i) * 8 : (first + i) * 8 + 8], "little") for i in range(n)]
    base = r.desc_to_phys(descs[0])
    attr0 = descs[0] & ~r.oa_mask & ~_CONT_FREE
    bad = []
    for i, d in enumerate(descs):
        if not d & 1 or not d & PTE_CONT:
            bad.append(f"entry {first + i} is not a valid contiguous entry ({d:#x})")
        elif r.desc_to_phys(d) != base + i * span:
            bad.append(f"entry {first + i} maps {r.desc_to_phys(d):#x}, not {base + i * span:#x}")
        elif d & ~r.oa_mask & ~_CONT_FREE != attr0:
            bad.append(f"entry {first + i} has other attributes ({d & ~r.oa_mask:#x})")
    if base % (n * span):
        bad.append(f"the run's output address {base:#x} is not aligned to {n * span:#x}")
    va0 = (va & ~(n * span - 1)) & U64
    return {"entries": n, "first_index": first, "va": va0, "size": n * span, "pa": base,
            "consistent": not bad, "problems": bad}


def _checks(kernel: Kernel, root: Root, va: int, pa: int) -> List[Check]:
    out: List[Check] = []
    prog = program_of(kernel.target, debug_info=False)
    if prog is not None:
        out.append(_follow_phys(kernel, prog, root, va, pa))
    if root.ttbr1 and kernel.is_linear(va):
        lin = kernel.virt_to_phys(va)
        out.append(Check("__pa()", lin, lin == pa,
                         "the linear map's arithmetic (PHYS_OFFSET) agrees" if lin == pa else
                         f"the linear map's arithmetic gives {lin:#x}, the tables {pa:#x}: the tables "
                         "do not map this linear address to its own page"))
        out.append(_pt_load(kernel, va, pa))
    return out


def _follow_phys(kernel: Kernel, prog, root: Root, va: int, pa: int) -> Check:
    """drgn's own arm64 walker on the same root: the primitive behind
    ``follow_phys(mm, addr)``, which takes the pgd itself and so needs no
    ``struct mm_struct`` (nor DWARF) for any root."""
    import drgn

    try:
        from _drgn import _linux_helper_follow_phys
    except ImportError:
        return Check("drgn follow_phys", None, None, "this drgn has no follow_phys")
    pgd = kernel.target.symbol("swapper_pg_dir") if root.ttbr1 else None
    if pgd is None:
        pgd = kernel.phys_to_virt(root.phys)
    try:
        theirs = _linux_helper_follow_phys(prog, pgd, va)
    except drgn.FaultError as e:
        return Check("drgn follow_phys", None, False, f"drgn faults: {str(e).splitlines()[0]}")
    except (ValueError, LookupError) as e:
        return Check("drgn follow_phys", None, None, f"not available: {e}")
    return Check("drgn follow_phys", theirs, theirs == pa,
                 "drgn's own arm64 walker agrees" if theirs == pa else f"drgn says {theirs:#x}")


def _pt_load(kernel: Kernel, va: int, pa: int) -> Check:
    core = core_file_of(kernel.target)
    if core is None:
        return Check("PT_LOAD", None, None, "no ELF dump file at hand (live kernel, bundle or kdump format)")
    cache = kernel.__dict__.get("_pt_loads")
    if cache is None:
        # QEMU's dump-guest-memory (paging=false) writes p_vaddr = p_paddr or
        # 0: no virtual addresses at all.
        cache = [(vaddr, paddr, memsz) for ptype, _, vaddr, paddr, _, memsz in core_phdrs(core.path) or ()
                 if ptype == PT_LOAD and vaddr and vaddr != paddr]
        kernel.__dict__["_pt_loads"] = cache
    if not cache:
        return Check("PT_LOAD", None, None, "the dump's PT_LOAD headers record no virtual addresses "
                                            "(QEMU dump-guest-memory): nothing to compare")
    hits = [(vaddr, paddr, memsz) for vaddr, paddr, memsz in cache if vaddr <= va < vaddr + memsz]
    if not hits:
        return Check("PT_LOAD", None, None, "no PT_LOAD segment covers this virtual address")
    vaddr, paddr, _ = hits[-1]
    theirs = paddr + (va - vaddr)
    return Check("PT_LOAD", theirs, theirs == pa,
                 "the dump's PT_LOAD p_vaddr -> p_paddr agrees" if theirs == pa else
                 f"the dump's PT_LOAD header says {theirs:#x} (p_vaddr {vaddr:#x} -> p_paddr {paddr:#x}), the "
                 f"tables {pa:#x}: the dump's headers and its page tables disagree")
