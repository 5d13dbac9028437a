"""drgn 0.3.0 opens every cached real arm64 vmcore as it is, and what it reads
agrees with the ground truth recorded inside the guest just before the dump.

Every expected value comes from the dump's truth/ files or meta.json (see
vmcores/README.md); a dump that is not cached is skipped (conftest.py).
"""

from __future__ import annotations

import re

import drgn
import pytest
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.mm import decode_memory_block_state, for_each_memory_block, memory_block_size_bytes
from drgn.helpers.linux.mmzone import for_each_online_pgdat
from drgn.helpers.linux.percpu import per_cpu_ptr


def _kv(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if line.strip())


def test_is_arm64_linux_kernel(real_prog):
    _, prog = real_prog
    assert prog.platform.arch == drgn.Architecture.AARCH64
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    assert not prog.flags & drgn.ProgramFlags.IS_LIVE


def test_release_matches_truth(real_prog):
    dump, prog = real_prog
    truth_release = dump.truth_text("version").split()[2]
    assert prog["init_uts_ns"].name.release.string_().decode() == truth_release
    assert dump.meta["kernel"]["release"] == truth_release


def test_cmdline_matches_truth(real_prog):
    dump, prog = real_prog
    assert prog["saved_command_line"].string_().decode() == dump.truth_text("cmdline").strip()


def _page_size(prog) -> int:
    return prog["PAGE_SIZE"].value_()


def test_totalram_matches_meminfo(real_prog):
    dump, prog = real_prog
    mem_total_kb = int(_kv(dump.truth_text("meminfo"))["MemTotal:"].split()[0])
    assert prog["_totalram_pages"].counter.value_() * _page_size(prog) // 1024 == mem_total_kb


def _vmcoreinfo(prog) -> dict[str, str]:
    """The guest's VMCOREINFO text, read from the dump's kernel memory."""
    data = prog.read(prog["vmcoreinfo_data"].value_(), prog["vmcoreinfo_size"].value_())
    return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)


def test_kallsyms_match_symbols(real_prog):
    """The KASLR offset drgn derives from VMCOREINFO matches the guest's kallsyms,
    and KASLR was on (virtio-rng-pci gives the EFI stub its seed)."""
    dump, prog = real_prog
    lines = dump.truth_text("kallsyms_subset").splitlines()
    assert lines, "the truth has no kallsyms lines"
    for line in lines:
        addr, _, name = line.split()[:3]
        if name == "_end":
            # drgn 0.3.0 leaves 7.x's _end unrelocated: it lies past the end of
            # the last section (.pgtbl), outside every range drgn relocates.
            continue
        assert prog.symbol(name).address == int(addr, 16), name
    assert int(_vmcoreinfo(prog)["KERNELOFFSET"], 16) != 0, "KASLR offset is 0"


def test_memory_blocks_match_truth(real_prog):
    dump, prog = real_prog
    mem = dump.truth / "memory"
    assert memory_block_size_bytes(prog) == int((mem / "block_size_bytes").read_text().strip(), 16)
    truth = {}
    for d in mem.glob("memory[0-9]*"):
        n = int(d.name[len("memory"):])
        assert int((d / "phys_index").read_text().strip(), 16) == n
        truth[n] = (d / "state").read_text().strip()
    seen = {}
    for block in for_each_memory_block(prog):
        state = decode_memory_block_state(block)  # e.g. "MEM_ONLINE"
        seen[block.dev.id.value_()] = state.removeprefix("MEM_").lower()
    assert seen == truth


def _exact_node_stat(prog, item_name: str) -> int:
    """The global node counter plus every CPU's not yet folded delta."""
    item = prog[item_name].value_()
    total = prog["vm_node_stat"][item].counter.value_()
    for pgdat in for_each_online_pgdat(prog):
        for cpu in for_each_possible_cpu(prog):
            total += per_cpu_ptr(pgdat.per_cpu_nodestats, cpu).vm_node_stat_diff[item].value_()
    return total


def test_nr_page_table_pages_exact(real_prog):
    """vmstat_refreshed was read after vm.stat_refresh by the guest agent itself
    (no other process alive), right before the pause: it is exact."""
    dump, prog = real_prog
    truth = int(_kv(dump.truth_text("vmstat_refreshed"))["nr_page_table_pages"])
    assert _exact_node_stat(prog, "NR_PAGETABLE") == truth


