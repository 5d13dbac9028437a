"""
The generator of hostile cases
------------------------------

:func:`all_cases` returns every case, by family:

===========  ================================================================
elf          damaged ELF vmcores: truncated anywhere, header and program
             header fields that lie (offsets, counts, sizes), notes that lie
kdump        damaged kdump-zlib files (plain and flattened): truncated,
             header fields (block size, bitmap, max_mapnr, VMCOREINFO offset
             and size), page descriptors, zlib data, other compressions
vmcoreinfo   VMCOREINFO that lies: PAGESIZE against the layout, VA_BITS,
             TCR_EL1_T1SZ, MAX_PHYSMEM_BITS, SECTION_SIZE_BITS,
             kimage_voffset, PHYS_OFFSET, swapper_pg_dir; missing keys
files        FIFOs, sockets, directories, device nodes and links to them
             given as a dump, vmlinux, snapshot or plugin
qmp          QMP peers that stall, flood, greet and go quiet, or lie
snapshot     hostile snapshots: a header that inflates to 1.5 GB, arrays
             that claim more than they hold, pickles, schema violations
plugin       plugins that fail every way a Python file can
output       outputs that alias an input (./, a/../, //, symbolic and hard
             links, with and without --force), that are device nodes,
             FIFOs, directories, or a user's own NAME.tmp
interrupt    capture and snapshot interrupted by SIGINT, SIGTERM, SIGHUP
             while computing and mid-write
tables       walks that meet loops, tables outside RAM, tables missing from
             the dump, in every output format
args         policy options, pgd:PHYS, ranges and blocks that make no sense
===========  ================================================================
"""

import os
import shutil
import signal
import socket
import stat
import struct
import zlib
from typing import Callable, Dict, List

import numpy as np

from tests.hostile.inputs import BLOCK, lying_core
from tests.hostile.qmp_peers import BEHAVIOURS
from tests.hostile.runner import Case

U64 = (1 << 64) - 1


# -- set-up helpers ---------------------------------------------------------------


def copy(inputs: Dict[str, str], *names: str) -> Callable[[str], None]:
    def setup(d: str) -> None:
        for name in names:
            shutil.copy(inputs[name], os.path.join(d, name))
    return setup


def patched(src: str, dst: str, patches=(), truncate=None, extra: Callable[[str], None] = None):
    """Copy ``src`` to ``dst`` with bytes overwritten (``(offset, fmt, value)``
    or ``(offset, bytes)``) and/or cut at ``truncate``."""

    def setup(d: str) -> None:
        data = bytearray(open(src, "rb").read())
        for p in patches:
            if len(p) == 2:
                off, raw = p
                data[off : off + len(raw)] = raw
            else:
                off, fmt, value = p
                struct.pack_into(fmt, data, off, value)
        if truncate is not None:
            del data[truncate:]
        with open(os.path.join(d, dst), "wb") as f:
            f.write(data)
        if extra:
            extra(d)
    return setup


def both(*setups: Callable[[str], None]) -> Callable[[str], None]:
    def setup(d: str) -> None:
        for s in setups:
            s(d)
    return setup


# -- families ------------------------------------------------------------------------


