"""Physical memory read straight from an ELF vmcore (mminspect.target.corefile),
and the memmap scan that reads it in threads (StructPages.scan).

drgn is the reference: every range read from the file must hold the bytes
drgn's physical reads return, or fault where drgn faults; and a scan must find
the same typed pages, facts and unreadable struct pages with the file as
without it.
"""

import struct

import numpy as np
import pytest

import mminspect
from mminspect.classify import scan_typed
from mminspect.pages import StructPages
from mminspect.synthetic import REGIMES_BY_NAME, make_sample, make_server_kernel, write_server_vmcore, write_vmcore
from mminspect.synthetic.server import _write_struct_pages
from mminspect.target.base import TargetFault
from mminspect.target.corefile import CoreFile
from mminspect.target.recording import RecordingTarget
from tests.corefile_check import compare_with_drgn

GiB = 1 << 30


@pytest.fixture(scope="module")
def sample_core(tmp_path_factory):
    """make_sample's kernel: it leaves tables out of the dump both ways
    (no PT_LOAD, and p_memsz beyond p_filesz)."""
    path = tmp_path_factory.mktemp("sample") / "vmcore"
    built = make_sample(REGIMES_BY_NAME["4k-va48"], seed=1)
    assert set(built.omitted.values()) == {"absent", "zero"}
    write_vmcore(str(path), built)
    return path


def test_reads_equal_drgn_at_segment_edges_and_zero_fill(sample_core):
    seen = compare_with_drgn(sample_core)
    # the ranges exercised every case (this dump's segments are not adjacent)
    assert seen["read"] > 300 and seen["fault"] > 300 and seen["zero-fill"] > 10


def test_zero_fill_and_uncovered_ranges(sample_core):
    core = CoreFile.open(str(sample_core))
    zero = [(s, e, fe) for s, e, fe, _ in core._segments if fe < e]
    assert zero
    s, e, fe = zero[0]
    buf = bytearray(b"\xff" * (e - fe))
    core.readinto(fe, buf)
    assert buf == bytes(e - fe)
    below = core._segments[0][0] - 4096
    with pytest.raises(TargetFault):
        core.readinto(below, bytearray(4096))


def test_overlapping_segments_later_wins_as_in_drgn(sample_core, tmp_path):
    """A PT_LOAD that maps physical memory again (kexec_file dumps map the
    kernel image twice) overrides the earlier ones, in drgn and here."""
    data = bytearray(sample_core.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    loads = [i for i in range(phnum) if struct.unpack_from("<I", data, phoff + 56 * i)[0] == 1]
    # the last PT_LOAD now maps the middle of the first one, with other bytes
    first, last = loads[0], loads[-1]
    _, _, off0, _, pa0, fsz0, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * first)
    _, flags, off, va, _, fsz, msz, align = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * last)
    assert fsz0 >= 3 * 4096 and fsz >= 4096
    struct.pack_into("<IIQQQQQQ", data, phoff + 56 * last, 1, flags, off, va, pa0 + 4096, 4096, 4096, align)
    path = tmp_path / "overlap"
    path.write_bytes(data)
    core = CoreFile.open(str(path))
    buf = bytearray(3 * 4096)
    core.readinto(pa0, buf)
    assert buf[4096:8192] == data[off : off + 4096] != data[off0 + 4096 : off0 + 8192]
    assert buf[:4096] == data[off0 : off0 + 4096] and buf[8192:] == data[off0 + 8192 : off0 + 12288]
    assert compare_with_drgn(path, count=1500)["crossing"] > 10


def test_only_uncompressed_aarch64_elf_cores(sample_core, tmp_path):
    data = sample_core.read_bytes()
    kdump = tmp_path / "kdump"  # makedumpfile / dump-guest-memory -z: "KDUMP   " header
    kdump.write_bytes(b"KDUMP   " + bytes(4096))
    text = tmp_path / "text"
    text.write_text("not a vmcore\n")
    x86 = tmp_path / "x86"
    x86.write_bytes(data[:18] + struct.pack("<H", 62) + data[20:])
    exe = tmp_path / "exec"
    exe.write_bytes(data[:16] + struct.pack("<H", 2) + data[18:])
    for path in (kdump, text, x86, exe, tmp_path / "missing", "/proc/kcore"):
        assert CoreFile.open(str(path)) is None, path
    assert CoreFile.open(str(sample_core)) is not None


def test_only_an_opened_elf_vmcore_has_a_core_file(sample_core):
    k = mminspect.open(core=str(sample_core))
    assert k.target.core_file is not None
    # a recording target must see every read: it offers no way around itself
    assert getattr(RecordingTarget(k.target, 4096), "core_file", None) is None


