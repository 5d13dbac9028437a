"""
gdb targets
-----------

A :class:`GdbTarget` reads a kernel through the gdb session it runs in: gdb
attached to QEMU's gdbstub (``qemu-system-aarch64 -s``), to kgdb, or to
anything else that serves kernel memory, with the vmlinux loaded.

- **Types and symbols** come from gdb (``sizeof``, member offsets and
  enumerators through gdb's expression evaluator, addresses through its symbol
  tables), shifted by the KASLR offset when gdb's symbols are the link-time
  ones (see below).
- **VMCOREINFO** is the kernel's own ``vmcoreinfo_data`` buffer, so every
  layout fact is the one a dump of the same kernel would record. A kernel
  without it gets the needed keys computed from symbols and registers
  (``swapper_pg_dir``, ``kimage_voffset``, ``memstart_addr`` as PHYS_OFFSET,
  VA_BITS from ``vabits_actual`` or TCR_EL1.T1SZ, the page size from
  TCR_EL1.TG1).
- **Physical reads** use QEMU's physical memory mode (``maintenance packet
  Qqemu.PhyMemMode:1``, QEMU commit ab4752ec8d9b), switched on only around
  each read, in blocks as large as the caller asks. A stub without that mode
  (kgdb) is read through the kernel's linear map (or the kernel image's own
  mapping for its pages) with virtual reads.
- **Registers** TTBR1_EL1 and TCR_EL1 are read when the stub exposes them
  (QEMU does; kgdb does not).

KASLR: gdb loads vmlinux at its link addresses. If ``linux_banner`` does not
read as "Linux version" there, the offset is found from the CPU itself:
translate the PC through TTBR1_EL1 (physical reads) to get
``kimage_voffset``, place ``swapper_pg_dir`` (the table TTBR1 points to)
with it, and check the banner at the shifted address. Loading the symbols at
the right address (``symbol-file vmlinux -o OFFSET``) or booting with
``nokaslr`` makes this unnecessary.

Reads are cached (in 4 KiB pages, up to 256 MiB) until :meth:`invalidate`;
the gdb front end calls it on every ``stop`` event, so nothing read while the
guest ran is reused after it stops again.

This module imports ``gdb`` and works only inside gdb.
"""

import contextlib
import re
from typing import Dict, Iterator, List, Optional, Tuple

import gdb  # type: ignore[import-not-found]

from mminspect.arch.arm64 import Regime, regime_from_tcr, ttbr_baddr
from mminspect.arch.lookup import find_mappings, translate
from mminspect.bits import U64, s64
from mminspect.errors import MMInspectError
from mminspect.kernel.addr import LinearMap
from mminspect.target.base import TargetFault
from mminspect.target.derived import computed_vmcoreinfo, kernel_vmcoreinfo, task_mm_pgd

__all__ = ("GdbTarget",)

_CACHE_PAGE = 4096
_CACHE_LIMIT = 65536  # pages (256 MiB)
_BANNER = b"Linux version "


def _received(output: str) -> Optional[str]:
    m = re.search(r'received: "(.*)"', output)
    return m.group(1) if m else None


