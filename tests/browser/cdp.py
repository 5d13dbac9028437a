"""
A headless Chromium driven over the DevTools protocol, with the standard
library only (no npm, no Playwright, no websocket package): start Debian's
``chromium`` on a fresh profile, open a page, collect console errors and
uncaught exceptions, evaluate JavaScript, take screenshots.

>>> with Chromium() as browser:
...     page = browser.open("file:///tmp/map.html")
...     page.evaluate("document.title"), page.errors
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

__all__ = ("Chromium", "Page", "find_chromium")

#: Flags for a closed network: without the background-networking ones the
#: browser stalls on connections it cannot make.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars")


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _WebSocket:
    """RFC 6455 client framing over a plain socket (text frames, masked)."""

    def __init__(self, url: str, timeout: float) -> None:
        assert url.startswith("ws://")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"DevTools handshake failed: {status!r}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        head = bytearray([0x81])
        n = len(data)
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head.append(0x80 | 126)
            head += struct.pack(">H", n)
        else:
            head.append(0x80 | 127)
            head += struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 4096 else _mask(data, mask)
        self.sock.sendall(bytes(head) + mask + masked)

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = _mask(payload, mask)
            op = b0 & 0x0F
            if op == 0x8:
                raise ConnectionError("DevTools closed the connection")
            if op in (0x9, 0xA):  # ping/pong: not used by DevTools
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _mask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")


class Page:
    """One tab, attached through a flat session of the browser connection."""

    def __init__(self, browser: "Chromium", session: str) -> None:
        self.browser = browser
        self.session = session
        self.errors: List[str] = []  #: console errors, uncaught exceptions, failed loads
        self.events: List[Dict[str, Any]] = []

    def call(self, method: str, **params) -> Dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def _event(self, msg: Dict[str, Any]) -> None:
        m, p = msg["method"], msg.get("params", {})
        self.events.append(msg)
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                             for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log {e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())

    def navigate(self, url: str, timeout: float = 60.0) -> float:
        """Load ``url``; returns seconds from the request to the load event."""
        t0 = time.perf_counter()
        self.call("Page.navigate", url=url)
        self.browser.wait_event("Page.loadEventFired", self.session, timeout)
        return time.perf_counter() - t0

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r} threw: {r['exceptionDetails'].get('text')} "
                               f"{r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r["result"].get("value")

    def screenshot(self, path: str, full_page: bool = True) -> None:
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            m = self.call("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m["contentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def print_pdf(self, path: str) -> None:
        data = self.call("Page.printToPDF", printBackground=False)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


class Chromium:
    """A headless browser on a fresh profile; use as a context manager."""

    def __init__(self, binary: Optional[str] = None, width: int = 1400, height: int = 1000,
                 timeout: float = 60.0) -> None:
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self.proc: Optional[subprocess.Popen] = None
        self.ws: Optional[_WebSocket] = None
        self.profile = ""
        self._id = 0
        self._pages: Dict[str, Page] = {}
        self._pending: List[Dict[str, Any]] = []

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.mkdtemp(prefix="mminspect-chromium-")
        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode} before DevTools started")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not start DevTools in time")
            time.sleep(0.05)
        port, path = open(port_file).read().split("\n")[:2]
        self.ws = _WebSocket(f"ws://127.0.0.1:{port}{path}", self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        if self.ws is not None:
            try:
                self.call("Browser.close", {})
            except Exception:
                pass
            self.ws.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _dispatch(self, msg: Dict[str, Any]) -> None:
        page = self._pages.get(msg.get("sessionId", ""))
        if page is not None and "method" in msg:
            page._event(msg)

    def call(self, method: str, params: Dict[str, Any], session: Optional[str] = None) -> Dict[str, Any]:
        self._id += 1
        mid = self._id
        msg: Dict[str, Any] = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == mid:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._dispatch(reply)
            if "method" in reply:
                self._pending.append(reply)

    def wait_event(self, method: str, session: Optional[str], timeout: float) -> Dict[str, Any]:
        for k, ev in enumerate(self._pending):
            if ev["method"] == method and ev.get("sessionId") == session:
                return self._pending.pop(k)
        self.ws.sock.settimeout(timeout)
        try:
            while True:
                msg = json.loads(self.ws.recv())
                self._dispatch(msg)
                if msg.get("method") == method and msg.get("sessionId") == session:
                    return msg
        finally:
            self.ws.sock.settimeout(self.timeout)

    def open(self, url: str) -> Page:
        """A new tab with console and exception reporting on, at ``url``."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for m in ("Page.enable", "Runtime.enable", "Log.enable"):
            page.call(m)
        page.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        page.load_seconds = page.navigate(url)
        return page


def main(argv=None) -> int:
    """``python -m tests.browser.cdp PAGE.html [--screenshot OUT.png] [--runs N]``:
    open a page from disk, print the load time (request to load event), the
    time its script reports (``data-render-ms``) and any console error."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.browser.cdp")
    ap.add_argument("page")
    ap.add_argument("--screenshot")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--eval", action="append", default=[], metavar="JS",
                    help="run this in the page before the screenshot (e.g. mminspectMap.zoomAt(0x40000000))")
    args = ap.parse_args(argv)
    url = "file://" + os.path.abspath(args.page)
    with Chromium(width=args.width, height=args.height) as browser:
        for _ in range(args.runs):
            page = browser.open(url)
            render = page.evaluate("document.body.dataset.renderMs")
            print(f"{args.page}: load {page.load_seconds * 1000:.0f} ms, script {render} ms, "
                  f"{len(page.errors)} error(s)")
            for e in page.errors:
                print("  " + e)
        for js in args.eval:
            print(f"{js}: {page.evaluate(js)}")
        if page.errors:
            print("errors: " + "; ".join(page.errors))
            return 1
        if args.screenshot:
            page.screenshot(args.screenshot, full_page=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
