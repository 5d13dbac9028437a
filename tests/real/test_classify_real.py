"""The classifier and the NR_PAGETABLE audit on real arm64 vmcores.

Expected values come from the dump's truth/ files (recorded inside the guest:
vmstat_refreshed, iomem, kallsyms_subset, memory blocks), meta.json (the
DIMM QEMU plugged, the kernel config), the kernel's own data read through
drgn's helpers (slab_object_info, the spinlock objects, DWARF sizes), and
kernel facts from the 6.1/6.12 sources cited at each test, never from
mminspect's own output.
"""

from __future__ import annotations

import re
import time

import pytest
import drgn
from drgn import sizeof
from drgn.helpers.linux.slab import slab_object_info

from mminspect.classify import audit, classifier_for, classify_roots, resolve_roots
from mminspect.kernel import Kernel
from mminspect.target.drgn import DrgnTarget
from mminspect.walk import walk
from tests.real.conftest import efi_runtime, require_efi_mm

_STATE: dict = {}


def _kernel(real_prog):
    dump, prog = real_prog
    key = (dump.kernel_id, dump.scenario)
    if _STATE.get("key") != key:
        _STATE.clear()
        _STATE["key"] = key
        _STATE["kernel"] = Kernel(DrgnTarget(prog, f"vmcore {dump.kernel_id}/{dump.scenario}"))
    return _STATE["kernel"]


def _classes(real_prog):
    k = _kernel(real_prog)
    if "classes" not in _STATE:
        t0 = time.perf_counter()
        _STATE["classes"] = {c.root.name: c for c in classify_roots(k, resolve_roots(k, "all"))}
        _STATE["seconds"] = time.perf_counter() - t0
    return _STATE["classes"]


def _audit(real_prog):
    k = _kernel(real_prog)  # first: a new dump clears the state
    if "audit" not in _STATE:
        _STATE["audit"] = audit(k)
    return _STATE["audit"]


def _vmstat(dump, name: str, which: str = "vmstat_refreshed") -> int:
    for line in dump.truth_text(which).splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    raise AssertionError(f"{which} has no {name}")


def _release(dump) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", dump.truth_text("version").split()[2])
    return int(m.group(1)), int(m.group(2))


def _kallsyms(dump) -> dict:
    out = {}
    for line in dump.truth_text("kallsyms_subset").splitlines():
        addr, _, name = line.split()[:3]
        out[name] = int(addr, 16)
    return out


def _hot_dimms(dump):
    """The pc-dimms plugged at the pause: hotadd's one, hotadd2's two,
    hotremove1's remaining one (none on boot and hotremove)."""
    mem = dump.meta.get("memory") or {}
    if dump.scenario == "hotadd":
        return [mem["dimm"]] if mem.get("dimm") else []
    return list(mem.get("dimms") or [])


def _hot_range(dump):
    """[start, end) of the hot-plugged memory (the DIMMs are adjacent)."""
    dimms = sorted(_hot_dimms(dump), key=lambda d: d["addr"])
    if not dimms:
        return None
    assert all(a["addr"] + a["size"] == b["addr"] for a, b in zip(dimms, dimms[1:]))
    return dimms[0]["addr"], dimms[-1]["addr"] + dimms[-1]["size"]


def _hot_linear_tables(real_prog, hot):
    """init_mm's linear-map tables whose span lies in the hot-added range."""
    k = _kernel(real_prog)
    lo_va, hi_va = k.phys_to_virt(hot[0]), k.phys_to_virt(hot[1])
    return [t for t in _classes(real_prog)["init_mm"]
            if t.region == "linear map" and lo_va <= t.va and t.va + t.span <= hi_va]


# -- the audit: on every dump -----------------------------------------------------------


def test_audit_counter_equals_typed_pages_and_truth(real_prog):
    """The dump's own counter (global + per-CPU deltas) equals the pages typed as
    page tables, exactly, and the guest's vmstat after vm.stat_refresh."""
    dump, prog = real_prog
    a = _audit(real_prog)
    truth = _vmstat(dump, "nr_page_table_pages")
    assert a.counter == truth
    assert a.typed_count == a.counter, a.explanation()
    # every typed page is reached from a root: nothing leaked, nothing pending
    assert len(a.unreachable_typed) == 0, a.as_dict()["unreachable_typed"]
    assert len(a.reachable_typed) == a.typed_count
    # the scan covered the memmap of every present section
    assert a.scanned_pages and a.unreadable_pages == 0
    # swapper_pg_dir is read-only through both its aliases (v4.19+: in .rodata)
    assert a.writable_roots == []


