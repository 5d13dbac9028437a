"""
Just enough QMP to find a QEMU guest's DIMMs
--------------------------------------------

``simulate-remove --dimm ID`` names memory the way whoever drives the guest
does: by the pc-dimm's id. :func:`dimm_range` asks QEMU's QMP socket
(``query-memory-devices``) for its physical range.
"""

import json
import socket
from typing import Dict, List, Tuple

from mminspect.errors import MMInspectError

__all__ = ("dimm_range", "memory_devices")


def _command(path: str, command: str) -> object:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "event" not in reply:
                        break
                if "error" in reply:
                    raise MMInspectError(f"QMP {cmd}: {reply['error'].get('desc')}")
            return reply["return"]
    except (OSError, ValueError) as e:
        raise MMInspectError(f"{path}: cannot talk QMP ({e})") from None


def memory_devices(path: str) -> List[Dict[str, object]]:
    """The guest's memory devices (``query-memory-devices``)."""
    return [d.get("data", {}) | {"type": d.get("type")} for d in _command(path, "query-memory-devices")]


def dimm_range(path: str, dimm_id: str) -> Tuple[int, int]:
    """Physical [start, end) of the pc-dimm with id ``dimm_id``."""
    devices = memory_devices(path)
    for d in devices:
        if d.get("id") == dimm_id:
            return int(d["addr"]), int(d["addr"]) + int(d["size"])
    known = ", ".join(str(d.get("id")) for d in devices) or "none"
    raise MMInspectError(f"no DIMM {dimm_id!r} in the guest (DIMMs: {known})")