def elf_cases(inputs) -> List[Case]:
    src = inputs["good.core"]
    size = os.path.getsize(src)
    data = open(src, "rb").read()
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phnum = struct.unpack_from("<H", data, 56)[0]
    note_off = struct.unpack_from("<Q", data, phoff + 8)[0]
    load1 = phoff + 56  # the first PT_LOAD
    out = []

    def case(name, patches=(), truncate=None, args=("walk",)):
        out.append(Case("elf", name, [*args, "-c", "d.core"], patched(src, "d.core", patches, truncate)))

    for cut in (0, 1, 4, 16, 52, 63, 64, 100, phoff + 56 * phnum - 1, note_off + 20, 4096, size // 2, size - 1):
        case(f"truncated-at-{cut}", truncate=cut)
    case("class-elf32", [(4, b"\x01")])
    case("big-endian", [(5, b"\x02")])
    case("not-core", [(16, "<H", 2)])
    case("x86-64", [(18, "<H", 62)])
    case("phoff-huge", [(32, "<Q", 1 << 62)])
    case("phoff-past-end", [(32, "<Q", size + 4096)])
    case("phoff-zero", [(32, "<Q", 0)])
    case("phnum-zero", [(56, "<H", 0)])
    case("phnum-xnum-no-sections", [(56, "<H", 0xFFFF), (40, "<Q", 1 << 40)])
    case("phnum-huge", [(56, "<H", 60000)])
    case("phentsize-zero", [(54, "<H", 0)])
    case("note-offset-huge", [(phoff + 8, "<Q", 1 << 60)])
    case("note-filesz-huge", [(phoff + 32, "<Q", 1 << 40)])
    case("note-filesz-zero", [(phoff + 32, "<Q", 0)])
    case("note-namesz-huge", [(note_off, "<I", 0xFFFFFFF0)])
    case("note-descsz-huge", [(note_off + 4, "<I", 0xFFFFFFF0)])
    case("note-not-vmcoreinfo", [(note_off + 12, b"XMCOREINFO")])
    case("load-offset-past-end", [(load1 + 8, "<Q", size * 4)])
    case("load-filesz-huge", [(load1 + 32, "<Q", 1 << 44)])
    case("load-memsz-huge", [(load1 + 40, "<Q", 1 << 50), (load1 + 32, "<Q", 1 << 50)])
    case("load-paddr-top", [(load1 + 24, "<Q", U64 - 4095)])
    # Headers that are well formed but leave the memory out: the walk sees
    # nothing and must say so (exit 1), or refuse the file (exit 2).
    for name, patches in (("all-loads-paddr-zero", [(load1 + 56 * i + 24, "<Q", 0) for i in range(phnum - 1)]),
                          ("load-type-none", [(load1 + 56 * i, "<I", 0) for i in range(phnum - 1)])):
        out.append(Case("elf", name, ["walk", "-c", "d.core"], patched(src, "d.core", patches), expect=(1, 2),
                        stdout_ok=True))
    case("truncated-audit", truncate=size // 2, args=("audit",))
    case("truncated-classify", truncate=size - 4096, args=("classify",))
    case("phnum-huge-classify", [(56, "<H", 60000)], args=("classify",))
    # The bundled sample is a bundle: its MMINSPECT note, damaged.
    sample = inputs["sample.core"]
    head = open(sample, "rb").read(1 << 16)
    note = head.find(b'{"constant": ')
    for name, find, put, cmd in (("bundle-note-not-json", b'{"constant": ', b'X"constant": ', "walk"),
                                 ("bundle-schema-other", b'"mminspect.bundle/1"', b'"mminspect.bundle/7"', "walk"),
                                 ("bundle-answer-text", b'"PG_reserved": 12', b'"PG_reserved":"1"', "classify"),
                                 ("bundle-note-cut", b'"roots": [', b'"roots": \0', "walk")):
        at = head.find(find, max(note, 0))
        if at >= 0:
            out.append(Case("elf", name, [cmd, "-c", "d.core"], patched(sample, "d.core", [(at, put)])))
    return out


def _flattened(src: str) -> bytes:
    """makedumpfile's flattened form of a kdump file: a 4 KiB header, then
    (offset, size) big-endian records with data, ended by offset -1."""
    data = open(src, "rb").read()
    head = bytearray(4096)
    head[:13] = b"makedumpfile\0"
    struct.pack_into(">qq", head, 16, 1, 1)
    out = bytearray(head)
    for off in range(0, len(data), BLOCK):
        chunk = data[off : off + BLOCK]
        out += struct.pack(">qq", off, len(chunk)) + chunk
    out += struct.pack(">qq", -1, -1)
    return bytes(out)


def kdump_cases(inputs, base: str) -> List[Case]:
    src = inputs["good.kdump"]
    size = os.path.getsize(src)
    data = open(src, "rb").read()
    bitmap_blocks = struct.unpack_from("<I", data, 436)[0]
    desc_off = (2 + bitmap_blocks) * BLOCK
    out = []

    def case(name, patches=(), truncate=None, file=src):
        out.append(Case("kdump", name, ["walk", "-c", "d.kdump"], patched(file, "d.kdump", patches, truncate)))

    for cut in (8, 300, 464, BLOCK + 50, 2 * BLOCK + 10, desc_off + 30, size // 2, size - 10):
        case(f"truncated-at-{cut}", truncate=cut)
    case("block-size-zero", [(428, "<i", 0)])
    case("block-size-odd", [(428, "<i", 12345)])
    case("block-size-1g", [(428, "<i", 1 << 30)])
    case("block-size-negative", [(428, "<i", -65536)])
    case("sub-hdr-huge", [(432, "<i", 1 << 30)])
    case("sub-hdr-negative", [(432, "<i", -5)])
    case("bitmap-blocks-huge", [(436, "<I", 0xFFFFFFF0)])
    case("bitmap-blocks-zero", [(436, "<I", 0)])
    case("max-mapnr-huge", [(BLOCK + 96, "<Q", 1 << 60)])
    case("vmcoreinfo-offset-huge", [(BLOCK + 32, "<q", 1 << 60)])
    case("vmcoreinfo-offset-negative", [(BLOCK + 32, "<q", -100)])
    case("vmcoreinfo-size-huge", [(BLOCK + 40, "<Q", 1 << 40)])
    case("vmcoreinfo-size-zero", [(BLOCK + 40, "<Q", 0)])
    case("desc-offset-past-end", [(desc_off + 24 * 3, "<q", size * 8)])
    case("desc-offset-negative", [(desc_off + 24 * 3, "<q", -4096)])
    case("desc-size-huge", [(desc_off + 24 * 3, "<q", desc_off), (desc_off + 24 * 3 + 8, "<I", 0xFFFFFFF0)])
    case("desc-lzo", [(desc_off + 24 * i + 12, "<I", 2) for i in range(4)])
    case("zlib-garbage", [(desc_off + 24 * 3 + 8, "<I", 4096), (size - 4096, b"\x78\x9c" + b"\xff" * 64)])
    case("every-desc-garbage", [(desc_off, b"\xff" * 24 * 16)])
    flat = os.path.join(base, "good.flat")
    if not os.path.exists(flat):
        with open(flat, "wb") as f:
            f.write(_flattened(src))
    fsize = os.path.getsize(flat)
    case("flat-truncated", truncate=fsize - 100, file=flat)
    case("flat-no-end-marker", truncate=fsize - 16, file=flat)
    case("flat-record-size-huge", [(4096 + 8, ">q", 1 << 62)], file=flat)
    case("flat-record-size-negative", [(4096 + 8, ">q", -2)], file=flat)
    case("flat-record-offset-huge", [(4096, ">q", 1 << 62)], file=flat)
    return out


def vmcoreinfo_cases(inputs, base: str) -> List[Case]:
    info = dict(line.split("=", 1) for line in inputs["good.vmcoreinfo"].splitlines() if "=" in line)
    swapper = int(info["SYMBOL(swapper_pg_dir)"], 16)
    lies = {
        "pagesize-64k-on-4k": {"PAGESIZE": "65536"},
        "pagesize-16k-on-4k": {"PAGESIZE": "16384"},
        "pagesize-8k": {"PAGESIZE": "8192"},
        "pagesize-zero": {"PAGESIZE": "0"},
        "pagesize-negative": {"PAGESIZE": "-4096"},
        "pagesize-text": {"PAGESIZE": "four"},
        "pagesize-huge": {"PAGESIZE": str(1 << 40)},
        "va-bits-47-on-4k": {"NUMBER(VA_BITS)": "47"},
        "va-bits-64": {"NUMBER(VA_BITS)": "64"},
        "va-bits-zero": {"NUMBER(VA_BITS)": "0"},
        "va-bits-text": {"NUMBER(VA_BITS)": "x"},
        "t1sz-zero": {"NUMBER(TCR_EL1_T1SZ)": "0x0"},
        "t1sz-39-on-48": {"NUMBER(TCR_EL1_T1SZ)": "0x19"},
        "t1sz-text": {"NUMBER(TCR_EL1_T1SZ)": "0xzz"},
        "physmem-bits-64": {"NUMBER(MAX_PHYSMEM_BITS)": "64"},
        "physmem-bits-30": {"NUMBER(MAX_PHYSMEM_BITS)": "30"},
        "physmem-bits-52-on-4k48": {"NUMBER(MAX_PHYSMEM_BITS)": "52"},
        "section-bits-2": {"NUMBER(SECTION_SIZE_BITS)": "2"},
        "section-bits-63": {"NUMBER(SECTION_SIZE_BITS)": "63"},
        "section-bits-29-on-4k": {"NUMBER(SECTION_SIZE_BITS)": "29"},
        "kimage-voffset-zero": {"NUMBER(kimage_voffset)": "0x0"},
        "kimage-voffset-text": {"NUMBER(kimage_voffset)": "0xnope"},
        "phys-offset-unaligned": {"NUMBER(PHYS_OFFSET)": "0x40000123"},
        "phys-offset-huge": {"NUMBER(PHYS_OFFSET)": "0x7fffffffffff0000"},
        "swapper-unaligned": {"SYMBOL(swapper_pg_dir)": f"{swapper + 8:x}"},
        "swapper-user-address": {"SYMBOL(swapper_pg_dir)": "400000"},
        "vmemmap-inverted": {"NUMBER(VMEMMAP_START)": "0xffffffffc0000000",
                             "NUMBER(VMEMMAP_END)": "0xfffffdffc0000000"},
    }
    omits = {
        "no-pagesize": ("PAGESIZE",),
        "no-va-bits-nor-t1sz": ("NUMBER(VA_BITS)", "NUMBER(TCR_EL1_T1SZ)"),
        "no-kimage-voffset": ("NUMBER(kimage_voffset)",),
        "no-swapper": ("SYMBOL(swapper_pg_dir)",),
        "no-osrelease": ("OSRELEASE",),
    }
    out = []
    for name, extra in lies.items():
        path = os.path.join(base, f"lie-{name}.core")
        if not os.path.exists(path):
            lying_core(base, os.path.basename(path), extra)
        out.append(Case("vmcoreinfo", name, ["walk", "-c", "d.core"], _copy_as(path, "d.core")))
    for name, omit in omits.items():
        path = os.path.join(base, f"omit-{name}.core")
        if not os.path.exists(path):
            lying_core(base, os.path.basename(path), {}, omit)
        out.append(Case("vmcoreinfo", name, ["walk", "-c", "d.core"], _copy_as(path, "d.core")))
    # The bundled sample (sections, blocks) with SECTION_SIZE_BITS=2: the
    # simulation once grew to 1.6 GB on it.
    sample = open(inputs["sample.core"], "rb").read(1 << 16)
    at = sample.find(b"NUMBER(SECTION_SIZE_BITS)=27")
    if at >= 0:
        p = at + len("NUMBER(SECTION_SIZE_BITS)=")
        for bits, cmd in ((b" 2", ["simulate-remove", "--block", "16", "--force"]),
                          (b" 2", ["snapshot", "-o", "s.npz"]), (b"99", ["audit"]),
                          (b" 2", ["classify"])):
            out.append(Case("vmcoreinfo", f"sample-section-bits-{bits.strip().decode()}-{cmd[0]}",
                            [*cmd, "-c", "d.core"], patched(inputs["sample.core"], "d.core", [(p, bits)])))
    return out


def _copy_as(src: str, name: str) -> Callable[[str], None]:
    def setup(d: str) -> None:
        shutil.copy(src, os.path.join(d, name))
    return setup


def _special(kind: str, name: str) -> Callable[[str], None]:
    """A FIFO, socket, directory, device link or link to a FIFO at ``name``."""

    def setup(d: str) -> None:
        p = os.path.join(d, name)
        if kind == "fifo":
            os.mkfifo(p)
        elif kind == "socket":
            s = socket.socket(socket.AF_UNIX)
            s.bind(p)
            s.close()
        elif kind == "dir":
            os.mkdir(p)
        elif kind == "zero":
            os.symlink("/dev/zero", p)
        elif kind == "null":
            os.symlink("/dev/null", p)
        elif kind == "chardev":  # a real device node (/dev/null's numbers) where root may make one
            try:
                os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            except (OSError, AttributeError):
                os.symlink("/dev/null", p)
        elif kind == "link-to-fifo":
            os.mkfifo(p + ".fifo")
            os.symlink(os.path.basename(p) + ".fifo", p)
    return setup


def files_cases(inputs) -> List[Case]:
    out = []
    for kind in ("fifo", "socket", "dir", "zero", "null", "link-to-fifo", "chardev"):
        out.append(Case("files", f"core-{kind}", ["walk", "-c", "x"], _special(kind, "x")))
        out.append(Case("files", f"vmlinux-{kind}", ["walk", "-c", "good.core", "-s", "x"],
                        both(copy(inputs, "good.core"), _special(kind, "x"))))
        out.append(Case("files", f"snapshot-{kind}", ["simulate-remove", "--snapshot", "x", "--block", "16"],
                        _special(kind, "x")))
        out.append(Case("files", f"plugin-{kind}", ["simulate-remove", "--plugin", "x", "--list-policies"],
                        _special(kind, "x")))
    for kind in ("fifo", "dir", "zero"):
        out.append(Case("files", f"diff-{kind}", ["diff", "x", "sample.core"],
                        both(copy(inputs, "sample.core"), _special(kind, "x"))))
        out.append(Case("files", f"identify-from-{kind}", ["identify", "-c", "sample.core", "--from", "x"],
                        both(copy(inputs, "sample.core"), _special(kind, "x"))))
    out.append(Case("files", "core-missing", ["walk", "-c", "nothing"], lambda d: None))
    out.append(Case("files", "core-under-a-file", ["walk", "-c", "good.core/x"], copy(inputs, "good.core")))
    return out


def qmp_cases(inputs) -> List[Case]:
    out = []
    env = {"MMINSPECT_TIMEOUT": "1"}
    for b in BEHAVIOURS:
        if b.startswith("dimm-"):
            args = ["simulate-remove", "-c", "sample.core", "--qemu", "qmp.sock", "--dimm", "dimm0"]
            out.append(Case("qmp", b, args, copy(inputs, "sample.core"), qmp=b, env=env, timeout=12))
            continue
        out.append(Case("qmp", f"walk-{b}", ["walk", "--qemu", "qmp.sock"], lambda d: None, qmp=b, env=env,
                        timeout=12))
        if b in ("stall", "flood", "greet-stall", "events", "flood-lines"):
            args = ["simulate-remove", "-c", "sample.core", "--qemu", "qmp.sock", "--dimm", "dimm0"]
            out.append(Case("qmp", f"dimm-{b}", args, copy(inputs, "sample.core"), qmp=b, env=env, timeout=12))
    out.append(Case("qmp", "not-a-socket", ["walk", "--qemu", "good.core"], copy(inputs, "good.core")))
    out.append(Case("qmp", "fifo", ["walk", "--qemu", "x"], _special("fifo", "x")))
    out.append(Case("qmp", "refused", ["walk", "--qemu", "x"], _special("socket", "x")))
    return out


def _bomb(path: str, inflated: int) -> None:
    """A .npz whose header member really inflates to ``inflated`` bytes of
    zeros (a zip bomb: a few MB on disk). Hand-written zip (no CRC: a reader
    that inflates it all finds out too late)."""
    hdr = b"\x93NUMPY\x01\x00"
    dic = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({inflated},), }}".encode()
    dic += b" " * (-(len(hdr) + 2 + len(dic) + 1) % 64) + b"\n"
    npy_head = hdr + struct.pack("<H", len(dic)) + dic
    chunk = bytes(16 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    body = bytearray(co.compress(npy_head) + co.flush(zlib.Z_FULL_FLUSH))
    body += piece * (inflated // len(chunk))
    body += co.flush(zlib.Z_FINISH)
    size = len(npy_head) + (inflated // len(chunk)) * len(chunk)
    name = b"header.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, len(body), size, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, 0, len(body), size,
                          len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(body), 0)
    with open(path, "wb") as f:
        f.write(local + body + central + end)


def _npz(good: str, name: str, change: Callable) -> Callable[[str], None]:
    """A copy of snapshot ``good`` with ``change(header, arrays)`` applied."""
    import json

    def setup(d: str) -> None:
        with np.load(good) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(bytes(arrays.pop("header")).decode())
        result = change(header, arrays)
        if isinstance(result, tuple) and len(result) == 2:
            header, arrays = result
        raw = header if isinstance(header, bytes) else json.dumps(header).encode()
        with open(os.path.join(d, name), "wb") as f:
            np.savez(f, header=np.frombuffer(raw, dtype=np.uint8), **arrays)
    return setup


def snapshot_cases(inputs, base: str) -> List[Case]:
    good = inputs["good.npz"]
    bomb = os.path.join(base, "bomb.npz")
    if not os.path.exists(bomb):
        _bomb(bomb, 1536 << 20)
    sim = ["simulate-remove", "--snapshot", "s.npz", "--block", "16", "--force"]
    out = [Case("snapshot", "header-inflates-to-1.5g", sim, _copy_as(bomb, "s.npz"), timeout=30)]

    def case(name, change):
        out.append(Case("snapshot", name, sim, _npz(good, "s.npz", change)))

    def setk(path, value):
        def change(h, a):
            node = h
            for k in path[:-1]:
                node = node[k]
            if value is KeyError:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        return change

    case("schema-other", setk(["schema"], "mminspect.snapshot/99"))
    case("header-not-object", lambda h, a: (b"[1, 2, 3]", a))
    case("header-not-json", lambda h, a: (b"\xff\xfe{nope", a))
    case("no-kernel", setk(["kernel"], KeyError))
    case("no-tables", setk(["tables"], KeyError))
    case("tables-not-list", setk(["tables"], {"a": 1}))
    case("section-size-4", setk(["kernel", "section_size"], 4))
    case("section-size-zero", setk(["kernel", "section_size"], 0))
    case("section-size-text", setk(["kernel", "section_size"], "big"))
    case("block-size-zero", setk(["kernel", "block_size"], 0))
    case("block-size-negative", setk(["kernel", "block_size"], -(1 << 27)))
    case("page-size-3", setk(["kernel", "regime", "page_size"], 3))
    case("va-bits-200", setk(["kernel", "regime", "va_bits"], 200))
    case("struct-page-zero", setk(["kernel", "struct_page_size"], 0))
    case("era-unknown-key", setk(["era", "rm_rf"], True))
    case("table-unknown-key", lambda h, a: h["tables"][0].update(surprise=1))
    case("table-missing-phys", lambda h, a: h["tables"][0].pop("phys"))
    case("table-phys-negative", lambda h, a: h["tables"][0].update(phys=-(1 << 40)))
    case("table-parents-junk", lambda h, a: h["tables"][0].update(parents="root"))
    case("block-unknown-key", lambda h, a: h["blocks"][0].update(surprise=1))
    case("section-wrong-size", lambda h, a: h["sections"][0].update(size=12345))
    case("ulen-huge", lambda h, a: (h, {**a, "ulen": np.full(len(a["ulen"]), 1 << 40, dtype=np.int64)}))
    case("lengths-mismatch", lambda h, a: (h, {**a, "lengths": a["lengths"][:-1]}))
    case("lengths-huge", lambda h, a: (h, {**a, "lengths": np.full(len(a["lengths"]), 1 << 40, np.int64)}))
    case("entries-object", lambda h, a: (h, {**a, "entries": np.array([{"x": 1}], dtype=object)}))
    case("missing-array", lambda h, a: (h, {k: v for k, v in a.items() if k != "uphys"}))
    case("array-2d", lambda h, a: (h, {**a, "phys": a["phys"].reshape(1, -1)}))
    out.append(Case("snapshot", "not-a-zip", sim, lambda d: open(os.path.join(d, "s.npz"), "wb").write(b"PK" * 99)))
    out.append(Case("snapshot", "truncated", sim, patched(good, "s.npz", truncate=os.path.getsize(good) // 2)))
    out.append(Case("snapshot", "empty", sim, patched(good, "s.npz", truncate=0)))
    return out


PLUGINS = {
    "syntax-error": "def register(:\n",
    "raises": "def register():\n    raise RuntimeError('plugin broke')\n",
    "raises-at-import": "import no_such_module_anywhere\n",
    "sys-exit": "import sys\nsys.exit(0)\n",
    "no-register": "x = 1\n",
    "register-not-callable": "register = 5\n",
    "returns-junk": "def register():\n    return [42, 'x']\n",
    "returns-class-without-name": "from mminspect.hotremove.policy import Policy\n"
                                  "class P(Policy):\n    name = ''\ndef register():\n    return P\n",
    "binary": b"\x7fELF\x00\x00\xff\xfe",
    "keyboard-interrupt": "raise KeyboardInterrupt\n",
}


def plugin_cases(inputs) -> List[Case]:
    out = []
    for name, text in PLUGINS.items():
        raw = text if isinstance(text, bytes) else text.encode()

        def setup(d, raw=raw):
            with open(os.path.join(d, "p.py"), "wb") as f:
                f.write(raw)
        # A KeyboardInterrupt raised by a plugin looks like the user's Ctrl-C.
        expect = (2, 130) if name == "keyboard-interrupt" else (2,)
        out.append(Case("plugin", name, ["simulate-remove", "--plugin", "p.py", "--list-policies"], setup,
                        expect=expect))
    out.append(Case("plugin", "not-python-suffix", ["simulate-remove", "--plugin", "p.txt", "--list-policies"],
                    lambda d: open(os.path.join(d, "p.txt"), "w").write("def register():\n    return []\n")))
    return out


def output_cases(inputs) -> List[Case]:
    out = []

    def aliases(d: str) -> None:
        shutil.copy(inputs["sample.core"], os.path.join(d, "sample.core"))
        os.mkdir(os.path.join(d, "a"))
        os.symlink("sample.core", os.path.join(d, "link.core"))
        os.link(os.path.join(d, "sample.core"), os.path.join(d, "hard.core"))

    for cmd in ("capture", "snapshot"):
        for force in ((), ("--force",)):
            f = "-force" if force else ""
            for label, path in (("same", "sample.core"), ("dot", "./sample.core"), ("dotdot", "a/../sample.core"),
                                ("slashes", ".//sample.core"), ("symlink", "link.core"), ("hardlink", "hard.core")):
                out.append(Case("output", f"{cmd}-{label}{f}", [cmd, "-c", "sample.core", "-o", path, *force],
                                aliases))
        out.append(Case("output", f"{cmd}-vmlinux-alias", [cmd, "-c", "good.core", "-s", "v", "-o", "v", "--force"],
                        both(copy(inputs, "good.core"), lambda d: open(os.path.join(d, "v"), "w").write("elf"))))
        for kind in ("fifo", "dir", "null", "socket", "chardev"):
            out.append(Case("output", f"{cmd}-onto-{kind}-force", [cmd, "-c", "sample.core", "-o", "x", "--force"],
                            both(copy(inputs, "sample.core"), _special(kind, "x"))))
        out.append(Case("output", f"{cmd}-symlink-elsewhere-force",
                        [cmd, "-c", "sample.core", "-o", "x", "--force"],
                        both(copy(inputs, "sample.core"), lambda d: os.symlink("/etc/hostname", os.path.join(d, "x")))))
        out.append(Case("output", f"{cmd}-exists", [cmd, "-c", "sample.core", "-o", "mine"],
                        both(copy(inputs, "sample.core"), lambda d: open(os.path.join(d, "mine"), "w").write("x"))))
        out.append(Case("output", f"{cmd}-missing-dir", [cmd, "-c", "sample.core", "-o", "no/such/dir/x"],
                        copy(inputs, "sample.core")))
    for label, path, force in (("same", "sample.core", ()), ("hardlink-force", "hard.core", ("--force",)),
                               ("symlink-force", "link.core", ("--force",)), ("dotdot-force", "a/../sample.core",
                                                                              ("--force",))):
        out.append(Case("output", f"map-{label}", ["map", "-c", "sample.core", "-o", path, *force], aliases))
    for kind in ("null", "dir", "fifo"):
        out.append(Case("output", f"map-onto-{kind}-force", ["map", "-c", "sample.core", "-o", "x", "--force"],
                        both(copy(inputs, "sample.core"), _special(kind, "x"))))
    out.append(Case("output", "capture-users-own-tmp", ["capture", "-c", "sample.core", "-o", "ev.core"],
                    both(copy(inputs, "sample.core"), lambda d: open(os.path.join(d, "ev.core.tmp"), "w").write("mine")),
                    expect=(0,), may_create=("ev.core",)))
    out.append(Case("output", "snapshot-users-own-tmp", ["snapshot", "-c", "sample.core", "-o", "s.npz"],
                    both(copy(inputs, "sample.core"), lambda d: open(os.path.join(d, "s.npz.tmp"), "w").write("mine")),
                    expect=(0,), may_create=("s.npz",)))
    return out


def interrupt_cases(inputs) -> List[Case]:
    out = []
    for cmd, name in (("capture", "ev.core"), ("snapshot", "s.npz"), ("map", "m.html")):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # Timed signals start after the forked child signalled it is about
            # to call main(): a signal before mminspect installs its handlers
            # (Python still starting) ends it by the default action.
            for when in ("write", 0.15, 0.4, 0.8):
                out.append(Case("interrupt", f"{cmd}-{sig.name}-{when}", [cmd, "-c", "sample.core", "-o", name],
                                copy(inputs, "sample.core"), expect=(128 + sig, 0), may_create=(name,),
                                interrupt=(sig, when)))
    return out


def tables_cases(inputs) -> List[Case]:
    out = []
    for fmt in ("table", "json", "ptdump"):
        out.append(Case("tables", f"walk-{fmt}", ["walk", "-c", "odd.core", "--format", fmt],
                        copy(inputs, "odd.core"), expect=(1,), stdout_ok=True, words=("could not be seen",)))
        for kind, (lo, hi) in inputs.get("anomalies", {}).items():
            out.append(Case("tables", f"walk-{fmt}-{kind}",
                            ["walk", "-c", "odd.core", "--format", fmt, "--range", f"{lo:x}-{hi:x}"],
                            copy(inputs, "odd.core"), expect=(1,), stdout_ok=True, words=("could not be seen",)))
    for fmt in ("table", "json"):
        out.append(Case("tables", f"classify-{fmt}", ["classify", "-c", "odd.core", "--format", fmt],
                        copy(inputs, "odd.core"), expect=(1,), stdout_ok=True, words=("could not be seen",)))
    out.append(Case("tables", "classify-summary", ["classify", "-c", "odd.core", "--summary"],
                    copy(inputs, "odd.core"), expect=(1,), stdout_ok=True, words=("could not be seen",)))
    out.append(Case("tables", "walk-clean-ptdump", ["walk", "-c", "good.core", "--format", "ptdump"],
                    copy(inputs, "good.core"), expect=(0,), stdout_ok=True))
    return out


def args_cases(inputs) -> List[Case]:
    sim = ["simulate-remove", "-c", "sample.core"]
    walk = ["walk", "-c", "sample.core"]
    s = copy(inputs, "sample.core")
    rows = [
        ("policy-option-maybe", [*sim, "--block", "16", "--policy", "v6.16", "--policy-option", "dtor_fix=maybe"]),
        ("policy-option-unknown-key", [*sim, "--block", "16", "--policy-option", "colour=blue"]),
        ("policy-option-no-value", [*sim, "--block", "16", "--policy-option", "dtor_fix"]),
        ("policy-option-empty-key", [*sim, "--block", "16", "--policy-option", "=yes"]),
        ("policy-unknown", [*sim, "--block", "16", "--policy", "v9.99"]),
        ("block-negative", [*sim, "--block=-1", "--force"]),
        ("block-negative-range", [*sim, "--block=-3..-1", "--force"]),
        ("block-reversed", [*sim, "--block", "5..3"]),
        ("block-huge", [*sim, "--block", str(1 << 70), "--force"]),
        ("block-text", [*sim, "--block", "sixteen"]),
        ("range-wraps", [*sim, "--range", "ffffffffffff0000+1G", "--force"]),
        ("range-negative-size", [*sim, "--range", "80000000+-1G"]),
        ("range-empty", [*sim, "--range", "80000000+0"]),
        ("range-text", [*sim, "--range", "lots"]),
        ("range-beyond-pa", [*sim, "--range", "fff0000000000000+1G", "--force"]),
        ("dimm-without-qemu", [*sim, "--dimm", "dimm0"]),
        ("two-selections", [*sim, "--block", "16", "--range", "80000000+128M"]),
        ("pgd-misaligned", [*walk, "--mm", "pgd:40246008"]),
        ("pgd-outside-ram", [*walk, "--mm", "pgd:7fff00000000"]),
        ("pgd-zero", [*walk, "--mm", "pgd:0"]),
        ("pgd-negative", [*walk, "--mm", "pgd:-1000"]),
        ("pgd-beyond-u64", [*walk, "--mm", "pgd:1" + "0" * 20]),
        ("walk-range-wraps", [*walk, "--range", "ffffffffffffff00+1M"]),
        ("walk-range-negative", [*walk, "--range", "-1000-2000"]),
        ("root-unknown", [*walk, "--mm", "kernel_mm"]),
        ("pid-negative", [*walk, "--mm", "pid-1"]),
        ("timeout-zero", [*walk, "--timeout", "0"]),
        ("timeout-negative", [*walk, "--timeout", "-5"]),
        ("timeout-nan", [*walk, "--timeout", "nan"]),
    ]
    return [Case("args", name, args, s) for name, args in rows]


def all_cases(inputs: Dict[str, object], base: str) -> List[Case]:
    """Every hostile case (see the module docstring); ``base`` caches the
    inputs the families derive (lying kernels, the bomb)."""
    return [
        *elf_cases(inputs),
        *kdump_cases(inputs, base),
        *vmcoreinfo_cases(inputs, base),
        *files_cases(inputs),
        *qmp_cases(inputs),
        *snapshot_cases(inputs, base),
        *plugin_cases(inputs),
        *output_cases(inputs),
        *interrupt_cases(inputs),
        *tables_cases(inputs),
        *args_cases(inputs),
    ]