def test_audit_raw_vmstat_within_the_documented_caveat(real_prog):
    """real-vmcores.md trap 7: /proc/vmstat read with cat includes the reader's
    own tables and misses the per-CPU deltas. No process was born between that
    read and the dump, so the raw value can only be above the exact one, less
    at most the deltas the CPUs could hold (their stat_threshold)."""
    dump, prog = real_prog
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.mmzone import for_each_online_pgdat
    from drgn.helpers.linux.percpu import per_cpu_ptr

    slack = 0
    for pgdat in for_each_online_pgdat(prog):
        for cpu in for_each_possible_cpu(prog):
            slack += abs(per_cpu_ptr(pgdat.per_cpu_nodestats, cpu).stat_threshold.value_())
    a = _audit(real_prog)
    raw = _vmstat(dump, "nr_page_table_pages", "vmstat")
    assert raw + slack >= a.counter


def test_every_walked_table_is_classified_quickly(real_prog):
    k = _kernel(real_prog)
    classes = _classes(real_prog)
    for name, cl in classes.items():
        w = walk(k, cl.root)
        assert len(cl) == w.table_count
        assert sum(cl.summary().values()) == len(cl)
        assert (cl.facts["ok"]).all(), f"{name}: unreadable struct pages"
    total = sum(len(c) for c in classes.values())
    # a few thousand tables: well under a second (the 500K-table budget is seconds)
    assert _STATE["seconds"] < 5, (_STATE["seconds"], total)


def test_no_origin_mismatch_on_real_kernels(real_prog):
    """Every table of every root has the origin its kernel's allocation sites
    give it: these are unmodified distribution and debug kernels."""
    for name, cl in _classes(real_prog).items():
        bad = [f for f in cl.findings if f.severity in ("error", "critical")]
        assert not bad, [str(f) for f in bad]


def test_swapper_pg_dir_is_the_kernel_image_root(real_prog):
    dump, prog = real_prog
    cl = _classes(real_prog)["init_mm"]
    root = next(t for t in cl if t.region == "root")
    assert root.image_symbol == "swapper_pg_dir" and root.origin == "kernel-image"
    assert root.phys == prog.symbol("swapper_pg_dir").address - prog["kimage_voffset"].value_()
    assert root.reserved


# -- Debian 6.1 -------------------------------------------------------------------------


def _require_61(dump):
    if _release(dump) != (6, 1):
        pytest.skip("Debian 6.1 acceptance")


def test_61_efi_mm_tables(real_prog):
    """6.1 pgd_pgtable_alloc(): pgtable_pte_page_ctor for PTE, pgtable_pmd_page_ctor
    for PMD, no ctor for PUD; pgd_alloc() no ctor (mm/memory.c, arm64 mmu.c)."""
    dump, prog = real_prog
    _require_61(dump)
    require_efi_mm(dump)
    efi = _classes(real_prog)["efi_mm"]
    by = {}
    for t in efi:
        by.setdefault(t.level_name, []).append(t)
    assert set(by) == {"PGD", "PUD", "PMD", "PTE"}
    # ptlock_init(): spin_lock_init() on the inline lock (all zero), or on a
    # page_ptl_cachep object when sizeof(spinlock_t) > sizeof(long)
    inline = sizeof(prog.type("spinlock_t")) <= 8
    for t in by["PTE"] + by["PMD"]:
        assert t.origin == "buddy-ctor" and t.typed, t
        assert t.ptlock == ("inline-zero" if inline else "initialised"), t
    for t in by["PUD"] + by["PGD"]:
        assert t.origin == "buddy-no-ctor" and t.typed is False and t.ptlock == "n/a", t
    # what the lock looks like, read through drgn
    from drgn.helpers.linux.mm import phys_to_page

    for t in by["PTE"] + by["PMD"]:
        page = phys_to_page(prog, t.phys)
        if inline:
            assert page.ptl.rlock.raw_lock.val.counter.value_() == 0
        else:
            assert page.ptl.rlock.magic.value_() == 0xDEAD4EAD
        if prog.type("struct page").has_member("memcg_data"):
            assert not page.memcg_data  # GFP_PGTABLE_KERNEL: not accounted to a memcg


