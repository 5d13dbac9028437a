"""
Page Tables (mminspect)
-----------------------

The ``mminspect.drgn_plugin`` module provides drgn helpers for arm64 kernel
page tables, and registers the ``mminspect`` command in drgn's CLI.

The helpers walk a whole page-table tree at once — ``init_mm``
(``swapper_pg_dir``), ``efi_mm``, the vmemmap region, a task's ``mm`` — reading
every table page once, and return records: coalesced leaf mappings
(:class:`~mminspect.walk.Mapping`) and table pages with every entry that
references them (:class:`~mminspect.walk.TablePage`). drgn's own
``follow_phys()`` translates one address; these answer "what does this tree
map, and with which tables". :func:`simulate_remove_memory()` replays what a
memory hot-remove would do to those tables.

The command runs the same subcommands, with the same options and output, as
the shell's ``mminspect``, on the program of the session; drgn's redirections
and pipes apply, and ``--drgn`` prints the equivalent Python::

    >>> %mminspect walk --mm efi_mm --format ptdump > efi.txt
    >>> %mminspect walk --mm init_mm | grep -c PTE
    >>> %mminspect walk --mm efi_mm --drgn

drgn loads this module through the ``drgn.plugins`` entry point that
installing mminspect registers (``DRGN_DISABLE_PLUGINS=mminspect`` turns it
off). The command is enabled only for Linux kernel programs.
"""

import dataclasses
from typing import Any, Dict, Iterator, Optional, Sequence, TYPE_CHECKING, Union

from drgn import Object, Program
from drgn.helpers.common.prog import takes_program_or_default

from mminspect import commands
from mminspect.diff import check_same, diff, state_of_kernel, state_of_snapshot
from mminspect.errors import MMInspectError
from mminspect.hotremove import Proposal, Snapshot, capture_snapshot, get_policy, select_policy, simulate
from mminspect.identify import all_roots, identify
from mminspect.kernel import Kernel
from mminspect.report.ptdump import check_wx, ptdump_lines
from mminspect.vtop import resolve_va_root, vtop as _vtop
from mminspect.walk import walk

if TYPE_CHECKING:
    from mminspect.diff import Diff
    from mminspect.hotremove import Result
    from mminspect.identify import Identity
    from mminspect.vtop import Translation
    from mminspect.walk import Mapping, TablePage, Walk

__all__ = (
    "diff_page_tables",
    "for_each_mapping",
    "for_each_page_table",
    "identify_page_table",
    "identify_pages",
    "mminspect_kernel",
    "print_ptdump",
    "ptdump_check_wx",
    "simulate_remove_memory",
    "snapshot_page_tables",
    "vtop",
    "walk_page_tables",
)

_CACHE_KEY = "mminspect.kernel"

MMLike = Union[str, int, Object]


@takes_program_or_default
def mminspect_kernel(prog: Program) -> "Kernel":
    """
    Get mminspect's view of the kernel: translation regime, VA layout and
    roots, derived from VMCOREINFO. Built once per program (once its debug
    info is loaded).

    >>> k = mminspect_kernel()
    >>> k.regime.describe()
    '4K pages, 48-bit VA, 4 levels'
    >>> hex(k.layout.vmemmap_start)
    '0xfffffc0000000000'

    :return: :class:`mminspect.kernel.Kernel`
    :raises MMInspectError: if the program is not an arm64 Linux kernel or
        has no VMCOREINFO
    """
    k = prog.cache.get(_CACHE_KEY)
    if k is None:
        from mminspect.target.drgn import DrgnTarget

        k = Kernel(DrgnTarget(prog, _describe(prog)))
        if k.target.has_debug_info:  # else load_debug_info() later must be seen
            prog.cache[_CACHE_KEY] = k
    return k


def _describe(prog: Program) -> str:
    from drgn import ProgramFlags

    if prog.flags & ProgramFlags.IS_LIVE:
        return "live kernel (drgn)"
    return "vmcore (drgn)"


def _root(prog: Program, k: "Kernel", mm: MMLike, start: Optional[int], end: Optional[int]):
    if isinstance(mm, Object):
        type_ = mm.type_.unaliased()
        target = type_.type.unaliased() if type_.kind.name == "POINTER" else type_
        tag = getattr(target, "tag", None)
        if tag == "task_struct":
            return k.root(str(mm.pid.value_()), start, end)
        if tag != "mm_struct":
            raise TypeError(f"expected struct mm_struct * or struct task_struct *, not {mm.type_}")
        address = mm.value_() if type_.kind.name == "POINTER" else mm.address_
        for name in ("init_mm", "efi_mm"):
            sym = k.target.symbol(name)
            if sym is not None and sym == address:
                return k.root(name, start, end)
        pgd = mm.pgd.value_()
        root = k.root(f"pgd:{k.virt_to_phys(pgd):x}", start, end)
        return dataclasses.replace(root, name=f"mm {address:#x}")
    if isinstance(mm, bool) or not isinstance(mm, (str, int)):
        raise TypeError(f"expected a root name, a pid or an mm/task Object, not {type(mm).__name__}")
    return k.root(str(mm), start, end)


