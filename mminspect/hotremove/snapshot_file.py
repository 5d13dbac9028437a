"""
Reading a snapshot file without trusting it
-------------------------------------------

A snapshot (``.npz``: a zip of ``.npy`` arrays, one of them the JSON header)
may come from anyone: a bug report, a colleague, a damaged disk. Before any
of it is used, :func:`read_snapshot_file` checks

- the file is a regular file and a zip whose members are the ones a snapshot
  has, each inflating to at most :data:`MAX_RATIO` times its compressed size
  and :data:`MAX_MEMBER` bytes (a "zip bomb" header that inflates to 1.5 GB
  is refused before one byte is inflated);
- every array's ``.npy`` header (shape and dtype) agrees with its member's
  size, plain numbers only (no pickled objects);
- the JSON header has the snapshot schema: every key the simulation reads,
  of the right type, in a legal range (:func:`check_header`), and the entry
  arrays agree with each other (lengths, at most one table's entries each).

Each failure is one line naming the file and what is wrong. The format's
names live here too: the schema (:data:`SCHEMA`, :data:`COMPATIBLE`) and the
record of one table page the header carries (:class:`TableFacts`).
"""

import json
import zipfile
from dataclasses import MISSING, dataclass, field, fields
from typing import Dict, List, Optional, Tuple

import numpy as np

from mminspect.errors import MMInspectError
from mminspect.files import check_input
from mminspect.hotremove.policy import Era
from mminspect.mm.blocks import Block
from mminspect.sparse import Section
from mminspect.vmcoreinfo import SECTION_SIZE_BITS_RANGE, check_page_size

__all__ = ("COMPATIBLE", "MAX_MEMBER", "MAX_RATIO", "SCHEMA", "TableFacts", "check_header", "read_snapshot_file")

SCHEMA = "mminspect.snapshot/2"
#: Older schemas that still load. /1 lacks the removal path's era facts
#: (leaf_split_notifier, block_memmap, altmap_per_block, memmap_on_memory) and
#: the blocks' altmap_free: they load as None/0, so the checks that need them
#: say "unknown" instead of passing.
COMPATIBLE = ("mminspect.snapshot/1", SCHEMA)


@dataclass
class TableFacts:
    """One table page as the simulation sees it: of a classified table
    (:class:`~mminspect.classify.model.TableClass`, what it is and why) only
    the facts a removal needs, in the form the snapshot file saves."""

    phys: int
    level: int
    level_name: str
    va: int
    region: str
    parents: List[Tuple[int, int]]
    roots: List[str]
    origin: str = "unknown"
    ptlock: str = "unknown"
    #: The page carries the page-table type: its ctor ran (None: unknown).
    typed: Optional[bool] = None
    #: PG_reserved (memblock or kernel image; None: unknown).
    reserved: Optional[bool] = None
    #: Static table of the kernel image, by symbol (None when not one).
    image_symbol: Optional[str] = None
    #: The ptl is held (non-zero lock word).
    ptl_held: bool = False
    #: ALLOC_SPLIT_PTLOCKS pointer in page->ptl (0 when none or inline).
    ptl_pointer: int = 0
    evidence: List[str] = field(default_factory=list)


#: Arrays a snapshot holds besides ``header`` (see EntryStore.arrays()).
ARRAYS = ("phys", "lengths", "entries", "uphys", "ufirst", "ustep", "ulen")
#: Largest inflated member (the entries of a few million full tables).
MAX_MEMBER = 4 << 30
#: Largest inflated/compressed ratio, above what page tables reach (an
#: all-zero table deflates about 250 to 1; deflate's limit is about 1030).
MAX_RATIO = 400
#: Members smaller than this are not held to the ratio (headers of tiny files).
RATIO_FLOOR = 1 << 20
#: Largest JSON header, inflated.
MAX_HEADER = 1 << 30


def _bad(path: str, why: str) -> MMInspectError:
    return MMInspectError(f"{path}: not a usable mminspect snapshot ({why})")


def read_snapshot_file(path: str) -> Tuple[dict, Dict[str, np.ndarray]]:
    """The checked JSON header and arrays of the snapshot at ``path``.

    :raises MMInspectError: in one line, for anything that is not a whole,
        well-formed snapshot
    """
    check_input(path, "snapshot")
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            names = {n.removesuffix(".npy") for n in infos}
            missing = [n for n in ("header", *ARRAYS) if n not in names]
            if missing:
                raise _bad(path, f"no {', '.join(missing)} array")
            for name, info in infos.items():
                limit = MAX_HEADER if name == "header.npy" else MAX_MEMBER
                ratio_cap = max(RATIO_FLOOR, info.compress_size * MAX_RATIO)
                if info.file_size > limit or info.file_size > ratio_cap:
                    raise _bad(path, f"member {name} would inflate to {info.file_size} bytes from "
                                     f"{info.compress_size}; refusing it")
            arrays = {n: _read_array(z, infos[n + ".npy"], path) for n in ("header", *ARRAYS)}
    except zipfile.BadZipFile as e:
        raise _bad(path, f"not a zip archive: {e}") from None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:
        raise _bad(path, f"damaged: {e}") from None
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"its header is not JSON: {e}") from None
    check_header(header, path)
    _check_arrays(arrays, header, path)
    return header, arrays


