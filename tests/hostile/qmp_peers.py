"""
QMP peers that misbehave, served on a Unix socket by a thread
-------------------------------------------------------------

Each behaviour is what a hostile or broken peer on ``--qemu SOCKET`` does:
never answer, answer forever without a newline, greet and then go quiet,
speak something else, or answer QMP with DIMMs that make no sense.
"""

import json
import socket
import threading
from typing import Callable

GREETING = json.dumps({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}})

BEHAVIOURS = ("stall", "flood", "greet-stall", "garbage", "close", "events", "not-qmp", "error",
              "dimm-negative", "dimm-strings", "dimm-huge", "dimm-not-list", "reply-no-return", "flood-lines")


def _dimms(kind: str):
    return {
        "dimm-negative": [{"type": "dimm", "data": {"id": "dimm0", "addr": -4096, "size": 1 << 30}}],
        "dimm-strings": [{"type": "dimm", "data": {"id": "dimm0", "addr": "lots", "size": None}}],
        "dimm-huge": [{"type": "dimm", "data": {"id": "dimm0", "addr": 1 << 63, "size": 1 << 63}}],
        "dimm-not-list": {"dimm0": "here"},
    }[kind]


def _serve_one(conn: socket.socket, behaviour: str, stop: threading.Event) -> None:
    f = conn.makefile("rwb", buffering=0)

    def send(obj) -> None:
        f.write((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")

    if behaviour == "stall":
        stop.wait()
        return
    if behaviour == "close":
        return
    if behaviour == "flood":
        chunk = b"x" * 65536
        while not stop.is_set():
            conn.sendall(chunk)
        return
    if behaviour == "garbage":
        f.write(b"\x00\xffhello, this is not JSON\n")
        stop.wait()
        return
    if behaviour == "not-qmp":
        send({"hello": "world"})
        stop.wait()
        return
    send(GREETING)
    if behaviour == "greet-stall":
        stop.wait()
        return
    while not stop.is_set():
        line = f.readline()
        if not line:
            return
        cmd = json.loads(line).get("execute")
        if behaviour == "events":
            while not stop.is_set():
                send({"event": "RESUME", "timestamp": {"seconds": 0, "microseconds": 0}})
            return
        if behaviour == "flood-lines":
            while not stop.is_set():
                f.write(b"{" + b'"a": 1, ' * 8192)
            return
        if behaviour == "error":
            send({"error": {"class": "GenericError", "desc": "no"}})
        elif behaviour == "reply-no-return":
            send({"id": 1})
        elif cmd == "query-memory-devices" and behaviour.startswith("dimm-"):
            send({"return": _dimms(behaviour)})
        else:
            send({"return": {"status": "running", "running": True} if cmd == "query-status" else {}})


def serve(path: str, behaviour: str) -> Callable[[], None]:
    """Serve ``behaviour`` on a Unix socket at ``path``; return stop()."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(0.1)
    stop = threading.Event()
    conns = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conns.append(conn)
            t = threading.Thread(target=_guard, args=(conn,), daemon=True)
            t.start()

    def _guard(conn) -> None:
        try:
            _serve_one(conn, behaviour, stop)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stop_serving() -> None:
        stop.set()
        thread.join(5)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        srv.close()

    return stop_serving
