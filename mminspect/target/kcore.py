"""
The running kernel through /proc/kcore
--------------------------------------

``-k`` reads the kernel mminspect runs on, through drgn's /proc/kcore target.
Before drgn opens it, :func:`check_kcore` names, in one line, each reason it
cannot work and what to do about it:

* this machine is not arm64 (mminspect reads arm64 page tables);
* /proc is not mounted, or the kernel has no /proc/kcore (CONFIG_PROC_KCORE);
* the kernel is locked down for confidentiality: ``open_kcore()`` refuses
  even root (fs/proc/kcore.c, "lockdown: Lock down /proc/kcore", v5.4);
* the user is not root: /proc/kcore is mode 0400 and ``open_kcore()`` also
  wants CAP_SYS_RAWIO.

What a live kernel changes while it is read (tables freed or allocated during
a walk) is reported by the walker and the audit as such; nothing here hides it.
"""

import errno
import os
import platform
from typing import Optional

from mminspect.errors import MMInspectError

__all__ = ("KCORE", "check_kcore", "kcore_problem", "lockdown_mode")

KCORE = "/proc/kcore"
ARM64_MACHINES = ("aarch64", "arm64")


def lockdown_mode() -> Optional[str]:
    """The kernel's lockdown mode ("none", "integrity", "confidentiality"),
    from securityfs (/sys/kernel/security/lockdown, the bracketed word) or,
    when securityfs is not mounted, the ``lockdown=`` boot parameter; None if
    neither says."""
    try:
        with open("/sys/kernel/security/lockdown") as f:
            for word in f.read().split():
                if word.startswith("["):
                    return word.strip("[]")
    except OSError:
        pass
    try:
        with open("/proc/cmdline") as f:
            for word in f.read().split():
                if word.startswith("lockdown="):
                    return word.split("=", 1)[1]
    except OSError:
        pass
    return None


CAP_SYS_RAWIO = 17


def _effective_cap(bit: int) -> bool:
    """Is capability ``bit`` in this process's effective set (/proc/self/status CapEff)?"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def kcore_problem(path: str = KCORE) -> Optional[str]:
    """Why the running kernel cannot be read through ``path``, in one line
    that says what to do; None when it can be opened."""
    machine = platform.machine()
    if machine not in ARM64_MACHINES:
        return (f"-k reads the running kernel, and this machine is {machine or 'unknown'}, not arm64: "
                "run mminspect on the arm64 machine, or give an arm64 dump (-c VMCORE) or guest (--qemu SOCKET)")
    if not os.path.exists(path):
        if not os.path.exists("/proc/self"):
            return f"{path}: /proc is not mounted: mount it (mount -t proc proc /proc) and run again"
        return (f"{path}: this kernel has none (built without CONFIG_PROC_KCORE): take a dump "
                "(kdump's /proc/vmcore, QEMU dump-guest-memory) and read it with -c VMCORE")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES):
            return f"{path}: cannot open ({os.strerror(e.errno)})"
        # open_kcore() answers EPERM to a caller with CAP_SYS_RAWIO only when
        # the kernel is locked down (securityfs may not be mounted to say so).
        if os.geteuid() == 0 and (lockdown_mode() == "confidentiality"
                                  or (e.errno == errno.EPERM and _effective_cap(CAP_SYS_RAWIO))):
            return (f"{path}: refused by kernel lockdown (confidentiality mode): the running kernel cannot "
                    "be read; boot without lockdown=confidentiality, or take a dump (kdump) and use -c VMCORE")
        if os.geteuid() != 0:
            return f"{path}: permission denied: reading the running kernel needs root (run: sudo mminspect ... -k)"
        return f"{path}: permission denied: reading the running kernel needs CAP_SYS_RAWIO; run as root with it"
    os.close(fd)
    return None


def check_kcore(path: str = KCORE) -> None:
    """:raises MMInspectError: when :func:`kcore_problem` finds a reason."""
    problem = kcore_problem(path)
    if problem:
        raise MMInspectError(problem)
