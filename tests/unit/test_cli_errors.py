"""Bad input gets one clear line on stderr and a non-zero exit, no traceback,
and the user's files are left as they were."""

import hashlib
import shutil
import struct

import pytest
from click.testing import CliRunner

from mminspect.cli import bundled_sample, main
from mminspect.synthetic import REGIMES_BY_NAME
from mminspect.synthetic.sample import make_sample
from mminspect.synthetic.vmcore import write_vmcore


def _run(*args):
    result = CliRunner().invoke(main, list(args))
    return result


def _assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mminspect: error: "), result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in err[0], err[0]
    assert result.stdout == ""


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.core"
    shutil.copy(bundled_sample(), path)
    return path


@pytest.fixture
def nodebug(tmp_path):
    """A kernel with VMCOREINFO only: no vmlinux, no bundle answers."""
    path = tmp_path / "nodebug.core"
    write_vmcore(str(path), make_sample(REGIMES_BY_NAME["4k-va48"], seed=1, oddities=False))
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_file():
    _assert_one_line_error(_run("walk", "-c", "/nonexistent/vmcore"), "no such file")


def test_directory(tmp_path):
    _assert_one_line_error(_run("walk", "-c", str(tmp_path)), "directory")


def test_not_a_vmcore(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello, world\n" * 1000)
    before = _digest(junk)
    _assert_one_line_error(_run("walk", "-c", str(junk)), "not a vmcore")
    assert _digest(junk) == before


def test_truncated(sample, tmp_path):
    short = tmp_path / "short.core"
    short.write_bytes(sample.read_bytes()[: 300 * 1024])
    _assert_one_line_error(_run("walk", "-c", str(short)), "truncated")


def test_foreign_architecture(sample):
    data = bytearray(sample.read_bytes())
    struct.pack_into("<H", data, 18, 62)  # e_machine = EM_X86_64
    sample.write_bytes(bytes(data))
    _assert_one_line_error(_run("walk", "-c", str(sample)), "arm64")


def test_missing_vmlinux_file(sample):
    _assert_one_line_error(_run("walk", "-c", str(sample), "-s", "/nonexistent/vmlinux"), "no such file")


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--range", "zzz"), "bad range"),
        (("--range", "ffff800000000000-ffff000000000000"), "START must be below END"),
        (("--range", "1000-2000"), "outside init_mm"),
        (("--mm", "nosuchroot"), "unknown root"),
        (("--mm", "pgd:xyz"), "pgd:PHYS"),
    ],
)
def test_bad_range_or_root(sample, args, needle):
    _assert_one_line_error(_run("walk", "-c", str(sample), *args), needle)


@pytest.mark.parametrize("mm", ["efi_mm", "1"])
def test_roots_needing_debug_info(nodebug, mm):
    _assert_one_line_error(_run("walk", "-c", str(nodebug), "--mm", mm), "debug info")


def test_init_mm_needs_only_vmcoreinfo(nodebug):
    result = _run("walk", "-c", str(nodebug), "--mm", "init_mm")
    assert result.exit_code == 0, result.output
    assert "table pages" in result.stdout


def test_capture_never_overwrites(sample, tmp_path):
    mine = tmp_path / "mine.core"
    mine.write_bytes(b"precious")
    _assert_one_line_error(_run("capture", "-c", str(sample), "-o", str(mine)), "exists")
    assert mine.read_bytes() == b"precious"


def test_reading_leaves_the_dump_untouched(sample):
    before = _digest(sample)
    for fmt in ("table", "json", "ptdump"):
        assert _run("walk", "-c", str(sample), "--format", fmt).exit_code == 0
    assert _digest(sample) == before


def test_reader_leaving_early_is_sigpipe_not_a_problem_status():
    """`mminspect walk | head -1`: the reader closes the pipe; mminspect ends
    quietly with 128 + SIGPIPE (what a shell shows for a process SIGPIPE
    killed), not 1, which says part of the tree could not be seen."""
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "from mminspect.cli import main; main()", "walk", "--tables"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 128 + signal.SIGPIPE
    assert "Traceback" not in err and "error" not in err
