"""Write a :class:`~.builder.BuiltKernel` as an ELF64 ``ET_CORE`` vmcore for aarch64.

Layout: ELF header, program headers (one ``PT_NOTE`` with the ``VMCOREINFO`` note,
then ``PT_LOAD`` segments with ``p_paddr`` = PA and ``p_vaddr`` = linear-map VA),
the note, then page data at page-aligned offsets.  Only pages that hold something
are written (table pages, slab pgd pages, pages filled with data); runs of present
pages separated by small all-zero gaps inside one RAM bank share a segment and the
gap is left as a hole of a sparse file.  Tables left out of the dump are either not
covered by any segment (``"absent"``) or covered by ``p_memsz`` beyond ``p_filesz``
(``"zero"``), like makedumpfile's excluded pages.

Lazily generated PTE tables (:meth:`~.builder.Builder.map_uniform`) are produced in
chunks with numpy while streaming, so memory use stays flat for big linear maps.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .builder import BuiltKernel
from .regime import U64

EM_AARCH64 = 183
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
PF_R, PF_W, PF_X = 4, 2, 1
PN_XNUM = 0xFFFF

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")


def _s64(x: int) -> int:
    x &= U64
    return x - (1 << 64) if x >> 63 else x


def vmcoreinfo_text(built: BuiltKernel, *, extra: dict[str, str] | None = None,
                    omit: tuple[str, ...] = ()) -> str:
    """VMCOREINFO as the arm64 kernel writes it (6.12 formats).

    ``extra`` adds or overrides keys; ``omit`` drops keys (to test readers without
    e.g. ``NUMBER(TCR_EL1_T1SZ)``, which kernels before 5.9 lack).
    """
    r = built.regime
    items: list[tuple[str, str]] = [
        ("OSRELEASE", built.osrelease),
        ("PAGESIZE", str(r.page_size)),
        ("SYMBOL(swapper_pg_dir)", f"{built.swapper_pg_dir:x}"),
        ("SYMBOL(_stext)", f"{built.kimage_va:x}"),
        ("NUMBER(SECTION_SIZE_BITS)", str(29 if r.page_size == 1 << 16 else 27)),
        ("NUMBER(MAX_PHYSMEM_BITS)", str(r.pa_bits_config)),
        ("NUMBER(VA_BITS)", str(r.va_bits)),
        ("NUMBER(MODULES_VADDR)", f"0x{r.modules_vaddr:x}"),
        ("NUMBER(MODULES_END)", f"0x{r.modules_end:x}"),
        ("NUMBER(VMALLOC_START)", f"0x{r.vmalloc_start:x}"),
        ("NUMBER(VMALLOC_END)", f"0x{r.vmalloc_end:x}"),
        ("NUMBER(VMEMMAP_START)", f"0x{r.vmemmap_start:x}"),
        ("NUMBER(VMEMMAP_END)", f"0x{r.vmemmap_end:x}"),
        ("NUMBER(kimage_voffset)", f"0x{built.kimage_voffset & U64:x}"),
        ("NUMBER(PHYS_OFFSET)", f"0x{built.phys_offset & U64:x}"),
        ("NUMBER(TCR_EL1_T1SZ)", f"0x{r.tcr_t1sz:x}"),
        ("KERNELOFFSET", f"{built.kaslr_offset:x}"),
        ("NUMBER(KERNELPACMASK)", "0x0"),
    ]
    for name, va in sorted(built.symbols.items()):
        if name != "swapper_pg_dir":
            items.append((f"SYMBOL({name})", f"{va:x}"))
    d = dict(items)
    for k in omit:
        d.pop(k, None)
    if extra:
        d.update(extra)
    return "".join(f"{k}={v}\n" for k, v in d.items())


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


@dataclass(frozen=True)
class Segment:
    paddr: int
    filesz: int
    memsz: int
    offset: int = 0


@dataclass(frozen=True)
class VmcoreFile:
    path: str
    segments: tuple[Segment, ...]
    file_size: int
    vmcoreinfo: str


def _present_runs(built: BuiltKernel) -> list[tuple[int, int]]:
    """Sorted, merged [start, end) PA runs of pages that hold something."""
    b = built._b
    ps = b.page
    pages = np.fromiter(b._pages.keys(), dtype=np.uint64, count=len(b._pages))
    runs: list[tuple[int, int]] = []
    if len(pages):
        pages.sort()
        brk = np.nonzero(np.diff(pages) != ps)[0]
        starts = np.concatenate(([0], brk + 1))
        ends = np.concatenate((brk, [len(pages) - 1]))
        runs.extend((int(pages[s]), int(pages[e]) + ps) for s, e in zip(starts, ends))
    for e in b._extents:
        runs.append((e.table_pa0, e.table_pa0 + e.n_tables * ps))
    runs.sort()
    merged: list[tuple[int, int]] = []
    for s, e in runs:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def plan_segments(built: BuiltKernel, *, merge_gap: int | None = None,
                  full_ram: bool = False, include=()) -> list[Segment]:
    """Segments (without file offsets) for the dump; ``include`` lists extra
    ``(start, end)`` PA ranges to cover even where they hold only zeros."""
    b = built._b
    ps = b.page
    if merge_gap is None:
        merge_gap = max(16 * ps, 64 << 10)
    if full_ram:
        runs = [(s, s + n) for s, n in built.ram]
    else:
        runs = _present_runs(built)
    if include:
        runs = sorted(list(runs) + [(int(s), int(e)) for s, e in include])
    # clip runs to RAM banks
    clipped: list[tuple[int, int]] = []
    for s, e in runs:
        for bs, bn in built.ram:
            lo, hi = max(s, bs), min(e, bs + bn)
            if lo < hi:
                clipped.append((lo, hi))
    # merge small gaps inside a bank
    bank_of = lambda pa: next(i for i, (bs, bn) in enumerate(built.ram) if bs <= pa < bs + bn)
    merged: list[tuple[int, int]] = []
    for s, e in sorted(clipped):
        if merged and s - merged[-1][1] <= merge_gap and bank_of(s) == bank_of(merged[-1][0]):
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    # cut at omitted pages
    omitted = sorted(built.omitted.items())
    segs: list[Segment] = []
    for s, e in merged:
        cur = s
        holes = [(pa, m) for pa, m in omitted if s <= pa < e]
        i = 0
        while i < len(holes):
            pa, mode = holes[i]
            if mode == "absent":
                if pa > cur:
                    segs.append(Segment(cur, pa - cur, pa - cur))
                cur = pa + ps
                i += 1
            else:
                # zero mode: run of consecutive zero-mode pages becomes memsz beyond filesz
                j = i
                end = pa + ps
                while j + 1 < len(holes) and holes[j + 1][0] == end and holes[j + 1][1] == "zero":
                    j += 1
                    end += ps
                segs.append(Segment(cur, pa - cur, end - cur))
                cur = end
                i = j + 1
        if cur < e:
            segs.append(Segment(cur, e - cur, e - cur))
    return [sg for sg in segs if sg.memsz > 0]


def write_vmcore(path: str | os.PathLike, built: BuiltKernel, *, full_ram: bool = False,
                 merge_gap: int | None = None, vmcoreinfo_extra: dict[str, str] | None = None,
                 vmcoreinfo_omit: tuple[str, ...] = (), chunk_tables: int = 256,
                 include=()) -> VmcoreFile:
    """Write ``built`` to ``path`` as an aarch64 ELF vmcore and return a summary.

    :param full_ram: one segment per RAM bank (a sparse file whose apparent size is the
        RAM size) instead of only the pages that hold something.
    :param merge_gap: largest all-zero gap (bytes) bridged inside one segment.
    :param vmcoreinfo_extra: keys to add or override in VMCOREINFO.
    :param vmcoreinfo_omit: keys to drop from VMCOREINFO.
    :param include: extra ``(start, end)`` PA ranges the dump covers even where they
        hold only zeros (written as sparse holes), e.g. a whole memmap.
    """
    b = built._b
    ps = b.page
    info = vmcoreinfo_text(built, extra=vmcoreinfo_extra, omit=vmcoreinfo_omit)
    note = _note(b"VMCOREINFO", 0, info.encode())
    segs = plan_segments(built, merge_gap=merge_gap, full_ram=full_ram, include=include)

    nph = 1 + len(segs)
    use_xnum = nph >= PN_XNUM
    ehsize = _EHDR.size
    phoff = ehsize
    note_off = phoff + nph * _PHDR.size
    shoff = 0
    hdr_end = note_off + len(note)
    if use_xnum:
        shoff = (hdr_end + 7) & ~7
        hdr_end = shoff + _SHDR.size
    data_off = (hdr_end + ps - 1) // ps * ps
    placed: list[Segment] = []
    off = data_off
    for sg in segs:
        placed.append(Segment(sg.paddr, sg.filesz, sg.memsz, off))
        off += (sg.filesz + ps - 1) // ps * ps
    file_size = max(off, data_off)

    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = _EHDR.pack(ident, ET_CORE, EM_AARCH64, 1, 0, phoff, shoff, 0, ehsize, _PHDR.size,
                      PN_XNUM if use_xnum else nph, _SHDR.size if use_xnum else 0,
                      1 if use_xnum else 0, 0)
    phdrs = [_PHDR.pack(PT_NOTE, 0, note_off, 0, 0, len(note), len(note), 4)]
    for sg in placed:
        phdrs.append(_PHDR.pack(PT_LOAD, PF_R | PF_W | PF_X, sg.offset, b.phys_to_virt(sg.paddr),
                                sg.paddr, sg.filesz, sg.memsz, ps))

    with open(path, "wb") as f:
        f.write(ehdr)
        f.write(b"".join(phdrs))
        f.write(note)
        if use_xnum:
            f.seek(shoff)
            f.write(_SHDR.pack(0, 0, 0, 0, 0, 0, 0, nph, 0, 0))
        starts = [sg.paddr for sg in placed]

        def file_pos(pa: int) -> int | None:
            import bisect
            i = bisect.bisect_right(starts, pa) - 1
            if i < 0:
                return None
            sg = placed[i]
            if pa + ps <= sg.paddr + sg.filesz:
                return sg.offset + (pa - sg.paddr)
            return None

        # lazily generated PTE tables, in chunks
        for e in b._extents:
            k = 0
            while k < e.n_tables:
                n = min(chunk_tables, e.n_tables - k)
                pa0 = e.table_pa0 + k * ps
                content = b._extent_pages(e, k, n)
                # write maximal sub-runs that are in one segment and not omitted
                j = 0
                while j < n:
                    pa = pa0 + j * ps
                    pos = file_pos(pa)
                    if pos is None:
                        j += 1
                        continue
                    j2 = j + 1
                    while j2 < n and file_pos(pa0 + j2 * ps) == pos + (j2 - j) * ps:
                        j2 += 1
                    f.seek(pos)
                    f.write(content[j:j2].tobytes())
                    j = j2
                k += n
        # explicit pages (override lazily generated content)
        for page_pa in sorted(b._pages):
            pos = file_pos(page_pa)
            if pos is None:
                continue
            arr = b._pages[page_pa]
            if not arr.any():
                continue
            f.seek(pos)
            f.write(arr.tobytes())
        f.truncate(file_size)
    return VmcoreFile(os.fspath(path), tuple(placed), file_size, info)
