"""
Running one hostile case, and judging it
----------------------------------------

A case runs the CLI (``mminspect.cli.main``) in a child forked from this
process, so imports are paid once, with

- its own directory as the working directory, stdin from /dev/null and
  stdout/stderr to files;
- an address-space limit (``RLIMIT_AS``: what the parent maps plus
  :data:`MEMORY_HEADROOM`), so a blow-up is a MemoryError, not a swapped
  machine;
- a wall-clock limit (the case's ``timeout``): past it the child is killed
  and the case is a hang;
- for interrupted runs, a signal sent when the first new file appears in the
  directory (mid-write by construction) or after a delay.

:func:`judge` then sorts what happened into the issue's families of failure:
hang, input changed, file left behind, bad input accepted (exit 0), wrong
status, not one line, an exception's name instead of a message, memory
blow-up, silent wrong answer.
"""

import hashlib
import io
import os
import re
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Address space a case may add to what the (forked) parent already maps.
MEMORY_HEADROOM = 1 << 30

FAILURES = ("hang", "input changed", "left behind", "accepted", "silent", "status", "not one line",
            "exception name", "memory")


@dataclass
class Case:
    """One hostile input and what a safe tool does with it."""

    family: str
    name: str
    args: List[str]
    #: Build the case's files in its directory (the directory is the argument).
    setup: Callable[[str], None]
    #: Exit statuses that are right (2: bad input).
    expect: Tuple[int, ...] = (2,)
    #: Files that may exist after the run (besides those setup made).
    may_create: Tuple[str, ...] = ()
    #: Output is fine on stdout (a walk that reports problems still prints).
    stdout_ok: bool = False
    #: Words the one stderr line must contain (any one of them).
    words: Tuple[str, ...] = ()
    #: A QMP peer behaviour served at ``qmp.sock`` in the case directory.
    qmp: Optional[str] = None
    #: (signal, "write" or seconds): interrupt the run.
    interrupt: Optional[Tuple[int, object]] = None
    timeout: float = 30.0  # seconds: a case over it is a hang (cases take 0.1 to 3 s; the machine may be busy)
    env: Dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


@dataclass
class Outcome:
    status: Optional[int]  # None: killed by us (hang)
    signal: Optional[int]
    stdout: str
    stderr: str
    seconds: float
    before: Dict[str, Tuple[str, int]]
    after: Dict[str, Tuple[str, int]]


def _snapshot_dir(d: str) -> Dict[str, Tuple[str, int]]:
    """name -> (sha256 or kind, mtime_ns) of everything in ``d``."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        st = os.lstat(p)
        if os.path.isfile(p) and not os.path.islink(p):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[name] = (h.hexdigest(), st.st_mtime_ns)
        else:
            out[name] = (f"mode {st.st_mode:o}", st.st_mtime_ns)
    return out


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(args: Sequence[str], cwd: str, out_fd: int, err_fd: int, env: Dict[str, str], ready: int) -> None:
    """In the forked child: become ``mminspect ARGS`` and exit. The
    harness's own set-up runs with SIGINT/SIGTERM/SIGHUP held back; a byte
    on ``ready`` tells the parent that mminspect itself is starting."""
    code = 1
    try:
        os.chdir(cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        os.environ.update(env)
        limit = _vm_size() + MEMORY_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from mminspect.cli import main

        os.write(ready, b"1")
        os.close(ready)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        main(list(args), prog_name="mminspect", standalone_mode=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            sys.stderr.write(f"{e.code}\n")
    except BaseException as e:  # what escaped the CLI: a traceback in real life
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
        code = 1 if not isinstance(e, MemoryError) else 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)


def run(case: Case, cwd: str) -> Outcome:
    """Run ``case`` in ``cwd`` (already set up) and return what happened."""
    before = _snapshot_dir(cwd)
    out_path, err_path = os.path.join(os.path.dirname(cwd), f".{os.path.basename(cwd)}.out"), \
        os.path.join(os.path.dirname(cwd), f".{os.path.basename(cwd)}.err")
    out_fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(err_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _child(case.args, cwd, out_fd, err_fd, case.env, ready_w)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(ready_w)
    os.close(out_fd)
    os.close(err_fd)
    os.read(ready_r, 1)  # the child is about to call main() (or has died)
    os.close(ready_r)
    start = time.monotonic()
    status = sig = None
    sent = False
    names = set(before)
    while True:
        done, wstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(wstatus):
                sig = os.WTERMSIG(wstatus)
            else:
                status = os.WEXITSTATUS(wstatus)
            break
        elapsed = time.monotonic() - start
        if elapsed > case.timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        if case.interrupt and not sent:
            signum, when = case.interrupt
            if (when == "write" and set(os.listdir(cwd)) - names) or \
                    (when != "write" and elapsed >= float(when)):
                os.kill(pid, signum)
                sent = True
        time.sleep(0.002 if case.interrupt and not sent else 0.01)
    seconds = time.monotonic() - start
    with open(out_path, errors="replace") as f:
        stdout = f.read(1 << 20)
    with open(err_path, errors="replace") as f:
        stderr = f.read(1 << 20)
    os.unlink(out_path)
    os.unlink(err_path)
    return Outcome(status, sig, stdout, stderr, seconds, before, _snapshot_dir(cwd))


_EXCEPTION = re.compile(r"\b(Traceback|[A-Z][A-Za-z]*(Error|Exception)\b|internal error)")


def judge(case: Case, o: Outcome) -> List[str]:
    """The failure families this outcome falls in (empty: the case passed)."""
    if o.status is None and o.signal is None:
        return ["hang"]
    bad: List[str] = []
    if any(o.after.get(name) != state for name, state in o.before.items()):
        bad.append("input changed")
    # An output may be there after exit 0, or after an interrupt that came
    # once it was whole at its name (the tool then says so).
    whole = o.status == 0 or (case.interrupt is not None and "written in full" in o.stderr)
    new = set(o.after) - set(o.before) - (set(case.may_create) if whole else set())
    if new:
        bad.append("left behind")
    if o.signal == signal.SIGKILL or "MemoryError" in o.stderr or "out of memory" in o.stderr:
        bad.append("memory")
    if o.status == 0 and 0 not in case.expect:
        bad.append("silent" if case.stdout_ok else "accepted")
    elif o.status not in case.expect:
        bad.append("status")
    if _EXCEPTION.search(o.stderr):
        bad.append("exception name")
    if o.status != 0:
        err = [line for line in o.stderr.splitlines() if line.strip()]
        if len(err) != 1 or (case.words and not any(w in err[0] for w in case.words)) or \
                (o.stdout and not case.stdout_ok):
            bad.append("not one line")
    return sorted(set(bad), key=FAILURES.index)
