"""The same guest state as ELF and as QEMU's kdump-zlib file gives the same
answers.

The recipe dumps each scenario's paused guest twice, ``vmcore`` (ELF) and
``vmcore.kdump-zlib`` (QMP dump-guest-memory format=kdump-zlib: flattened,
64 KiB zlib blocks, no utsname, which drgn's libkdumpfile cannot read for a
4K kernel, so mminspect.target.kdump reads it). Everything mminspect answers
is compared: the init_mm walk, its ptdump text, the classification of every
root, the audit, the memmap scan, a simulated removal of the hot-added DIMM,
and the CLI, including one-line errors on cut-off copies. A dump made before
the recipe wrote kdump copies is skipped with the command that remakes it.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

import mminspect
from mminspect.classify import audit, classify_roots, resolve_roots, scan_typed
from mminspect.hotremove import Proposal, capture_snapshot, select_policy, simulate
from mminspect.report.ptdump import ptdump_lines
from mminspect.target.kdump import KdumpFile, own_reader_needed
from tests.real.conftest import DUMP_CASES, get_dump

FORMAT = "kdump-zlib"


@pytest.fixture(scope="module", params=DUMP_CASES, ids=[f"{k}-{s}" for k, s in DUMP_CASES])
def both(request):
    """(Dump, Kernel on the ELF file, Kernel on the kdump-zlib file)."""
    d = get_dump(*request.param)
    if isinstance(d, str):
        pytest.skip(d)
    if FORMAT not in d.compressed:
        pytest.skip(f"{d.kernel_id}/{d.scenario} has no vmcore.{FORMAT} (made before the recipe wrote one: "
                    f"python -m vmcores make --kernel {d.kernel_id} --force)")
    symbols = [str(d.vmlinux)]
    return (d, mminspect.open(core=str(d.vmcore), symbols=symbols),
            mminspect.open(core=str(d.compressed[FORMAT]), symbols=symbols))


def test_kdump_file_is_read_by_mminspect_not_the_elf_fast_path(both):
    d, elf, kd = both
    assert elf.target.core_file is not None and kd.target.core_file is None
    reader = KdumpFile(str(d.compressed[FORMAT]))
    assert reader.flattened and own_reader_needed(reader) == "flattened"
    assert reader.block_size == 65536 and reader.machine == "Unknown"
    assert kd.target.vmcoreinfo() == elf.target.vmcoreinfo()
    assert d.compressed[FORMAT].stat().st_size < d.vmcore.stat().st_size // 5


def test_init_mm_walk_is_the_same(both):
    _, elf, kd = both
    a, b = mminspect.walk(elf, "init_mm"), mminspect.walk(kd, "init_mm")
    assert len(a.table_phys) > 10 and len(a.runs) > 10
    for name in ("runs", "table_phys", "table_level", "table_va", "table_entries", "table_valid",
                 "edge_child", "edge_parent", "edge_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert [repr(p) for p in a.problems] == [repr(p) for p in b.problems]


def test_ptdump_text_is_the_same(both):
    _, elf, kd = both
    lines = list(ptdump_lines(mminspect.walk(elf, "init_mm")))
    assert len(lines) > 20
    assert list(ptdump_lines(mminspect.walk(kd, "init_mm"))) == lines


def test_classification_of_every_root_is_the_same(both):
    _, elf, kd = both
    ca = classify_roots(elf, resolve_roots(elf, "all"))
    cb = classify_roots(kd, resolve_roots(kd, "all"))
    assert [c.root.name for c in ca] == [c.root.name for c in cb] and len(ca) >= 2
    for a, b in zip(ca, cb):
        for name in ("phys", "origin", "expected", "ptlock", "region", "maps", "block", "in_memblock", "image"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (a.root.name, name)
        assert a.facts.tobytes() == b.facts.tobytes(), a.root.name
        assert [repr(f) for f in a.findings] == [repr(f) for f in b.findings]
    assert any(len(c.phys) for c in ca)


def test_audit_is_the_same(both):
    _, elf, kd = both
    a, b = audit(elf), audit(kd)
    assert a.counter is not None and a.typed_count > 0
    assert (a.counter, a.global_vm_node_stat, a.per_node) == (b.counter, b.global_vm_node_stat, b.per_node)
    assert np.array_equal(a.typed, b.typed) and np.array_equal(a.reachable_typed, b.reachable_typed)
    assert np.array_equal(a.unreachable_typed, b.unreachable_typed)
    assert (a.scanned_pages, a.unreadable_pages, a.roots) == (b.scanned_pages, b.unreadable_pages, b.roots)


def test_memmap_scan_through_drgn_gives_the_same_typed_pages(both):
    """The ELF's scan reads the file directly; the kdump file's goes through
    drgn and mminspect's reader, chunk by chunk."""
    _, elf, kd = both
    fast, slow = scan_typed(elf), scan_typed(kd)
    assert len(fast[0]) > 0
    assert np.array_equal(fast[0], slow[0]) and fast[1].tobytes() == slow[1].tobytes()
    assert fast[2:] == slow[2:]