@takes_program_or_default
def walk_page_tables(
    prog: Program, mm: MMLike = "init_mm", *, start: Optional[int] = None, end: Optional[int] = None
) -> "Walk":
    """
    Walk one page-table tree in a single pass and return its records.

    >>> w = walk_page_tables("efi_mm")
    >>> next(w.mappings())
    Mapping(0x4000000-0x8000000 -> 0x4000000 PMD block [RW NX SHD AF NG CON BLK UXN DEVICE/nGnRE])
    >>> w = walk_page_tables(find_task(1).mm)          # a task's user half
    >>> w = walk_page_tables(prog["init_mm"].address_of_(), start=0xffff800008000000, end=0xffff800008010000)
    >>> w.translate(0xffff800008001234) is not None
    True

    :param mm: ``"init_mm"`` (the kernel half, from ``swapper_pg_dir``),
        ``"efi_mm"``, ``"vmemmap"`` (the vmemmap region of init_mm), a pid,
        ``"pgd:PHYS"`` (any user-half pgd), or a ``struct mm_struct *`` or
        ``struct task_struct *`` Object
    :param start: first virtual address of interest (inclusive)
    :param end: end of the range (exclusive)
    :return: :class:`mminspect.walk.Walk` (``mappings()``, ``tables()``,
        ``problems``, ``translate(va)``)
    :raises MMInspectError: for an unknown root, a range outside it, or a root
        that needs debug info that is not loaded (efi_mm, pids)
    :raises TypeError: if *mm* is an Object of another type
    """
    k = mminspect_kernel(prog)
    return walk(k, _root(prog, k, mm, start, end))


@takes_program_or_default
def for_each_mapping(
    prog: Program, mm: MMLike = "init_mm", *, start: Optional[int] = None, end: Optional[int] = None
) -> Iterator["Mapping"]:
    """
    Iterate over the leaf mappings of a page-table tree, in VA order, with
    contiguous ranges of identical attributes coalesced.

    >>> for m in for_each_mapping("efi_mm"):
    ...     print(hex(m.va), hex(m.pa), m.size, m.level_name, m.kind, m.attrs)
    0x4000000 0x4000000 67108864 PMD block RW NX SHD AF NG CON BLK UXN DEVICE/nGnRE
    ...

    :param mm: as for :func:`walk_page_tables()`
    :return: Iterator of :class:`mminspect.walk.Mapping`
    :raises MMInspectError: as for :func:`walk_page_tables()`
    """
    return walk_page_tables(prog, mm, start=start, end=end).mappings()


@takes_program_or_default
def for_each_page_table(
    prog: Program, mm: MMLike = "init_mm", *, start: Optional[int] = None, end: Optional[int] = None
) -> Iterator["TablePage"]:
    """
    Iterate over every page-table page of a tree once, top level first,
    with every entry that references it.

    >>> from collections import Counter
    >>> Counter(t.level_name for t in for_each_page_table("init_mm"))
    Counter({'PTE': 1028, 'PMD': 7, 'PUD': 5, 'PGD': 1})
    >>> next(for_each_page_table("efi_mm"))
    TablePage(PGD phys=0x40246000 va=0x0+0x1000000000000 valid=1/512 parents=1)

    :param mm: as for :func:`walk_page_tables()`
    :return: Iterator of :class:`mminspect.walk.TablePage`
    :raises MMInspectError: as for :func:`walk_page_tables()`
    """
    return walk_page_tables(prog, mm, start=start, end=end).tables()


@takes_program_or_default
def print_ptdump(prog: Program, mm: MMLike = "init_mm") -> None:
    """
    Print a tree in the format of the kernel's
    ``/sys/kernel/debug/kernel_page_tables`` (``init_mm``) or
    ``efi_page_tables`` (``efi_mm``), address markers included.

    >>> print_ptdump("efi_mm")
    ---[ UEFI runtime start ]---
    0x0000000000000000-0x0000000004000000          64M PMD
    ...

    :param mm: as for :func:`walk_page_tables()`
    :raises MMInspectError: as for :func:`walk_page_tables()`
    """
    for line in ptdump_lines(walk_page_tables(prog, mm)):
        print(line)