class GdbTarget:
    """
    A :class:`~mminspect.target.base.Target` over the current gdb inferior.

    :param phys_mode: ``None`` to use QEMU's physical memory mode when the
        stub has it, ``True`` to require it, ``False`` to read through gdb's
        virtual reads only (as with kgdb)
    :param vmcoreinfo: ``"auto"`` (the kernel's buffer, else computed),
        ``"kernel"`` (the buffer only) or ``"computed"`` (from symbols and
        registers only)
    :raises MMInspectError: if gdb is not connected to a running target
    """

    def __init__(self, phys_mode: Optional[bool] = None, vmcoreinfo: str = "auto") -> None:
        inf = gdb.selected_inferior()
        if inf is None or inf.pid == 0 or gdb.selected_thread() is None:
            raise MMInspectError(
                "gdb is not attached to a kernel (target remote :1234 for QEMU -s, or kgdb first)"
            )
        self._inf = inf
        conn = getattr(inf, "connection", None)
        details = getattr(conn, "details", None) if conn is not None else None
        self.name = f"gdb {getattr(conn, 'type', 'target')} {details}" if details else "gdb target"
        self._want_phys = phys_mode
        self._vmcoreinfo_mode = vmcoreinfo
        self._phys: Optional[bool] = None
        self._phys_depth = 0
        self._booted = False
        self._delta: Optional[int] = None
        self._kimage_voffset: Optional[int] = None
        self._image: Optional[Tuple[int, int]] = None
        self._swapper_pa: Optional[int] = None
        self._mmu: Optional[Regime] = None
        self._vmcoreinfo: Optional[Dict[str, str]] = None
        self._symbols: Dict[str, Optional[int]] = {}
        self._layout: Dict[Tuple[str, str], Optional[int]] = {}
        self._regs: Dict[str, Optional[int]] = {}
        self._cache: Dict[int, bytes] = {}
        self._tlb: Dict[int, Optional[int]] = {}
        self._debug_info: Optional[bool] = None
        self._blocks: Optional[List[object]] = None
        self._types: Dict[str, object] = {}
        self.stats = {"phys_reads": 0, "virt_reads": 0, "bytes": 0, "cache_hits": 0, "mode_switches": 0}

    # -- state ------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget memory, translations and registers (the target ran); keep
        what cannot change while the kernel runs (types, symbols, the KASLR
        offset, VMCOREINFO)."""
        self._cache.clear()
        self._tlb.clear()
        self._regs.clear()

    @property
    def physical_mode(self) -> bool:
        """True when reads go through QEMU's physical memory mode (and
        virtual addresses are translated by mminspect from swapper_pg_dir)."""
        if self._phys is None:
            self._phys = False
            if self._want_phys is not False:
                try:
                    out = gdb.execute("maintenance packet qqemu.PhyMemMode", to_string=True)
                    self._phys = _received(out) in ("0", "1")
                except gdb.error:
                    self._phys = False
            if self._want_phys and not self._phys:
                raise MMInspectError(f"{self.name}: the stub has no physical memory mode")
        return self._phys

    def _phys_mode(self, on: bool) -> None:
        self.stats["mode_switches"] += 1
        out = gdb.execute(f"maintenance packet Qqemu.PhyMemMode:{1 if on else 0}", to_string=True)
        if _received(out) != "OK":
            raise MMInspectError(f"{self.name}: cannot switch QEMU's physical memory mode: {out.strip()}")

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """
        Keep QEMU's physical memory mode on for a whole command instead of
        switching it around every read (nothing else may read memory through
        gdb meanwhile). A no-op without physical mode.
        """
        if not self.physical_mode:
            yield
            return
        if self._phys_depth == 0:
            self._phys_mode(True)
        self._phys_depth += 1
        try:
            yield
        finally:
            self._phys_depth -= 1
            if self._phys_depth == 0:
                self._phys_mode(False)

    @contextlib.contextmanager
    def _gdb_view(self) -> Iterator[None]:
        # gdb's own view of memory (virtual), e.g. while it builds frames.
        if self._phys_depth == 0:
            yield
            return
        self._phys_mode(False)
        try:
            yield
        finally:
            self._phys_mode(True)

    # -- memory -------------------------------------------------------------
    def _cached(self, address: int, size: int) -> Optional[bytes]:
        first = address & ~(_CACHE_PAGE - 1)
        parts = []
        for page in range(first, address + size, _CACHE_PAGE):
            data = self._cache.get(page)
            if data is None:
                return None
            parts.append(data)
        buf = b"".join(parts)
        off = address - first
        return buf[off : off + size]

    def _store(self, address: int, data: bytes) -> None:
        if len(self._cache) + len(data) // _CACHE_PAGE > _CACHE_LIMIT:
            self._cache.clear()
        start = -address % _CACHE_PAGE
        for off in range(start, len(data) - _CACHE_PAGE + 1, _CACHE_PAGE):
            self._cache[address + off] = data[off : off + _CACHE_PAGE]

    def _read(self, address: int, size: int, physical: bool) -> bytes:
        try:
            mem = self._inf.read_memory(address, size)
        except (gdb.MemoryError, gdb.error) as e:
            raise TargetFault(address, size, physical, str(e).splitlines()[0] if str(e) else "") from None
        self.stats["bytes"] += size
        return mem.tobytes()

    def read_phys(self, address: int, size: int) -> bytes:
        if address < 0 or address + size > 1 << 52:
            raise TargetFault(address, size, True, "beyond the physical address space")
        hit = self._cached(address, size)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit
        if self.physical_mode:
            self.stats["phys_reads"] += 1
            with self.session():
                data = self._read(address, size, True)
        else:
            data = self._read_phys_via_virt(address, size)
        self._store(address, data)
        return data

    def _read_phys_via_virt(self, address: int, size: int) -> bytes:
        # Without physical mode: through the linear map in one read; where
        # that fails, page by page, kernel image pages also through the
        # image's own mapping.
        try:
            return self._read(self._linear_va(address), size, False)
        except TargetFault:
            if size <= _CACHE_PAGE and self._image_va(address) is None:
                raise TargetFault(address, size, True, "not readable through the linear map") from None
        out = bytearray()
        while size:
            n = min(size, _CACHE_PAGE - (address % _CACHE_PAGE))
            try:
                out += self._read(self._linear_va(address), n, False)
            except TargetFault:
                va = self._image_va(address)
                if va is None:
                    raise TargetFault(address, n, True, "not readable through the linear map") from None
                out += self._read(va, n, False)
            address += n
            size -= n
        return bytes(out)

    def _linear_va(self, pa: int) -> int:
        info = self.vmcoreinfo()
        page_offset = (-(1 << int(info["NUMBER(VA_BITS)"]))) & U64
        lm = LinearMap(page_offset, U64, s64(int(info["NUMBER(PHYS_OFFSET)"], 16)),
                       int(info.get("NUMBER(kimage_voffset)", "0"), 16))
        return lm.phys_to_virt(pa)

    def _image_va(self, pa: int) -> Optional[int]:
        kv = int(self.vmcoreinfo()["NUMBER(kimage_voffset)"], 16)
        text, end = self.symbol("_text"), self.symbol("_end")
        if text is None or end is None:
            return None
        va = (pa + kv) & U64
        return va if text <= va < end else None

    def read_virt(self, address: int, size: int) -> bytes:
        self.stats["virt_reads"] += 1
        if not self.physical_mode:
            return self._read(address, size, False)
        self._boot()
        out = bytearray()
        va, left = address, size
        while left:
            n = min(left, _CACHE_PAGE - (va % _CACHE_PAGE))
            pa = self.virt_to_phys(va)
            if pa is None:
                raise TargetFault(va, n, False, "not mapped in swapper_pg_dir")
            # extend over virtually and physically contiguous pages
            while n < left:
                nxt = self.virt_to_phys(va + n)
                if nxt != pa + n:
                    break
                n += min(left - n, _CACHE_PAGE)
            try:
                out += self.read_phys(pa, n)
            except TargetFault as e:
                raise TargetFault(va, n, False, f"physical {pa:#x}: {str(e).split(': ', 1)[-1]}") from None
            va, left = va + n, left - n
        return bytes(out)

    # -- translation ----------------------------------------------------------
    def virt_to_phys(self, va: int) -> Optional[int]:
        """Translate a kernel VA as the MMU does from swapper_pg_dir (the
        kernel image by ``kimage_voffset``), with physical reads; None if
        it is not mapped. Only with QEMU's physical memory mode."""
        self._boot()
        if self._image is not None and self._image[0] <= va < self._image[1]:
            return (va - self._kimage_voffset) & U64
        page = va & ~(_CACHE_PAGE - 1)
        if page not in self._tlb:
            self._tlb[page] = self._walk(self._swapper_pa, page)
        pa = self._tlb[page]
        return None if pa is None else pa + (va - page)

    def _read_or_none(self, address: int, size: int) -> Optional[bytes]:
        try:
            return self.read_phys(address, size)
        except TargetFault:
            return None

    def _walk(self, root: Optional[int], va: int) -> Optional[int]:
        r = self._mmu
        if r is None or root is None:
            return None
        return translate(self._read_or_none, r, root, va)

    def _search(self, root: int, pa: int) -> List[int]:
        """Kernel VAs in the upper half of TTBR1's range that map ``pa``
        (:func:`mminspect.arch.lookup.find_mappings` over physical reads)."""
        assert self._mmu is not None
        return find_mappings(self._read_or_none, self._mmu, root, pa)

    # -- registers ------------------------------------------------------------
    def register(self, name: str) -> Optional[int]:
        """A system register of the selected CPU (``TTBR1_EL1``, ``TCR_EL1``),
        or None when the stub does not expose it."""
        if name not in self._regs:
            try:
                with self._gdb_view():
                    self._regs[name] = int(gdb.selected_frame().read_register(name)) & U64
            except (gdb.error, ValueError, RuntimeError):
                self._regs[name] = None
        return self._regs[name]

    def _tcr_regime(self) -> Optional[Regime]:
        tcr = self.register("TCR_EL1")
        return None if tcr is None else regime_from_tcr(tcr)

    def _ttbr1_pa(self, regime: Regime) -> Optional[int]:
        ttbr = self.register("TTBR1_EL1")
        return None if ttbr is None else ttbr_baddr(ttbr, regime.pa_bits)

    def _pcs(self) -> List[int]:
        pcs = []
        with self._gdb_view():
            try:
                pcs.append(int(gdb.selected_frame().read_register("pc")) & U64)
            except (gdb.error, ValueError, RuntimeError):
                pass
        return pcs

    # -- KASLR --------------------------------------------------------------
    def _link_address(self, name: str) -> Optional[int]:
        try:
            sym = gdb.lookup_global_symbol(name) or gdb.lookup_static_symbol(name)
            if sym is not None and sym.addr_class not in (gdb.SYMBOL_LOC_CONST, gdb.SYMBOL_LOC_TYPEDEF):
                addr = sym.value().address
                if addr is not None:
                    return int(addr) & U64
            return int(gdb.parse_and_eval(f"&{name}")) & U64
        except (gdb.error, RuntimeError, ValueError):
            return None

    def _boot(self) -> None:
        """Find where the kernel runs: the KASLR offset, ``kimage_voffset``
        and swapper_pg_dir's physical address (physical mode), or check that
        gdb's symbols match (virtual reads)."""
        if self._booted:
            return
        banner = self._link_address("linux_banner")
        if banner is None:
            raise MMInspectError("gdb has no kernel symbols: load the vmlinux first (file vmlinux)")
        if not self.physical_mode:
            try:
                ok = self._read(banner, len(_BANNER), False) == _BANNER
            except TargetFault:
                ok = False
            if not ok:
                raise MMInspectError(
                    "gdb's symbols do not match the running kernel (KASLR?): boot with nokaslr or "
                    "load the symbols with symbol-file vmlinux -o OFFSET"
                )
            self._delta = 0
            self._booted = True
            return
        r = self._mmu = self._tcr_regime()
        ttbr1 = self._ttbr1_pa(r) if r is not None else None
        if r is None or ttbr1 is None:
            raise MMInspectError(f"{self.name}: the stub exposes no TCR_EL1/TTBR1_EL1 to translate with")
        links = {n: self._link_address(n) for n in ("swapper_pg_dir", "tramp_pg_dir", "_text", "_end")}
        if links["swapper_pg_dir"] is None or links["_text"] is None or links["_end"] is None:
            raise MMInspectError("gdb has no swapper_pg_dir/_text/_end symbols: is this the vmlinux?")
        # TTBR1 holds swapper_pg_dir, or tramp_pg_dir while a CPU is at EL0
        # under KPTI; both are in the image, at fixed link-time distances.
        roots = [ttbr1]
        if links["tramp_pg_dir"] is not None:
            roots.append(ttbr1 + links["swapper_pg_dir"] - links["tramp_pg_dir"])
        for swapper_pa in roots:
            for kv in self._kimage_voffsets(swapper_pa):
                delta = (swapper_pa + kv - links["swapper_pg_dir"]) & U64
                image = ((links["_text"] + delta) & U64, (links["_end"] + delta) & U64)
                try:
                    ok = self.read_phys((banner + delta - kv) & U64, len(_BANNER)) == _BANNER
                except TargetFault:
                    ok = False
                if ok:
                    self._swapper_pa, self._kimage_voffset = swapper_pa, kv
                    self._delta, self._image = delta, image
                    self._booted = True
                    return
        raise MMInspectError(
            "cannot place the running kernel: gdb's vmlinux does not match it (linux_banner not "
            "found where swapper_pg_dir and the CPU put it)"
        )

    def _kimage_voffsets(self, swapper_pa: int) -> Iterator[int]:
        # From the PC when a CPU is in the kernel image, else from where the
        # tables map swapper_pg_dir itself outside the linear map.
        seen = set()
        for pc in self._pcs():
            pa = self._walk(swapper_pa, pc)
            if pa is not None:
                kv = (pc - pa) & U64
                if kv not in seen:
                    seen.add(kv)
                    yield kv
        for va in self._search(swapper_pa, swapper_pa):
            kv = (va - swapper_pa) & U64
            if kv not in seen:
                seen.add(kv)
                yield kv

    def kaslr_delta(self) -> int:
        """How far the running kernel is from the addresses in gdb's symbols.

        :raises MMInspectError: if the symbols do not match and the offset
            cannot be found"""
        self._boot()
        assert self._delta is not None
        return self._delta

    # -- kernel facts -------------------------------------------------------
    def symbol(self, name: str) -> Optional[int]:
        if name not in self._symbols:
            link = self._link_address(name)
            self._symbols[name] = None if link is None else (link + self.kaslr_delta()) & U64
        addr = self._symbols[name]
        if addr is None and self._vmcoreinfo is not None:
            value = self._vmcoreinfo.get(f"SYMBOL({name})")
            return int(value, 16) if value is not None else None
        return addr

    def symbol_size(self, name: str) -> Optional[int]:
        """Size in bytes of a function (its code, from gdb's block of it), or
        None when gdb does not know it."""
        link = self._link_address(name)
        if link is None:
            return None
        try:
            block = gdb.block_for_pc(link)
            while block is not None and block.function is None:
                block = block.superblock
            if block is None or block.function.name != name or block.start != link:
                return None
            return int(block.end - block.start)
        except (gdb.error, RuntimeError):
            return None

    def _eval_int(self, expr: str) -> Optional[int]:
        try:
            return int(gdb.parse_and_eval(expr))
        except (gdb.error, RuntimeError, ValueError, OverflowError):
            return None

    def _anchor_blocks(self) -> List[object]:
        # Static blocks of CUs that include the mm headers. A type looked up
        # there is found in one CU; looked up from nowhere (or through
        # parse_and_eval), gdb expands every CU that defines it: about 15 s
        # for struct page in a distribution vmlinux.
        if self._blocks is None:
            self._blocks = []
            for name in ("init_mm", "init_task", "efi_mm", "init_uts_ns"):
                try:
                    sym = gdb.lookup_global_symbol(name)
                    if sym is not None and sym.symtab is not None:
                        self._blocks.append(sym.symtab.static_block())
                except (gdb.error, RuntimeError):
                    pass
        return self._blocks

    def _type(self, type_name: str):
        if type_name not in self._types:
            name, stars = type_name.rstrip(" *"), type_name.count("*")
            found = None
            for block in [*self._anchor_blocks(), None]:
                try:
                    found = gdb.lookup_type(name, block) if block is not None else gdb.lookup_type(name)
                    break
                except (gdb.error, RuntimeError):
                    continue
            for _ in range(stars if found is not None else 0):
                found = found.pointer()
            self._types[type_name] = found
        return self._types[type_name]

    def sizeof(self, type_name: str) -> Optional[int]:
        t = self._type(type_name)
        return None if t is None else int(t.sizeof)

    def offsetof(self, type_name: str, member: str) -> Optional[int]:
        key = (type_name, member)
        if key not in self._layout:
            t = self._type(type_name)
            value = None
            if t is not None:
                try:
                    # No memory is read: the value stays lazy, only its address is taken.
                    v = gdb.Value(0).cast(t.pointer()).dereference()
                    for part in re.findall(r"[A-Za-z_]\w*|\[\d+\]", member):
                        v = v[int(part[1:-1])] if part.startswith("[") else v[part]
                    value = int(v.address)
                except (gdb.error, RuntimeError, ValueError, KeyError, TypeError):
                    value = None
            self._layout[key] = value
        return self._layout[key]

    def constant(self, name: str) -> Optional[int]:
        key = ("constant", name)
        if key not in self._layout:
            value = None
            try:
                v = gdb.parse_and_eval(name)
                if v.address is None:  # an enumerator, not a variable
                    value = int(v)
            except (gdb.error, RuntimeError, ValueError):
                pass
            self._layout[key] = value
        return self._layout[key]

    @property
    def has_debug_info(self) -> bool:
        if self._debug_info is None:
            self._debug_info = self.sizeof("struct page") is not None
        return self._debug_info

    def vmcoreinfo(self) -> Dict[str, str]:
        if self._vmcoreinfo is None:
            info = None
            if self._vmcoreinfo_mode in ("auto", "kernel"):
                info = self._kernel_vmcoreinfo()
                if info is None and self._vmcoreinfo_mode == "kernel":
                    raise MMInspectError(f"{self.name}: the kernel has no readable vmcoreinfo_data")
            if info is None:
                info = self.computed_vmcoreinfo()
            self._vmcoreinfo = info
        return self._vmcoreinfo

    def task_mm_pgd(self, pid: int) -> int:
        """
        The ``mm->pgd`` (a kernel VA) of the process with ``pid``, found by
        following ``init_task.tasks`` (thread-group leaders).

        :raises MMInspectError: if there is no such process, it is a kernel
            thread, or the debug info lacks the fields
        """
        return task_mm_pgd(self, pid)

    def _kernel_vmcoreinfo(self) -> Optional[Dict[str, str]]:
        return kernel_vmcoreinfo(self)

    def computed_vmcoreinfo(self) -> Dict[str, str]:
        """
        The VMCOREINFO keys mminspect needs, computed from symbols, variables
        and registers, for a kernel without ``vmcoreinfo_data``.

        :raises MMInspectError: if a key cannot be computed
        """
        delta = self.kaslr_delta()
        regime = self._tcr_regime()
        if regime is None:
            raise MMInspectError(
                f"{self.name}: no vmcoreinfo_data and no TCR_EL1 register: cannot tell the page size"
            )
        return computed_vmcoreinfo(self, regime, delta, self._eval_int("VA_BITS"))