def test_simulated_removal_of_the_dimm_is_the_same(both):
    d, elf, kd = both
    if d.scenario != "hotadd":
        pytest.skip("only the hot-add dump has a DIMM to remove")
    results = []
    for k in (elf, kd):
        snap = capture_snapshot(k)
        added = [b.id for b in snap.blocks if not b.early]
        assert added, "the hot-add dump shows no hot-added memory block"
        results.append(simulate(snap, Proposal.from_blocks(added, snap.kernel["block_size"]),
                                select_policy(snap.era)))
    a, b = results
    assert a.simulated and b.simulated and (a.freed or a.kept)  # block-mapped linear maps free no table
    assert [repr(e) for e in a.freed] == [repr(e) for e in b.freed]
    assert [repr(e) for e in a.kept] == [repr(e) for e in b.kept]
    assert [repr(f) for f in a.findings] == [repr(f) for f in b.findings]
    assert (a.delta_nr_pagetable, a.data_freed) == (b.delta_nr_pagetable, b.data_freed)


def _cli(*args) -> subprocess.CompletedProcess:
    """The mminspect command in a process of its own."""
    return subprocess.run([sys.executable, "-c", "from mminspect.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_on_the_kdump_file_prints_what_it_prints_on_the_elf(both):
    d, _, _ = both
    for command in (["audit"], ["classify", "--mm", "all"]):
        out = {}
        for path in (d.vmcore, d.compressed[FORMAT]):
            r = _cli(*command, "-c", str(path), "-s", str(d.vmlinux))
            assert r.returncode == 0, r.stderr
            out[path] = r.stdout
        assert out[d.vmcore] == out[d.compressed[FORMAT]] and len(out[d.vmcore].splitlines()) > 3


def _unflatten(src, dst) -> None:
    """makedumpfile -R: the flattened records written at their offsets."""
    with open(src, "rb") as f, open(dst, "wb") as o:
        f.seek(4096)
        while True:
            offset, size = struct.unpack(">qq", f.read(16))
            if offset < 0:
                return
            o.seek(offset)
            o.write(f.read(size))


def test_reassembled_and_cut_off_copies(both, tmp_path):
    """The plain (makedumpfile -R) form reads the same as the flattened one;
    a copy cut short, in either form, is one line and exit status 2."""
    d, _, kd = both
    flat = d.compressed[FORMAT]
    plain = tmp_path / "vmcore.kdump"
    _unflatten(flat, plain)
    reader = KdumpFile(str(plain))
    assert not reader.flattened and own_reader_needed(reader) == "header without utsname (QEMU)"
    k = mminspect.open(core=str(plain), symbols=[str(d.vmlinux)])
    assert list(ptdump_lines(mminspect.walk(k, "init_mm"))) == list(ptdump_lines(mminspect.walk(kd, "init_mm")))
    for src in (flat, plain):
        cut = tmp_path / f"cut-{src.name}"
        with open(src, "rb") as f:
            cut.write_bytes(f.read(src.stat().st_size * 2 // 3))
        r = _cli("walk", "-c", str(cut))
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and "truncated vmcore" in r.stderr, r.stderr