@takes_program_or_default
def ptdump_check_wx(prog: Program) -> str:
    """
    Run the kernel's ``CONFIG_DEBUG_WX`` check (``ptdump_check_wx()``) on
    ``init_mm`` and return the message the kernel would print.

    >>> ptdump_check_wx()
    'Checked W+X mappings: passed, no W+X pages found'

    :raises MMInspectError: if the program is not an arm64 kernel
    """
    return check_wx(walk_page_tables(prog, "init_mm"))[2]


@takes_program_or_default
def snapshot_page_tables(prog: Program) -> "Snapshot":
    """
    Capture what a memory hot-remove simulation needs: every ``init_mm``
    table page with its entries, parents and struct page facts, the efi_mm
    tables, memory sections and blocks, and the era facts of the kernel.
    Save it with ``.save(path)`` to simulate later without the dump.

    >>> snap = snapshot_page_tables()
    >>> len(snap.tables), len(snap.blocks)
    (1041, 17)
    >>> snap.save("before.npz")

    :return: :class:`mminspect.hotremove.Snapshot`
    :raises MMInspectError: if the program is not an arm64 kernel
    """
    return capture_snapshot(mminspect_kernel(prog))


@takes_program_or_default
def simulate_remove_memory(
    prog: Program,
    start: int,
    size: int,
    *,
    policy: Optional[str] = None,
    options: Optional[Dict[str, str]] = None,
    force: bool = False,
    snapshot: Optional["Snapshot"] = None,
) -> "Result":
    """
    Simulate ``remove_memory(start, size)``: replay the page-table freeing
    code of the kernel's era (or of *policy*) on a snapshot and judge every
    table page it would free against its struct page (ctor/dtor balance,
    ptlocks, memblock and kernel-image tables, efi_mm).

    >>> res = simulate_remove_memory(0x80000000, 1 << 30)   # the hot-added GiB
    >>> res.simulated, len(res.freed), res.findings[0].rule
    (True, 513, 'ctor unknown')
    >>> simulate_remove_memory(0x48000000, 128 << 20).refusals[0].message
    'Boot memory [48000000 50000000] offlining attempted'

    :param start: ``u64``, physical start of the memory to remove
    :param size: ``u64``, bytes to remove
    :param policy: name of a registered policy (default: chosen from the
        kernel's era)
    :param options: policy options (``{"dtor_fix": "yes"}``)
    :param force: simulate even where the kernel would refuse the removal
    :param snapshot: a :class:`~mminspect.hotremove.Snapshot` to simulate
        on (default: a new one of *prog*)
    :return: :class:`mminspect.hotremove.Result` (``findings``, ``freed``,
        ``kept``, ``refusals``, ``simulated``)
    :raises MMInspectError: for an unknown policy or a bad range
    """
    snap = snapshot if snapshot is not None else snapshot_page_tables(prog)
    pol = get_policy(policy, snap.era, options) if policy else select_policy(snap.era, options)
    return simulate(snap, Proposal(start, start + size), pol, force=force)


@takes_program_or_default
def vtop(prog: Program, addr: int, mm: Optional[MMLike] = None) -> "Translation":
    """
    Translate a virtual address as the MMU does and say why it maps or
    faults, level by level (crash's ``vtop``, with what drgn's
    ``follow_phys()`` does not say: every descriptor, the stop reason, the
    effective permissions, the physical page's facts, and follow_phys,
    ``__pa()`` and the dump's PT_LOAD headers as checks).

    >>> t = vtop(0xffff800008001234)
    >>> t.stop, hex(t.pa), [s.level_name for s in t.steps]
    ('page', '0x4015b234', ['PGD', 'PUD', 'PMD', 'PTE'])
    >>> vtop(0x7fffbbb6d000, find_task(1).mm).nonpresent
    {'kind': 'swap', 'type': 0, 'offset': 4660, ...}

    :param addr: ``void *``
    :param mm: the tree, as for :func:`walk_page_tables()` (default:
        ``init_mm`` for kernel addresses; required for user addresses)
    :return: :class:`mminspect.vtop.Translation`
    :raises MMInspectError: for an address outside every root
    """
    k = mminspect_kernel(prog)
    root = _root(prog, k, mm, None, None) if mm is not None else resolve_va_root(k, int(addr) & ((1 << 64) - 1))
    return _vtop(k, int(addr) & ((1 << 64) - 1), root=root)