def _read_array(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size first."""
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy version {version}")
        except ValueError as e:
            raise _bad(path, f"member {info.filename}: {e}") from None
        if dtype.hasobject or dtype.kind not in "uib" or len(shape) != 1:
            raise _bad(path, f"member {info.filename} holds {dtype} {shape}, not plain integers")
        want = shape[0] * dtype.itemsize
        if want > info.file_size:
            raise _bad(path, f"member {info.filename} claims {shape[0]} items, more than its "
                             f"{info.file_size} bytes hold")
        raw = f.read(want)
    if len(raw) != want:
        raise _bad(path, f"member {info.filename} is cut short")
    return np.frombuffer(raw, dtype=dtype)


# -- the header's schema -------------------------------------------------------

_INT = (int,)


def _need(d: object, key: str, types, path: str, where: str):
    if not isinstance(d, dict) or key not in d:
        raise _bad(path, f"{where} has no {key!r}")
    v = d[key]
    if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
        raise _bad(path, f"{where}.{key} is {type(v).__name__} {str(v)[:40]!r}")
    return v


def _dataclass_rows(rows: object, cls, path: str, where: str) -> None:
    """Each row a dict with exactly the dataclass's fields (those without
    defaults required), so ``cls(**row)`` cannot fail."""
    if not isinstance(rows, list):
        raise _bad(path, f"{where} is not a list")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _bad(path, f"{where}[{i}] is not an object")
        extra, lacking = set(row) - names, required - set(row)
        if extra or lacking:
            what = f"unknown {sorted(extra)[0]!r}" if extra else f"no {sorted(lacking)[0]!r}"
            raise _bad(path, f"{where}[{i}] has {what}")
        for key in ("phys", "start", "size", "level", "nr", "id", "va"):
            if key in row and (not isinstance(row[key], int) or isinstance(row[key], bool) or row[key] < -8
                               or row[key] >= 1 << 64):
                raise _bad(path, f"{where}[{i}].{key} is {str(row[key])[:40]!r}")


def check_header(h: object, path: str) -> None:
    """The header holds every key :class:`Snapshot` and the simulation read,
    typed and in range (see the module docstring)."""
    if not isinstance(h, dict):
        raise _bad(path, "its header is not a JSON object")
    if h.get("schema") not in COMPATIBLE:
        raise MMInspectError(f"{path}: snapshot schema {str(h.get('schema'))[:40]!r}, expected one of "
                             f"{', '.join(COMPATIBLE)}")
    k = _need(h, "kernel", (dict,), path, "header")
    reg = _need(k, "regime", (dict,), path, "kernel")
    page_size = _need(reg, "page_size", _INT, path, "kernel.regime")
    try:
        check_page_size(page_size)
    except MMInspectError as e:
        raise _bad(path, f"kernel.regime.{e}") from None
    for key in ("va_bits", "vabits_actual", "pa_bits"):
        v = _need(reg, key, _INT, path, "kernel.regime")
        if not 36 <= v <= 52:
            raise _bad(path, f"kernel.regime.{key} is {v}, outside arm64's 36..52")
    # A kernel's sections are 2^27..2^30 bytes (SECTION_SIZE_BITS_RANGE);
    # hand-built snapshots go down to one PMD block (2 MiB). What matters
    # here is that a removal is replayed in a bounded number of sections.
    lo, hi = 21, SECTION_SIZE_BITS_RANGE[1]
    section = _need(k, "section_size", _INT, path, "kernel")
    if section & (section - 1) or not (1 << lo) <= section <= (1 << hi):
        raise _bad(path, f"kernel.section_size is {section}, not 2^{lo}..2^{hi}")
    block = _need(k, "block_size", _INT, path, "kernel")
    if block < section or block % section:
        raise _bad(path, f"kernel.block_size is {block}, not a multiple of the section size {section}")
    struct_page = _need(k, "struct_page_size", _INT, path, "kernel")
    if not 32 <= struct_page <= 256 or struct_page % 8:
        raise _bad(path, f"kernel.struct_page_size is {struct_page}")
    _need(k, "phys_offset", _INT, path, "kernel")
    layout = _need(k, "layout", (dict,), path, "kernel")
    for key in ("page_offset", "page_end", "vmemmap_start", "vmemmap_end"):
        v = _need(layout, key, _INT, path, "kernel.layout")
        if not 0 <= v < 1 << 64:
            raise _bad(path, f"kernel.layout.{key} is {v}")
    era = _need(h, "era", (dict,), path, "header")
    unknown = set(era) - {f.name for f in fields(Era)}
    if unknown:
        raise _bad(path, f"era has unknown {sorted(unknown)[0]!r}")
    root = _need(h, "root_phys", _INT, path, "header")
    if not 0 <= root < 1 << 64:
        raise _bad(path, f"root_phys is {root}")
    _dataclass_rows(h.get("tables"), TableFacts, path, "tables")
    _dataclass_rows(h.get("sections"), Section, path, "sections")
    _dataclass_rows(h.get("blocks"), Block, path, "blocks")
    for i, t in enumerate(h["tables"]):
        if not isinstance(t["parents"], list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) for x in p) for p in t["parents"]):
            raise _bad(path, f"tables[{i}].parents is not a list of [phys, index]")
    for i, s in enumerate(h["sections"]):
        if s["size"] != section:
            raise _bad(path, f"sections[{i}].size is {s['size']}, not the section size {section}")
    if len(h["blocks"]) > (1 << 52) // block:
        raise _bad(path, f"{len(h['blocks'])} memory blocks of {block} bytes: more than 4 PiB")
    if h.get("nr_pagetable") is not None and not isinstance(h["nr_pagetable"], int):
        raise _bad(path, f"nr_pagetable is {str(h['nr_pagetable'])[:40]!r}")
    _check_removal_path(h, path)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_removal_path(h: dict, path: str) -> None:
    """What /2 adds for the offline path: System RAM ranges and the
    isolation scans of memory blocks (mminspect.hotremove.isolation)."""
    ram = h["kernel"].get("system_ram")
    if ram is not None and not (isinstance(ram, list) and all(
            isinstance(r, list) and len(r) == 2 and all(_is_int(x) and 0 <= x < 1 << 64 for x in r) for r in ram)):
        raise _bad(path, "kernel.system_ram is not a list of [base, size]")
    scans = h.get("isolation", {})
    if not isinstance(scans, dict):
        raise _bad(path, "isolation is not an object")
    for key, sc in scans.items():
        where = f"isolation[{str(key)[:20]!r}]"
        if not key.isdigit() or not isinstance(sc, dict):
            raise _bad(path, f"{where} is not a block's scan")
        for name in ("pages", "unreadable"):
            if not _is_int(sc.get(name, 0)) or sc.get(name, 0) < 0:
                raise _bad(path, f"{where}.{name} is {str(sc.get(name))[:40]!r}")
        first = sc.get("first_unmovable")
        if first is not None and not (isinstance(first, list) and len(first) == 2 and _is_int(first[0])
                                      and isinstance(first[1], str)):
            raise _bad(path, f"{where}.first_unmovable is not [pfn, kind]")
        if not isinstance(sc.get("unmovable", {}), dict) or not all(
                isinstance(k, str) and _is_int(v) for k, v in sc.get("unmovable", {}).items()):
            raise _bad(path, f"{where}.unmovable is not kind -> count")
        doubtful = sc.get("doubtful", {})
        if not isinstance(doubtful, dict) or not all(
                isinstance(v, list) and len(v) == 2 and _is_int(v[0]) and isinstance(v[1], list)
                and all(_is_int(p) for p in v[1]) for v in doubtful.values()):
            raise _bad(path, f"{where}.doubtful is not kind -> [count, pfns]")


def _check_arrays(a: Dict[str, np.ndarray], h: dict, path: str) -> None:
    """The entry arrays agree with each other and with one table's size."""
    per_table = h["kernel"]["regime"]["page_size"] // 8
    n = len(a["phys"])
    if len(a["lengths"]) != n:
        raise _bad(path, f"{n} dense tables but {len(a['lengths'])} lengths")
    lengths = a["lengths"].astype(np.int64)
    if n and (lengths.min() < 0 or lengths.max() > per_table):
        raise _bad(path, f"a dense table of {int(lengths.max())} entries (a table has at most {per_table})")
    if int(lengths.sum()) != len(a["entries"]):
        raise _bad(path, f"dense tables of {int(lengths.sum())} entries in all, {len(a['entries'])} stored")
    m = len(a["uphys"])
    if not len(a["ufirst"]) == len(a["ustep"]) == len(a["ulen"]) == m:
        raise _bad(path, "uniform tables' arrays differ in length")
    ulen = a["ulen"].astype(np.int64)
    if m and (ulen.min() < 0 or ulen.max() > per_table):
        raise _bad(path, f"a uniform table of {int(ulen.max())} entries (a table has at most {per_table})")
