"""
The good inputs every hostile case starts from, made once per session
---------------------------------------------------------------------

- ``good.core``: a small synthetic 4K/48 kernel (:mod:`mminspect.synthetic`),
  VMCOREINFO only, as an ELF vmcore (about 120 KB);
- ``odd.core``: the same with a loop, a table outside RAM, shared tables and
  two table pages left out of the dump;
- ``good.kdump``: ``good.core`` rewritten as QEMU writes kdump-zlib files
  (64 KiB blocks, no utsname), by :func:`write_kdump` below;
- ``sample.core``: the bundled sample (a bundle with debug answers, memory
  sections and blocks), for capture, snapshot and simulate-remove;
- ``good.npz``: a snapshot of the sample.

Each case copies what it needs into its own directory and damages the copy.
"""

import os
import shutil
import struct
import zlib
from typing import Dict, List, Tuple

from mminspect.synthetic import REGIMES_BY_NAME
from mminspect.synthetic.sample import make_sample
from mminspect.synthetic.vmcore import write_vmcore

BLOCK = 1 << 16  # QEMU's kdump block, whatever the guest's page size
KDUMP_HEADER_VERSION = 6


def _pt_loads(path: str) -> List[Tuple[int, int, int]]:
    """(paddr, offset, filesz) of an ELF64 core's PT_LOADs."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    out = []
    for i in range(phnum):
        ptype, _, off, _, paddr, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i)
        if ptype == 1:
            out.append((paddr, off, filesz))
    return out


def write_kdump(elf_path: str, path: str, vmcoreinfo: bytes) -> None:
    """Rewrite an ELF vmcore as a kdump-compressed file the way QEMU's
    dump-guest-memory -z does (see mminspect/target/kdump.py for the layout
    it reads): header, sub-header with VMCOREINFO, a two-half bitmap, one
    page descriptor per dumped block, one shared zero block, zlib data."""
    loads = _pt_loads(elf_path)
    with open(elf_path, "rb") as f:
        elf = f.read()
    blocks: Dict[int, bytearray] = {}
    for paddr, off, filesz in loads:
        for pos in range(0, filesz, 4096):
            pa = paddr + pos
            chunk = elf[off + pos : off + min(pos + 4096, filesz)]
            blk = blocks.setdefault(pa // BLOCK, bytearray(BLOCK))
            blk[pa % BLOCK : pa % BLOCK + len(chunk)] = chunk
    max_mapnr = max(blocks) + 1
    bitmap_bytes = (max_mapnr + 7) // 8
    bitmap_blocks = 2 * max(1, -(-bitmap_bytes // BLOCK))
    half = bitmap_blocks * BLOCK // 2
    bits = bytearray(half)
    for pfn in blocks:
        bits[pfn // 8] |= 1 << (pfn % 8)
    sub_hdr_size = 1
    vmci_off = 2 * BLOCK - len(vmcoreinfo) - 8 if len(vmcoreinfo) < BLOCK - 200 else None
    assert vmci_off is not None
    desc_off = (1 + sub_hdr_size + bitmap_blocks) * BLOCK
    data_start = desc_off + len(blocks) * 24
    zero = zlib.compress(bytes(BLOCK))
    descs, data = [], bytearray(zero)
    for pfn in sorted(blocks):
        raw = bytes(blocks[pfn])
        if not any(raw):
            descs.append(struct.pack("<qIIQ", data_start, len(zero), 1, 0))
            continue
        z = zlib.compress(raw)
        descs.append(struct.pack("<qIIQ", data_start + len(data), len(z), 1, 0))
        data += z
    header = bytearray(464)
    header[0:8] = b"KDUMP   "
    struct.pack_into("<i", header, 8, KDUMP_HEADER_VERSION)
    header[12 + 4 * 65 : 12 + 4 * 65 + 7] = b"Unknown"  # QEMU: machine only
    struct.pack_into("<iiII", header, 428, BLOCK, sub_hdr_size, bitmap_blocks, max_mapnr)
    sub = bytearray(104)
    struct.pack_into("<qQ", sub, 32, vmci_off, len(vmcoreinfo))
    struct.pack_into("<Q", sub, 96, max_mapnr)
    with open(path, "wb") as f:
        f.write(header + bytes(BLOCK - len(header)))
        block1 = bytearray(BLOCK)
        block1[: len(sub)] = sub
        block1[vmci_off - BLOCK : vmci_off - BLOCK + len(vmcoreinfo)] = vmcoreinfo
        f.write(block1)
        f.write(bytes(half))  # first half: RAM present (not read)
        f.write(bits)
        f.write(b"".join(descs))
        f.write(data)


def make_inputs(directory: str) -> Dict[str, str]:
    """Write the good inputs into ``directory``; return name -> path."""
    from mminspect.cli import bundled_sample
    from mminspect.hotremove import Snapshot  # noqa: F401  (imported for the snapshot below)

    os.makedirs(directory, exist_ok=True)
    r = REGIMES_BY_NAME["4k-va48"]
    out = {}
    good = write_vmcore(os.path.join(directory, "good.core"), make_sample(r, seed=1, oddities=False))
    out["good.core"] = good.path
    out["good.vmcoreinfo"] = good.vmcoreinfo
    odd_kernel = make_sample(r, seed=1, oddities=True)
    odd = write_vmcore(os.path.join(directory, "odd.core"), odd_kernel)
    out["odd.core"] = odd.path
    #: one VA range per kind of oddity the walk must report (loop, table outside RAM ...)
    out["anomalies"] = {}
    for a in odd_kernel.anomalies:
        if a.root == "swapper" and a.kind in ("loop", "table_outside_ram"):
            out["anomalies"].setdefault(a.kind, (a.va_start, a.va_end))
    write_kdump(good.path, os.path.join(directory, "good.kdump"), good.vmcoreinfo.encode())
    out["good.kdump"] = os.path.join(directory, "good.kdump")
    sample = os.path.join(directory, "sample.core")
    shutil.copy(bundled_sample(), sample)
    out["sample.core"] = sample
    out["good.npz"] = _snapshot(sample, os.path.join(directory, "good.npz"))
    return out


def _snapshot(core: str, path: str) -> str:
    from mminspect.hotremove import capture_snapshot
    from mminspect.kernel import Kernel
    from mminspect.target import open_target

    snap = capture_snapshot(Kernel(open_target(core=core)))
    snap.save(path)
    return path


def lying_core(directory: str, name: str, extra: Dict[str, str], omit: Tuple[str, ...] = (),
               oddities: bool = False) -> str:
    """A synthetic 4K/48 kernel whose VMCOREINFO says ``extra`` and lacks ``omit``."""
    path = os.path.join(directory, name)
    write_vmcore(path, make_sample(REGIMES_BY_NAME["4k-va48"], seed=1, oddities=oddities),
                 vmcoreinfo_extra=extra, vmcoreinfo_omit=omit)
    return path
