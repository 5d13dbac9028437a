"""
Reading struct pages from the memmap
------------------------------------

:class:`StructPages` reads the ``struct page``\\s of many PFNs in a few large
reads of the vmemmap (sorted PFNs, contiguous runs read whole, gaps of up to
:data:`GAP_BYTES` read through) and decodes them with numpy into
:data:`~mminspect.mm.struct_page.FACTS_DTYPE` rows; :meth:`StructPages.scan`
walks a whole memmap the same way, from the dump file itself in threads when
the target has it at hand. Memmap reads go to physical memory through the
vmemmap's own mappings (one walk of the region), never a drgn Object per
page.
"""

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Deque, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mminspect.bits import U64, unique
from mminspect.kernel.addr import Vmemmap
from mminspect.mm.struct_page import PageLayout
from mminspect.target.base import TargetFault, core_file_of
from mminspect.walk import CLS_LEAF, walk

__all__ = ("CORE_SCAN_BYTES", "GAP_BYTES", "MAX_READ", "SCAN_THREADS", "StructPages")

#: Largest single read of the memmap (1 MiB reads run at memory speed in drgn).
MAX_READ = 1 << 20
#: Neighbouring runs of wanted struct pages closer than this are read as one.
GAP_BYTES = 16 << 10
#: Threads of a memmap scan that reads the dump file itself (two to four).
SCAN_THREADS = max(2, min(4, os.cpu_count() or 2))
#: Memmap per chunk of such a scan. It maps the file rather than copying it
#: out; at 1 TiB, 16 MiB maps scan in 1.3 s where 4 MiB ones take 1.85 s.
CORE_SCAN_BYTES = 16 << 20