@takes_program_or_default
def identify_pages(prog: Program, addrs: Sequence[int], mm: str = "all") -> "list[Identity]":
    """
    Say what physical pages are and which virtual addresses of every root
    map them, for many addresses in one pass (each root walked once).

    >>> [i.is_page_table for i in identify_pages([0x40246000, 0x80001000])]
    [True, False]
    >>> identify_pages([0x4015b000])[0].mapped_at[0].va
    18446661754017738752

    :param addrs: physical addresses (``phys_addr_t``)
    :param mm: the roots to search (``all``, ``init_mm``, ``tasks`` ...)
    :return: list of :class:`mminspect.identify.Identity`
    :raises MMInspectError: for an address outside RAM or past ``max_pfn``
    """
    k = mminspect_kernel(prog)
    return identify(k, [int(a) for a in addrs], all_roots(k, mm))


@takes_program_or_default
def identify_page_table(prog: Program, phys: int) -> "list[Dict[str, Any]]":
    """
    If the page at ``phys`` is a page-table page, which trees reach it: one
    record per root, with the level, VA span, parents, origin, ptlock and
    evidence; an empty list when it is not a table of any root.

    >>> identify_page_table(0x40246000)[0]["root"], identify_page_table(0x40246000)[0]["origin"]
    ('efi_mm', 'buddy-no-ctor')

    :param phys: ``phys_addr_t``
    :raises MMInspectError: for an address outside RAM or past ``max_pfn``
    """
    k = mminspect_kernel(prog)
    return identify(k, [int(phys)], all_roots(k), page_facts=False)[0].tables


@takes_program_or_default
def diff_page_tables(prog: Program, before: Union[str, Program, "Snapshot"]) -> "Diff":
    """
    Compare an earlier state of this kernel (a snapshot file or object from
    :func:`snapshot_page_tables()`, or another drgn program on a dump of the
    same boot) with this program: tables freed, allocated and reused, the
    mapping ranges that changed, and the NR_PAGETABLE change explained.

    >>> d = diff_page_tables("before.npz")
    >>> len(d.freed), d.nr_pagetable_delta, d.explanation()[-1]

    :return: :class:`mminspect.diff.Diff`
    :raises MMInspectError: for states of different kernels, regimes or boots
    """
    k = mminspect_kernel(prog)
    if isinstance(before, str):
        before = Snapshot.load(before)
    if isinstance(before, Program):
        src = mminspect_kernel(before)
        check_same(src, "before", k, "this program")
        a = state_of_kernel(src, "before")
    else:
        check_same(before, "before", k, "this program")
        a = state_of_snapshot(before, "before")
    return diff(a, state_of_kernel(k, "this program"))


# -- the drgn command -----------------------------------------------------------


def _run_command(prog: Program, args: Sequence[str]) -> Optional[int]:
    from drgn.commands import CommandArgumentError, CommandError, DrgnCodeBuilder

    try:
        inv = commands.parse(args, "drgn")
        if inv is None:
            return None
        if inv.params.get("drgn"):
            snippet = commands.drgn_code(inv)
            code = DrgnCodeBuilder(prog)
            for module, names in snippet.imports:
                if names:
                    code.add_from_import(module, *names)
                else:
                    code.add_import(module)
            code.append(snippet.body)
            code.print()
            return None
        k = mminspect_kernel(prog)
        with commands.bound(k.target, "drgn", k):
            # The shell's exit status when it is not 0 (simulate-remove: 1 for
            # findings, 3 for a refused removal), as drgn's sh command returns it.
            return commands.invoke(inv, "drgn") or None
    except commands.UsageError as e:
        raise CommandArgumentError(str(e)) from None
    except MMInspectError as e:
        if commands.debug_enabled():
            raise
        raise CommandError(str(e)) from None


def _register() -> None:
    try:
        from drgn.commands import parse_shell_command
        from drgn.commands.linux import linux_kernel_custom_command
    except ImportError:  # drgn before the command framework (0.0.31)
        return

    @linux_kernel_custom_command(
        name="mminspect",
        description="walk arm64 kernel page tables (mminspect)",
        usage="**mminspect** *SUBCOMMAND* [*OPTIONS*] [**--drgn**]",
        long_description="""
        Run an mminspect subcommand on this program, with the options and
        output of the shell's ``mminspect`` (without -c/-s/-k/--qemu: the
        target is this program). ``mminspect`` alone lists the subcommands;
        ``mminspect SUBCOMMAND -h`` shows a subcommand's options. ``--drgn``
        prints the Python that does the same through mminspect's API.

        Examples: ``mminspect walk --mm efi_mm``, ``mminspect walk --format
        ptdump > kernel_page_tables.txt``, ``mminspect walk --mm 1 --tables |
        grep PTE``.
        """,
        parse=parse_shell_command,
    )
    def _cmd_mminspect(prog: Program, name: str, args: Sequence[str], **kwargs: Any) -> Optional[int]:
        return _run_command(prog, args)


_register()