def test_61_linear_map_tables_are_memblock(real_prog):
    """map_mem(): early_pgtable_alloc (memblock, no ctor). With rodata=full every
    2 MiB window of System RAM has a PTE table, except windows wholly inside the
    linear alias of [_stext, __init_begin), mapped with blocks (6.1 mmu.c)."""
    dump, prog = real_prog
    _require_61(dump)
    if dump.meta["kernel"]["config_facts"].get("RODATA_FULL_DEFAULT_ENABLED") != "y":
        pytest.skip("linear map not page-granular")
    k = _kernel(real_prog)
    cl = _classes(real_prog)["init_mm"]
    syms = _kallsyms(dump)
    voff = prog["kimage_voffset"].value_()
    ks, ke = syms["_stext"] - voff, syms["__init_begin"] - voff
    W = 2 << 20
    hot = _hot_range(dump)
    boot_ram = [(lo, hi) for lo, hi in dump.system_ram() if not (hot and hot[0] <= lo < hot[1])]
    windows = {w for lo, hi in boot_ram for w in range(lo // W, (hi - 1) // W + 1)}
    windows -= {w for w in range(-(-ks // W), ke // W)}  # whole windows of the kernel alias
    ptes = {}
    for t in cl:
        if t.region == "linear map" and t.level_name == "PTE":
            ptes[(t.va - k.layout.page_offset + k.phys_offset) // W] = t
    boot = {w: t for w, t in ptes.items() if w in windows}
    assert set(boot) == windows
    for t in boot.values():
        assert t.origin == "memblock" and t.reserved and t.typed is False and t.maps == "boot", t
    # and the upper levels of the boot linear map: memblock too
    for t in cl:
        if t.region == "linear map" and t.maps == "boot":
            assert t.origin == "memblock", t


def test_61_vmemmap_tables_are_memblock(real_prog):
    """vmemmap_populate() at boot: vmemmap_alloc_block() -> memblock (no ctor)."""
    dump, prog = real_prog
    _require_61(dump)
    cl = _classes(real_prog)["init_mm"]
    vm = [t for t in cl if t.region == "vmemmap"]
    assert vm
    for t in vm:
        assert t.maps in ("boot", "boot+hot-added")
        assert t.origin == "memblock" and t.typed is False, t


def test_61_hot_added_linear_map_is_buddy_without_ctor(real_prog):
    """arch_add_memory() -> __create_pgd_mapping(..., __pgd_pgtable_alloc): buddy
    pages without a ctor (v5.2 .. v6.15). The DIMM QEMU plugged (meta.json) is
    page-mapped: one PTE table per 2 MiB."""
    dump, prog = real_prog
    _require_61(dump)
    hot = _hot_range(dump)
    if hot is None:
        pytest.skip("no hot-added memory in this dump")
    tables = _hot_linear_tables(real_prog, hot)
    ptes = [t for t in tables if t.level_name == "PTE"]
    if dump.meta["kernel"]["config_facts"].get("RODATA_FULL_DEFAULT_ENABLED") != "y":
        # no rodata=full: arch_add_memory() may use block mappings; the range is
        # mapped all the same (a 1 GiB-aligned DIMM: one PUD block, no new table)
        k = _kernel(real_prog)
        w = walk(k, k.root("init_mm", k.phys_to_virt(hot[0]), k.phys_to_virt(hot[1])))
        mapped = sum(m.size for m in w.mappings())
        assert mapped == hot[1] - hot[0]
        for t in tables:
            assert t.origin == "buddy-no-ctor" and t.typed is False, t
        return
    assert len(ptes) == (hot[1] - hot[0]) // (2 << 20)
    for t in tables:
        assert t.origin == "buddy-no-ctor" and t.typed is False and t.reserved is False, t
        assert t.maps == "hot-added" and t.zone == "Movable"
        assert "lru LIST_POISON (left the buddy lists)" in t.evidence
    # the blocks the DIMM became, as the guest listed them
    blocks = {n for d in _hot_dimms(dump) for n in d["blocks"]}
    assert {t.block for t in ptes} == blocks


def test_hot_add_needs_no_new_vmemmap_table(real_prog):
    """4K pages: vmemmap_populate() maps a full section's memmap with PMD blocks
    inside the boot vmemmap tables, so hot-add creates no vmemmap table; the
    hot-added memmap is readable through them."""
    dump, prog = real_prog
    hot = _hot_range(dump)
    if hot is None or _kernel(real_prog).regime.page_size != 4096:
        pytest.skip("4K hot-add dumps only")
    cl = _classes(real_prog)["init_mm"]
    for t in cl:
        if t.region == "vmemmap":
            assert t.origin == "memblock" and t.maps in ("boot", "boot+hot-added"), t
    c = classifier_for(_kernel(real_prog))
    import numpy as np

    pfns = np.arange(hot[0] >> 12, hot[1] >> 12, 4099, dtype=np.uint64)
    assert c.pages.facts(pfns)["ok"].all()


# -- DEBUG_SPINLOCK kernel -----------------------------------------------------------


def _require_alloc_ptl(prog):
    if sizeof(prog.type("spinlock_t")) <= 8:
        pytest.skip("ptlocks inline (no DEBUG_SPINLOCK/LOCKDEP)")


def test_debug_kernel_allocated_ptlocks(real_prog):
    """ALLOC_SPLIT_PTLOCKS (sizeof(spinlock_t) > sizeof(long): lock debugging, or
    PREEMPT_RT's rt_mutex-based spinlock_t): the PTE/PMD ctor's ptlock_alloc()
    puts a spinlock from page_ptl_cachep in page->ptl, and spin_lock_init()
    gives a DEBUG_SPINLOCK one SPINLOCK_MAGIC 0xdead4ead. Checked on efi_mm, or
    on the tasks' mms where the guest has no EFI runtime (PREEMPT_RT)."""
    dump, prog = real_prog
    _require_alloc_ptl(prog)
    cache = prog["page_ptl_cachep"]
    classes = _classes(real_prog)
    efi = classes["efi_mm"] if efi_runtime(dump) else \
        [t for name, cl in classes.items() if name.startswith("pid") for t in cl]
    locked_levels = [t for t in efi if t.level_name in ("PTE", "PMD")]
    assert locked_levels
    debug = "magic" in {m.name for m in prog.type("raw_spinlock_t").type.members}
    for t in locked_levels:
        assert t.ptlock == "initialised", t
        info = slab_object_info(prog, t.ptl_pointer)
        assert info is not None and info.allocated and info.slab_cache == cache
        if debug:
            assert prog.read_u32(t.ptl_pointer + 4) == 0xDEAD4EAD
        else:  # PREEMPT_RT: an unheld rt_mutex has no owner
            lock = drgn.Object(prog, "spinlock_t", address=t.ptl_pointer)
            assert lock.lock.owner.value_() == 0
    for t in efi:
        if t.level_name in ("PUD", "PGD"):
            assert t.ptlock == "n/a" and t.ptl_pointer == 0


def test_debug_kernel_init_mm_has_no_ptlock_but_ctor_d_pmds(real_prog):
    """init_mm tables allocated without a ctor have no ptl at all; in 6.12 the
    vmalloc PMD tables (pmd_alloc_one -> pagetable_pmd_ctor) do, initialised."""
    dump, prog = real_prog
    _require_alloc_ptl(prog)
    cache = prog["page_ptl_cachep"]
    cl = _classes(real_prog)["init_mm"]
    for t in cl:
        if not t.typed:
            assert t.ptlock == "n/a" and t.ptl_pointer == 0, t
        elif t.level_name == "PMD":
            assert t.ptlock == "initialised"
            assert slab_object_info(prog, t.ptl_pointer).slab_cache == cache


# -- newer kernels --------------------------------------------------------------------


def test_slab_pgd_when_smaller_than_a_page(real_prog):
    """arm64 pgd_alloc(): PGD_SIZE < PAGE_SIZE -> kmem_cache_alloc(pgd_cache)
    (LPA2 5 levels: 16 entries, 128 bytes). Checked against drgn's own slab
    lookup of efi_mm.pgd."""
    dump, prog = real_prog
    require_efi_mm(dump)
    pgd = prog["efi_mm"].pgd.value_()
    info = slab_object_info(prog, pgd)
    efi = _classes(real_prog)["efi_mm"]
    root = next(t for t in efi if t.region == "root")
    if info is None:
        assert root.origin in ("buddy-no-ctor", "buddy-ctor")
        return
    assert info.slab_cache == prog["pgd_cache"]
    assert root.origin == "slab" and root.expected == ("slab",)
    assert root.phys % _kernel(real_prog).regime.page_size  # an object, not a page


def test_v616_hot_added_tables_have_a_ctor_and_no_ptlock(real_prog):
    """v6.16 (pgd_pgtable_alloc_init_mm, 8240d8d3c5fb): hot-added linear-map
    tables are ctor'd, without a ptlock for init_mm."""
    dump, prog = real_prog
    hot = _hot_range(dump)
    try:
        prog.symbol("pgd_pgtable_alloc_init_mm")
    except LookupError:
        pytest.skip("kernel before v6.16")
    if hot is None:
        pytest.skip("no hot-added memory in this dump")
    tables = _hot_linear_tables(real_prog, hot)
    assert len([t for t in tables if t.level_name == "PTE"]) == (hot[1] - hot[0]) // (2 << 20)
    for t in tables:
        assert t.origin == "buddy-ctor" and t.typed and t.ptlock == "n/a", t


def test_cli_classify_and_audit_json(real_prog):
    dump, prog = real_prog
    import json

    from click.testing import CliRunner

    from mminspect.cli import main

    args = ["-c", str(dump.vmcore), "-s", str(dump.vmlinux)]
    mm = "efi_mm" if efi_runtime(dump) else "init_mm"
    r = CliRunner().invoke(main, ["classify", *args, "--mm", mm, "--summary", "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["schema"] == "mminspect.classify/1"
    assert sum(x["count"] for x in d["summary"]) == len(list(_classes(real_prog)[mm]))
    r = CliRunner().invoke(main, ["audit", *args, "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["schema"] == "mminspect.audit/1"
    assert d["counter"] == d["typed_pages"] == _vmstat(dump, "nr_page_table_pages")


def test_hot_added_vmemmap_tables_are_buddy_without_ctor(real_prog):
    """vmemmap_populate() on 16K/64K pages maps the memmap with base pages
    (vmemmap_populate_basepages); after boot its tables come from
    vmemmap_alloc_block() -> alloc_pages_node(): buddy, no ctor, in every era.
    The tables that map only the DIMM's memmap are the PTE-table windows its
    memmap touches that no boot memmap touches (struct page addresses from
    drgn's pfn_to_page, boot RAM from truth/iomem)."""
    dump, prog = real_prog
    from drgn.helpers.linux.mm import pfn_to_page

    hot = _hot_range(dump)
    k = _kernel(real_prog)
    ps = k.regime.page_size
    if hot is None or ps == 4096:
        pytest.skip("hot-add dumps with base-page vmemmap (16K/64K) only")
    span = (ps // 8) * ps  # one PTE table
    size = sizeof(prog.type("struct page"))

    def windows(lo_pa, hi_pa):
        lo = pfn_to_page(prog, lo_pa // ps).value_()
        hi = pfn_to_page(prog, (hi_pa - 1) // ps).value_() + size
        return set(range(lo // span, (hi - 1) // span + 1))

    boot = set()
    for lo, hi in dump.system_ram():
        if not hot[0] <= lo < hot[1]:
            boot |= windows(lo, hi)
    want = windows(*hot) - boot
    cl = _classes(real_prog)["init_mm"]
    got = {t.va // span: t for t in cl if t.region == "vmemmap" and t.level_name == "PTE" and t.maps == "hot-added"}
    assert set(got) == want
    for t in got.values():
        assert t.origin == "buddy-no-ctor" and t.typed is False and not t.reserved, t
        assert "lru LIST_POISON (left the buddy lists)" in t.evidence


def test_lazily_borrowed_mms_are_walked(real_prog):
    """A kernel thread or an idle task runs on the mm of the task before it
    (active_mm, lazy TLB), which keeps that mm, and its pgd, alive after the
    task exits. From v6.14 a page-sized pgd is typed (pagetable_pgd_ctor), so
    the audit must walk these mms or call their pgds leaks. Checked against
    drgn's own view of every idle task and kernel thread."""
    from drgn.helpers.linux.cpumask import for_each_possible_cpu
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.sched import idle_task

    dump, prog = real_prog
    k = _kernel(real_prog)
    borrowed = [idle_task(prog, cpu).active_mm for cpu in for_each_possible_cpu(prog)]
    borrowed += [t.active_mm for t in for_each_task(prog) if not t.mm]
    init = prog["init_mm"].address_
    want = {k.virt_to_phys(mm.pgd.value_()) for mm in borrowed if mm.value_() and mm.value_() != init}
    roots = {r.phys for r in resolve_roots(k, "all")}
    assert want <= roots


def test_every_numa_node_is_counted(real_prog):
    """NR_PAGETABLE is a per-node counter (pglist_data.vm_stat plus each CPU's
    per-node diff): the audit reads one entry per online node, as many as the
    guest set up ("Initmem setup node N"), and their sum is the guest's."""
    dump, prog = real_prog
    nodes = set(re.findall(r"Initmem setup node (\d+)", dump.truth_text("dmesg")))
    a = _audit(real_prog)
    assert {str(x["nid"]) for x in a.per_node} == nodes
    assert sum(x["exact"] for x in a.per_node) == a.counter == _vmstat(dump, "nr_page_table_pages")