class StructPages:
    """
    Read and decode the ``struct page`` of many PFNs at once.

    >>> sp = StructPages(kernel)
    >>> facts = sp.facts(np.array([0x40246, 0x40247], dtype=np.uint64))
    >>> facts["table"], facts["reserved"]
    """

    def __init__(self, kernel, layout: Optional[PageLayout] = None) -> None:
        self.kernel = kernel
        self.target = kernel.target
        self.layout = layout or PageLayout.detect(kernel.target, kernel.vmcoreinfo)
        #: pfn_to_page() with the struct page as this layout reads it
        self.map = Vmemmap(kernel.layout.vmemmap_start, kernel.phys_offset, kernel.regime.page_shift,
                           self.layout.size)
        #: vmemmap: struct page of pfn p is at ``vmemmap + p * size``
        self.vmemmap = self.map.base
        self.bytes_read = 0
        self.reads = 0

    # -- addresses --------------------------------------------------------------
    def page_va(self, pfns: np.ndarray) -> np.ndarray:
        """VA of the struct pages of ``pfns`` (uint64, wrapping as the kernel's)."""
        return self.map.pfns_to_pages(pfns)

    def pfn_of_page_va(self, vas: np.ndarray) -> np.ndarray:
        """PFNs of struct page VAs."""
        return self.map.pages_to_pfns(vas)

    # -- reading ----------------------------------------------------------------
    def _vmemmap_runs(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The vmemmap's leaf mappings (start VA, end VA, PA), from one walk
        of the region: memmap reads then go to physical memory directly,
        about twice as fast as translating every page on each read."""
        runs = getattr(self, "_vruns", None)
        if runs is None:
            try:
                w = walk(self.kernel, self.kernel.root("vmemmap"))
                leaf = w.runs[w.runs["cls"] == CLS_LEAF]
                runs = (leaf["va"].copy(), leaf["va"] + leaf["size"], leaf["pa"].copy())
            except Exception:  # no usable swapper: fall back to virtual reads
                runs = (np.empty(0, np.uint64),) * 3
            self._vruns = runs
        return runs

    def _pieces(self, va: int, size: int) -> Iterator[Tuple[int, int, Optional[int]]]:
        """The ``size`` bytes of memmap at ``va`` as ``(offset, length, PA)``
        pieces, one per vmemmap mapping; PA is None for a piece no mapping
        seen covers (then only the target can translate it, or fault)."""
        starts, ends, pas = self._vmemmap_runs()
        pos, left = va, size
        while left:
            k = int(np.searchsorted(starts, np.uint64(pos), side="right")) - 1
            if k >= 0 and pos < int(ends[k]):
                n = min(left, int(ends[k]) - pos)
                yield pos - va, n, int(pas[k]) + pos - int(starts[k])
            else:
                n = left
                yield pos - va, n, None
            pos += n
            left -= n

    def _read(self, va: int, size: int) -> bytes:
        self.reads += 1
        parts = [self.target.read_virt(va + off, n) if pa is None else self.target.read_phys(pa, n)
                 for off, n, pa in self._pieces(va, size)]
        self.bytes_read += size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_span(self, va: int, nbytes: int) -> Tuple[np.ndarray, np.ndarray]:
        """Read ``nbytes`` of memmap at ``va`` as uint64 words; unreadable
        pages of the memmap come back as zeros with their bytes marked bad."""
        buf = np.zeros(nbytes // 8, dtype=np.uint64)
        good = np.ones(nbytes // 8, dtype=bool)
        for off in range(0, nbytes, MAX_READ):
            n = min(MAX_READ, nbytes - off)
            try:
                buf[off // 8 : (off + n) // 8] = np.frombuffer(self._read(va + off, n), dtype="<u8")
                continue
            except TargetFault:
                pass
            # Find the readable pages of the memmap one by one.
            ps = self.kernel.regime.page_size
            pos = off
            while pos < off + n:
                step = min(ps - ((va + pos) % ps), off + n - pos)
                try:
                    buf[pos // 8 : (pos + step) // 8] = np.frombuffer(self._read(va + pos, step), dtype="<u8")
                except TargetFault:
                    good[pos // 8 : (pos + step) // 8] = False
                pos += step
        return buf, good

    def read_raw(self, pfns: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The raw struct pages of ``pfns`` (any order, duplicates allowed):
        ``(unique_pfns, vas, raw[n, words], ok[n])`` in PFN order."""
        pfns = unique(np.asarray(pfns, dtype=np.uint64))
        W = self.layout.words
        size = self.layout.size
        n = len(pfns)
        raw = np.zeros((n, W), dtype=np.uint64)
        ok = np.zeros(n, dtype=bool)
        vas = self.page_va(pfns)
        if not n:
            return pfns, vas, raw, ok
        # Runs: split where the next wanted struct page is more than GAP_BYTES on.
        gap = np.diff(vas.astype(np.int64)) if n > 1 else np.empty(0, np.int64)
        brk = np.nonzero((gap > GAP_BYTES) | (gap < 0))[0] + 1
        starts = np.concatenate(([0], brk))
        ends = np.concatenate((brk, [n]))
        # Keep single reads bounded: split long runs at MAX_READ.
        for s, e in zip(starts.tolist(), ends.tolist()):
            while s < e:
                lo = int(vas[s])
                limit = lo + MAX_READ
                e2 = s + int(np.searchsorted(vas[s:e], np.uint64(limit - size), side="right"))
                e2 = max(e2, s + 1)
                hi = int(vas[e2 - 1]) + size
                words, good = self._read_span(lo, hi - lo)
                idx = ((vas[s:e2] - np.uint64(lo)) // np.uint64(8)).astype(np.int64)
                rows = idx[:, None] + np.arange(W)[None, :]
                raw[s:e2] = words[rows]
                ok[s:e2] = good[rows].all(axis=1)
                s = e2
        return pfns, vas, raw, ok

    def facts(self, pfns: np.ndarray) -> np.ndarray:
        """Decoded struct pages of ``pfns`` (unique, sorted by PFN)."""
        upfns, vas, raw, ok = self.read_raw(pfns)
        return self.layout.decode(raw, upfns, vas, ok)

    def scan(self, pfn_ranges: Sequence[Tuple[int, int]], chunk_pages: Optional[int] = None,
             want: str = "all") -> Iterator[Tuple[np.ndarray, int, int]]:
        """Walk every struct page of ``[start, end)`` PFN ranges in chunks of
        ``chunk_pages`` (default: one MAX_READ of memmap, or CORE_SCAN_BYTES
        when mapped from the dump file). Yields ``(facts,
        pages, unreadable)`` per chunk, in PFN order, where ``facts`` holds
        every page (``want="all"``) or only those typed as page tables
        (``"table"``: only their rows are decoded, so a scan costs little
        more than the reads), or the rows a callable picks from the raw
        words (``want(raw) -> row indices``, ``raw`` one struct page per row).

        When the target has its dump file at hand (``core_file``: an
        uncompressed ELF vmcore), chunks of physically mapped memmap are read
        from it by :data:`SCAN_THREADS` threads at once, outside the GIL; a
        chunk the file cannot give goes through the target."""
        core = core_file_of(self.target)
        per = chunk_pages or max(1, (MAX_READ if core is None else CORE_SCAN_BYTES) // self.layout.size)
        chunks = [(s, min(hi, s + per)) for lo, hi in pfn_ranges for s in range(lo, hi, per)]
        if core is None:
            picked = (self._scan_target(s, e, want) for s, e in chunks)
        else:
            picked = self._scan_core(core, chunks, per, want)
        for s, e, rows, raw, ok, bad in picked:
            pfns = np.uint64(s) + rows.astype(np.uint64)
            yield self.layout.decode(raw, pfns, self.page_va(pfns), ok), e - s, bad

    def _table_rows(self, raw: np.ndarray, scratch: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
        """Rows of ``raw`` (one struct page per row) typed as page tables,
        tested on their ``page_type`` words as a strided uint32 view in one
        pass. ``scratch`` (a uint32 and a bool array at least as long as
        ``raw``) saves a scan that calls this per chunk two allocations: at
        4 MiB chunks they cost more than the test."""
        test = self.layout.scheme.test(self.layout.scheme.table)
        if test is None:
            return np.empty(0, dtype=np.intp)
        n = len(raw)
        word, hit = scratch or (np.empty(n, dtype=np.uint32), np.empty(n, dtype=bool))
        page_type = raw.view("<u4")[:, self.layout.off_page_type // 4]
        np.bitwise_and(page_type, np.uint32(test[0]), out=word[:n])
        np.equal(word[:n], np.uint32(test[1]), out=hit[:n])
        return np.flatnonzero(hit[:n])

    def _scan_target(self, s: int, e: int, want: str):
        """One chunk of a scan read through the target: ``(s, e, rows, raw,
        ok, unreadable)`` with the rows kept and their struct pages."""
        size = self.layout.size
        va = (self.vmemmap + s * size) & U64
        try:
            words, good = np.frombuffer(self._read(va, (e - s) * size), dtype="<u8"), None
        except TargetFault:
            words, good = self._read_span(va, (e - s) * size)
        raw = words.reshape(e - s, self.layout.words)
        ok = np.ones(e - s, dtype=bool) if good is None else good.reshape(raw.shape).all(axis=1)
        bad = int(np.count_nonzero(~ok))
        if want == "all":
            return s, e, np.arange(e - s), raw, ok, bad
        rows = want(raw) if callable(want) else self._table_rows(raw)
        rows = rows[ok[rows]]
        return s, e, rows, raw[rows], ok[rows], bad

    def _scan_core(self, core, chunks: List[Tuple[int, int]], per: int, want: str):
        """The chunks of a scan read from the dump file in threads, each into
        its own buffer; yields what :meth:`_scan_target` yields, in order."""
        size, W = self.layout.size, self.layout.words
        self._vmemmap_runs()  # walked once, before the threads share it
        local = threading.local()

        def pick(s: int, e: int, raw: np.ndarray):
            rows = (np.arange(e - s) if want == "all" else want(raw) if callable(want)
                    else self._table_rows(raw, local.scratch))
            return s, e, rows, raw[rows], np.ones(len(rows), dtype=bool), 0

        def read(s: int, e: int):
            pieces = list(self._pieces((self.vmemmap + s * size) & U64, (e - s) * size))
            if any(pa is None for _, _, pa in pieces):
                return None
            if not hasattr(local, "buf"):
                local.buf = np.empty(per * W, dtype="<u8")
                local.scratch = np.empty(per, dtype=np.uint32), np.empty(per, dtype=bool)
            nbytes = (e - s) * size
            for _, n, pa in pieces:
                core.prefetch(pa, n)  # read ahead in large requests, before the first touch
            try:
                return _read_chunk(s, e, pieces, nbytes)
            finally:
                for _, n, pa in pieces:
                    core.release(pa, n)  # drop behind, on scans larger than the page cache should hold

        def _read_chunk(s: int, e: int, pieces, nbytes: int):
            m = core.mapped(pieces[0][2], nbytes) if len(pieces) == 1 else None
            if m is not None:
                # Mapped: the page cache is read in place, not copied out first.
                raw = np.frombuffer(m, dtype="<u8", count=nbytes // 8, offset=len(m) - nbytes).reshape(e - s, W)
                got = pick(s, e, raw)  # raw[rows] is a copy: the map can go
                del raw
                m.close()
                return got
            raw = local.buf[: (e - s) * W].reshape(e - s, W)
            mem = raw.reshape(-1).view(np.uint8)
            try:
                for off, n, pa in pieces:
                    core.readinto(pa, mem[off : off + n])
            except TargetFault:
                return None
            return pick(s, e, raw)

        def result(s: int, e: int, fut: Future):
            got = fut.result()
            if got is None:
                return self._scan_target(s, e, want)
            self.reads += 1
            self.bytes_read += (e - s) * size
            return got

        core.start_scan(sum(e - s for s, e in chunks) * size)
        # Up to two chunks per thread in flight: the threads never wait for
        # the caller, and the results held stay small.
        with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="memmap-scan") as pool:
            pending: Deque[Tuple[int, int, Future]] = deque()
            try:
                for s, e in chunks:
                    pending.append((s, e, pool.submit(read, s, e)))
                    if len(pending) == 2 * SCAN_THREADS:
                        yield result(*pending.popleft())
                while pending:
                    yield result(*pending.popleft())
            finally:
                for _, _, fut in pending:
                    fut.cancel()

    def heads(self, facts: np.ndarray) -> np.ndarray:
        """For each row, the facts of its compound head (itself when not a
        tail): page types and PG_slab live on the head page."""
        out = facts.copy()
        t = np.nonzero(facts["tail"])[0]
        if len(t):
            head_pfns = self.pfn_of_page_va(facts["w1"][t] - np.uint64(1))
            hf = self.facts(head_pfns)
            pos = np.searchsorted(hf["pfn"], head_pfns)
            keep = facts[t][["pfn", "va", "tail", "w1"]]
            out[t] = hf[pos]
            for name in ("pfn", "va", "tail", "w1"):
                out[name][t] = keep[name]
        return out