def _readable(prog, phys: int) -> bool:
    try:
        prog.read(phys, 8, True)
        return True
    except drgn.FaultError:
        return False


def test_ram_ranges_in_dump(real_prog):
    """Every System RAM range of the guest's /proc/iomem is in the dump; a removed
    DIMM's range is not."""
    dump, prog = real_prog
    ram = dump.system_ram()
    assert ram
    for start, end in ram:
        assert _readable(prog, start) and _readable(prog, end - 8), hex(start)
    mem = dump.meta["memory"]
    if dump.scenario == "hotadd":
        dimm = mem["dimm"]
        assert any(s <= dimm["addr"] and dimm["addr"] + dimm["size"] <= e for s, e in ram)
        for n in dimm["blocks"]:
            assert (dump.truth / "memory" / f"memory{n}" / "state").read_text().strip() == "online"
            assert (dump.truth / "memory" / f"memory{n}" / "valid_zones").read_text().strip() == "Movable"
    for dimm in mem.get("dimms") or ():  # every DIMM still plugged (hotadd2: both; hotremove1: dimm0)
        assert any(s <= dimm["addr"] and dimm["addr"] + dimm["size"] <= e for s, e in ram), dimm["id"]
        for n in dimm["blocks"]:
            assert (dump.truth / "memory" / f"memory{n}" / "state").read_text().strip() == "online"
    if dump.scenario == "hotadd2":
        assert [d["id"] for d in mem["dimms"]] == ["dimm0", "dimm1"]
    if dump.scenario in ("hotremove", "hotremove1"):
        gone = mem["removed_dimm"]
        assert not _readable(prog, gone["addr"])
        assert not _readable(prog, gone["addr"] + gone["size"] - 8)
        for n in gone["blocks"]:
            assert not (dump.truth / "memory" / f"memory{n}").exists()


# --------------------------------------------------------------------------- live guest

LIVE_KERNEL = "debian-6.1-cloud-arm64"


@pytest.fixture(scope="module")
def live():
    import shutil  # noqa: PLC0415

    import vmcores  # noqa: PLC0415
    from vmcores.live import live_guest  # noqa: PLC0415
    from vmcores.scenarios import env_make_kernels  # noqa: PLC0415

    if not shutil.which("qemu-system-aarch64"):
        pytest.skip("qemu-system-aarch64 is not installed")
    if vmcores.cached_kernel(LIVE_KERNEL) is None and LIVE_KERNEL not in env_make_kernels():
        pytest.skip(f"kernel {LIVE_KERNEL} is not cached (python -m vmcores make --kernel {LIVE_KERNEL}, "
                    "or set MMINSPECT_MAKE_VMCORES)")
    try:
        with live_guest(LIVE_KERNEL) as lg:
            yield lg
    except vmcores.RecipeError as e:
        pytest.skip(f"cannot boot {LIVE_KERNEL}: {e}")


def test_live_guest_drgn_qmp(live):
    prog = drgn.Program()
    prog.set_qemu_qmp(str(live.qmp_socket))
    prog.load_debug_info([str(live.kernel.vmlinux)])
    assert prog.flags & drgn.ProgramFlags.IS_LIVE
    assert prog["init_uts_ns"].name.release.string_().decode() == live.sh("uname -r").strip()


def test_live_guest_gdbstub(live):
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    gdb = shutil.which("gdb-multiarch")
    if not gdb:
        pytest.skip("gdb-multiarch is not installed")
    r = subprocess.run(
        [gdb, "-batch", "-nx", "-ex", "set architecture aarch64", "-ex", f"target remote 127.0.0.1:{live.gdb_port}",
         "-ex", "info registers TTBR1_EL1", "-ex", "detach"],
        capture_output=True, text=True, timeout=120,
    )
    m = re.search(r"TTBR1_EL1\s+(0x[0-9a-f]+)", r.stdout)
    assert m and int(m.group(1), 16) != 0, r.stdout + r.stderr


def test_live_guest_dump_of_paused_guest(live, tmp_path):
    d = live.dump(tmp_path / "live")
    prog = d.program()
    assert prog["init_uts_ns"].name.release.string_().decode() == d.truth_text("version").split()[2]
    truth = int(_kv(d.truth_text("vmstat_refreshed"))["nr_page_table_pages"])
    assert _exact_node_stat(prog, "NR_PAGETABLE") == truth