# -- the memmap scan -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A 4 GiB server kernel with typed struct pages spread over its memmap;
    one memmap page holding typed struct pages is not in the dump, another is
    covered as zeros (p_memsz beyond p_filesz)."""
    built = make_server_kernel(REGIMES_BY_NAME["4k-va48"], 4 * GiB, hotadd=GiB)
    b, s = built._b, built.server
    rnd = np.random.default_rng(7)
    ram = [(bs, bs + n) for bs, n in built.ram]
    extra = np.concatenate([rnd.integers(lo >> 12, hi >> 12, 300) for lo, hi in ram]).astype(np.uint64) << 12
    _write_struct_pages(b, extra, "pte", s.vmemmap)
    vva, vpa, _ = s.vmemmap[0]
    memmap_page = lambda pa: vpa + ((pa >> 12) - (ram[0][0] >> 12)) * 64 // 4096 * 4096  # noqa: E731
    gone, zero = int(extra[0]), int(extra[1])
    built.omitted[memmap_page(gone)] = "absent"
    built.omitted[memmap_page(zero)] = "zero"
    path = tmp_path_factory.mktemp("server") / "vmcore"
    write_server_vmcore(path, built)
    typed = np.union1d(np.asarray(s.typed, dtype=np.uint64), extra) >> np.uint64(12)
    lost = [p for p in typed.tolist() if ram[0][0] <= p << 12 < ram[0][1]
            and memmap_page(p << 12) in (memmap_page(gone), memmap_page(zero))]
    return path, np.setdiff1d(typed, np.array(lost, dtype=np.uint64)), len(lost)


class CountingCore:
    """A core file that counts its reads and maps (``maps=False``: it maps
    nothing, so every chunk is read into a buffer)."""

    def __init__(self, core, maps: bool = True):
        self.core = core
        self.maps = maps
        self.reads = self.mapped_chunks = 0

    def readinto(self, pa, buffer):
        self.reads += 1
        self.core.readinto(pa, buffer)

    def mapped(self, pa, size):
        m = self.core.mapped(pa, size) if self.maps else None
        self.mapped_chunks += m is not None
        return m

    def __getattr__(self, name):  # the scan's read-ahead and drop-behind hints
        return getattr(self.core, name)


@pytest.mark.parametrize("maps", [True, False])
def test_scan_equal_with_and_without_the_core_file(server, maps):
    path, typed, lost = server
    k = mminspect.open(core=str(path))
    counting = CountingCore(k.target.core_file, maps)
    k.target.core_file = counting
    fast = scan_typed(k)
    assert (counting.mapped_chunks if maps else counting.reads) > 0
    assert maps or not counting.mapped_chunks
    k2 = mminspect.open(core=str(path))
    k2.target.core_file = None
    slow = scan_typed(k2)
    assert np.array_equal(fast[0], slow[0])
    assert fast[1].tobytes() == slow[1].tobytes()
    assert fast[2:] == slow[2:]
    # and both are right: every typed page but those whose memmap page is gone
    assert lost >= 2 and fast[0].tolist() == typed.tolist()
    assert fast[3] == 4096 // 64  # the struct pages of the one memmap page not in the dump


def test_scan_all_rows_equal_with_and_without_the_core_file(server):
    path, typed, _ = server
    k = mminspect.open(core=str(path))
    sp = StructPages(k)
    first = int(typed[0])
    ranges = [(first - 100, first + 1000), (int(typed[-1]) - 5, int(typed[-1]) + 3)]
    fast = list(sp.scan(ranges, chunk_pages=256))
    k.target.core_file = None
    slow = list(StructPages(k).scan(ranges, chunk_pages=256))
    assert [(n, bad) for _, n, bad in fast] == [(n, bad) for _, n, bad in slow]
    assert all(a.tobytes() == b.tobytes() for (a, _, _), (b, _, _) in zip(fast, slow))
    rows = np.concatenate([f for f, _, _ in fast])
    assert len(rows) == 1108 and rows["table"].sum() >= 2


def test_a_recording_target_sees_every_read_of_a_scan(server):
    path, typed, _ = server
    k = mminspect.open(core=str(path))
    sp = StructPages(k)
    rec = sp.target = RecordingTarget(k.target, 4096)
    first = int(typed[0]) // 4096 * 4096
    got = np.concatenate([f for f, _, _ in sp.scan([(first, first + 4096)], want="table")])
    assert int(typed[0]) in got["pfn"].tolist()
    memmap = {pa + off for _, n, pa in sp._pieces(int(sp.page_va(np.array([first]))[0]), 4096 * 64)
              for off in range(0, n, 4096)}
    assert len(memmap) == 64 and memmap <= rec.pages


def test_audit_forked_scan_equals_the_scan_in_process(server, monkeypatch):
    import mminspect.classify as classify

    path, typed, _ = server
    got = {}
    for fork in (True, False):
        monkeypatch.setattr(classify, "FORK_SCAN", fork)
        a = classify.audit(mminspect.open(core=str(path)))
        assert a.stats["scan_forked"] is fork
        got[fork] = a
    a, b = got[True], got[False]
    assert a.typed.tolist() == b.typed.tolist() == typed.tolist()
    assert a.reachable_typed.tolist() == b.reachable_typed.tolist()
    assert a.unreachable_typed.tolist() == b.unreachable_typed.tolist() and len(a.unreachable_typed)
    assert (a.scanned_pages, a.unreadable_pages) == (b.scanned_pages, b.unreadable_pages)


@pytest.mark.parametrize("drop", ["0", "1"])
def test_scan_with_drop_behind_reads_the_same_and_leaves_the_file(server, monkeypatch, drop):
    """Read-ahead and drop-behind are hints: the scan finds every typed page
    with them on (drop=1) as off, asks for every chunk before reading it and
    drops it after only when asked to, and the dump stays as it was."""
    import hashlib

    path, typed, _ = server
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv("MMINSPECT_DROP_BEHIND", drop)
    k = mminspect.open(core=str(path))
    core = k.target.core_file
    asked, dropped = [], []
    prefetch, release = core.prefetch, core.release
    core.prefetch = lambda pa, n: (asked.append(n), prefetch(pa, n))
    core.release = lambda pa, n: (dropped.append(n) if core.drop_behind else None, release(pa, n))
    found = scan_typed(k)
    assert core.drop_behind == (drop == "1")
    assert sum(asked) >= found[2] * 64 - 4096 and (sum(dropped) == sum(asked)) == (drop == "1")
    assert found[0].tolist() == typed.tolist()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
