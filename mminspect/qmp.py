"""
Just enough QMP to find a QEMU guest's DIMMs, and to check a peer is QEMU
-------------------------------------------------------------------------

``simulate-remove --dimm ID`` names memory the way whoever drives the guest
does: by the pc-dimm's id. :func:`dimm_range` asks QEMU's QMP socket
(``query-memory-devices``) for its physical range. :func:`probe` checks that
the peer on a socket speaks QMP before drgn attaches to it.

The peer is not trusted: every exchange is bounded in time (:data:`TIMEOUT`
seconds to connect and for each reply, ``--timeout`` on the command line)
and in size (a line of at most :data:`MAX_LINE` bytes, at most
:data:`MAX_MESSAGES` events before a reply), so a socket that accepts and
never answers, or streams bytes without a newline, gets one line of error
instead of a hang or unbounded memory.
"""

import json
import os
import socket
import stat
import time
from typing import Dict, List, Optional, Tuple

from mminspect.errors import MMInspectError

__all__ = ("MAX_LINE", "TIMEOUT", "dimm_range", "memory_devices", "probe", "set_timeout")

#: Seconds to wait to connect and for each reply (``--timeout``).
TIMEOUT = 10.0
#: Longest line accepted from the peer (a query-memory-devices reply for
#: hundreds of DIMMs is a few KiB).
MAX_LINE = 1 << 20
#: Asynchronous events skipped while waiting for one reply.
MAX_MESSAGES = 1000


def set_timeout(seconds: float) -> None:
    """Set :data:`TIMEOUT` (the ``--timeout`` option)."""
    global TIMEOUT
    if not seconds > 0:
        raise MMInspectError(f"--timeout {seconds}: must be a positive number of seconds")
    TIMEOUT = float(seconds)


def check_socket(path: str) -> None:
    """Refuse, in one line, a path that is not a Unix socket (a FIFO or a
    regular file would never answer as QEMU does)."""
    try:
        st = os.stat(path)
    except OSError:
        raise MMInspectError(f"{path}: no such QMP socket") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise MMInspectError(f"{path}: not a socket; --qemu takes the path of QEMU's "
                             "-qmp unix:PATH,server=on socket")


class _Peer:
    """One QMP conversation with deadlines and a line-length cap."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buf = bytearray()
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except socket.timeout:
            self.close()
            raise MMInspectError(f"{path}: QMP peer did not accept the connection within {timeout:g} s "
                                 "(--timeout)") from None

    def close(self) -> None:
        self.sock.close()

    def line(self, what: str) -> dict:
        """The next JSON object the peer sends, within the deadline."""
        deadline = time.monotonic() + self.timeout
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                raw, self.buf = bytes(self.buf[:nl]), self.buf[nl + 1 :]
                if not raw.strip():
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    raise MMInspectError(f"{self.path}: not a QMP peer (sent {raw[:40]!r} for {what})") from None
                if not isinstance(msg, dict):
                    raise MMInspectError(f"{self.path}: not a QMP peer (sent {raw[:40]!r} for {what})")
                return msg
            if len(self.buf) > MAX_LINE:
                raise MMInspectError(f"{self.path}: QMP peer sent over {MAX_LINE} bytes without a line end "
                                     f"(waiting for {what}); not QEMU")
            left = deadline - time.monotonic()
            if left <= 0:
                raise MMInspectError(f"{self.path}: QMP peer sent no {what} within {self.timeout:g} s "
                                     "(--timeout)")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise MMInspectError(f"{self.path}: QMP peer closed the connection (waiting for {what})")
            self.buf += chunk

    def execute(self, command: str) -> object:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        for _ in range(MAX_MESSAGES):
            reply = self.line(f"the reply to {command}")
            if "event" in reply:
                continue
            if "error" in reply:
                err = reply["error"]
                desc = err.get("desc") if isinstance(err, dict) else err
                raise MMInspectError(f"QMP {command}: {str(desc)[:200]}")
            if "return" not in reply:
                raise MMInspectError(f"{self.path}: QMP reply to {command} has no 'return'")
            return reply["return"]
        raise MMInspectError(f"{self.path}: QMP peer sent {MAX_MESSAGES} events and no reply to {command}")


def _command(path: str, command: str, timeout: Optional[float] = None) -> object:
    check_socket(path)
    try:
        peer = _Peer(path, TIMEOUT if timeout is None else timeout)
        try:
            greeting = peer.line("greeting")
            if "QMP" not in greeting:
                raise MMInspectError(f"{path}: not a QMP peer (its greeting has no 'QMP')")
            peer.execute("qmp_capabilities")
            return peer.execute(command)
        finally:
            peer.close()
    except OSError as e:
        raise MMInspectError(f"{path}: cannot talk QMP ({e.strerror or e})") from None


def probe(path: str, timeout: Optional[float] = None) -> None:
    """Check, within the timeout, that ``path`` is a QEMU QMP socket that
    answers (``query-status``), before drgn attaches to it."""
    _command(path, "query-status", timeout)


def memory_devices(path: str) -> List[Dict[str, object]]:
    """The guest's memory devices (``query-memory-devices``)."""
    devices = _command(path, "query-memory-devices")
    if not isinstance(devices, list):
        raise MMInspectError(f"{path}: query-memory-devices did not return a list")
    return [(d.get("data") if isinstance(d.get("data"), dict) else {}) | {"type": d.get("type")}
            for d in devices if isinstance(d, dict)]


def dimm_range(path: str, dimm_id: str) -> Tuple[int, int]:
    """Physical [start, end) of the pc-dimm with id ``dimm_id``."""
    devices = memory_devices(path)
    for d in devices:
        if d.get("id") == dimm_id:
            try:
                start, size = int(d["addr"]), int(d["size"])
            except (KeyError, TypeError, ValueError):
                raise MMInspectError(f"{path}: DIMM {dimm_id!r} has no usable addr/size") from None
            if start < 0 or size <= 0 or start + size > 1 << 52:
                raise MMInspectError(f"{path}: DIMM {dimm_id!r} at {start:#x}+{size:#x} is not a physical range")
            return start, start + size
    known = ", ".join(str(d.get("id")) for d in devices) or "none"
    raise MMInspectError(f"no DIMM {dimm_id!r} in the guest (DIMMs: {known})")
