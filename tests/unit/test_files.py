"""mminspect.files: outputs never alias inputs, appear whole or not at all,
and replace only regular files; inputs are regular files."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from mminspect.errors import MMInspectError
from mminspect.files import atomic_output, check_input, check_output, same_file


@pytest.fixture
def dump(tmp_path):
    p = tmp_path / "vmcore"
    p.write_bytes(b"dump" * 1000)
    (tmp_path / "sub").mkdir()
    return p


def _aliases(tmp_path, dump):
    os.symlink(dump, tmp_path / "link")
    os.link(dump, tmp_path / "hard")
    return [str(dump), f"{tmp_path}/./vmcore", f"{tmp_path}/sub/../vmcore", f"/{tmp_path}//vmcore",
            str(tmp_path / "link"), str(tmp_path / "hard")]


@pytest.mark.parametrize("force", [False, True])
def test_output_aliasing_an_input_is_refused(tmp_path, dump, force):
    before = dump.read_bytes()
    for alias in _aliases(tmp_path, dump):
        assert same_file(alias, str(dump))
        with pytest.raises(MMInspectError, match="is the input"):
            check_output(alias, [str(dump)], force)
        with pytest.raises(MMInspectError, match="is the input"):
            with atomic_output(alias, [str(dump)], force) as f:
                f.write(b"x")
    assert dump.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["hard", "link", "sub", "vmcore"]


def test_other_file_is_not_an_alias(tmp_path, dump):
    other = tmp_path / "other"
    other.write_bytes(b"dump" * 1000)  # same bytes, another file
    assert not same_file(str(other), str(dump))
    check_output(str(tmp_path / "new"), [str(dump)])


def test_exists_needs_force_and_force_replaces_regular_files_only(tmp_path, dump):
    mine = tmp_path / "mine"
    mine.write_bytes(b"precious")
    with pytest.raises(MMInspectError, match="exists; choose another name or pass --force"):
        check_output(str(mine), [str(dump)])
    with atomic_output(str(mine), [str(dump)], force=True) as f:
        f.write(b"new")
    assert mine.read_bytes() == b"new"
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "elsewhere", tmp_path / "dangling")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock"))
    for name, kind in [("fifo", "FIFO"), ("sub", "directory"), ("dangling", "symbolic link"),
                       ("sock", "socket")]:
        with pytest.raises(MMInspectError, match=kind):
            check_output(str(tmp_path / name), [str(dump)], force=True)
    with pytest.raises(MMInspectError, match="character device"):
        check_output("/dev/null", [str(dump)], force=True)
    assert not (tmp_path / "elsewhere").exists()
    s.close()


def test_temporary_name_is_unique_and_never_the_users(tmp_path, dump):
    out = tmp_path / "evidence.core"
    users = tmp_path / "evidence.core.tmp"
    users.write_bytes(b"the user's own file")
    with atomic_output(str(out), [str(dump)]) as f:
        f.write(b"bundle")
        partial = [n for n in os.listdir(tmp_path) if n not in ("evidence.core.tmp", "vmcore", "sub")]
        assert len(partial) == 1 and partial[0] != "evidence.core"
        assert not out.exists()
    assert out.read_bytes() == b"bundle"
    assert users.read_bytes() == b"the user's own file"
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_error_inside_leaves_nothing(tmp_path, dump):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output(str(out), [str(dump)]) as f:
            f.write(b"half")
            raise RuntimeError("disk on fire")
    assert sorted(os.listdir(tmp_path)) == ["sub", "vmcore"]


def test_file_appearing_meanwhile_is_not_clobbered(tmp_path, dump):
    out = tmp_path / "out"
    with pytest.raises(MMInspectError, match="exists"):
        with atomic_output(str(out), [str(dump)]) as f:
            f.write(b"ours")
            out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == ["out", "sub", "vmcore"]


def test_missing_directory(tmp_path, dump):
    with pytest.raises(MMInspectError, match="does not exist"):
        check_output(str(tmp_path / "nodir" / "out"), [str(dump)])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_write_leaves_nothing(tmp_path, signum):
    """A process killed by a signal while writing removes its temporary
    file and leaves nothing at the name."""
    script = textwrap.dedent(f"""
        import os, sys
        from mminspect.files import atomic_output, Interrupted
        try:
            with atomic_output({str(tmp_path / 'out')!r}) as f:
                f.write(b"x" * 4096)
                f.flush()
                print("writing", flush=True)
                sys.stdin.readline()  # the parent signals us here
                f.write(b"y")
        except Interrupted as e:
            sys.exit(128 + e.signum)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"writing\n"
    assert any(n.endswith(".partial") for n in os.listdir(tmp_path))
    p.send_signal(signum)
    p.communicate(timeout=20)
    assert p.returncode == 128 + signum
    assert os.listdir(tmp_path) == []


def test_inputs_must_be_regular_files(tmp_path, dump):
    check_input(str(dump), "vmcore")
    os.mkfifo(tmp_path / "fifo")
    for path, kind in [(tmp_path / "fifo", "FIFO"), (tmp_path / "sub", "directory"),
                       ("/dev/zero", "character device"), (tmp_path / "none", "no such file")]:
        with pytest.raises(MMInspectError, match=kind):
            check_input(str(path), "vmcore")
