"""Anomalies a test injects on purpose into a synthetic kernel: tables linked
twice, raw descriptors, tables outside RAM, tables missing from the dump; each
recorded as ground truth (:class:`~.records.Anomaly`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .encode import TABLE_KERNEL, TableProt
from .records import Anomaly
from .regime import U64

if TYPE_CHECKING:
    from .tables import _Table


class InjectAnomalies:
    """The :class:`~.builder.Builder` methods that corrupt tables on purpose."""

    def _entry_for(self, root, va, level, pool="ram") -> tuple[_Table, int]:
        r = self.regime
        t = self._root_table[root] if level == r.start_level else self._ensure(root, va, level, pool, TABLE_KERNEL)
        return t, r.index(va, level)

    def link_table(self, root: str, va: int, level: int, target_pa: int, *,
                   table_prot: TableProt = TABLE_KERNEL, pool: str = "ram") -> Anomaly | None:
        """Write a table descriptor at the level-``level`` entry for ``va`` pointing at an
        existing table ``target_pa``.

        If the target is a table of level ``level + 1`` not on the path, this creates a
        *shared* table (its leaves become reachable under a second VA; the ground truth
        lists those as aliases).  If the target is on the path (an ancestor, or the
        table holding the entry) it creates a *loop*; any other level mismatch is a
        level-confused link.  Both are recorded as anomalies.
        """
        r = self.regime
        va &= U64
        t, idx = self._entry_for(root, va, level, pool)
        if t.arr[idx] != 0:
            raise ValueError("entry not empty")
        target = self._table(target_pa)
        t.arr[idx] = self.enc.table(target_pa, table_prot)
        span = r.entry_span(level)
        base = (va - va % span) & U64
        ancestors = self._path_tables(root, va, level)
        if target.level == level + 1 and target_pa not in ancestors:
            self._child[t.pa + 8 * idx] = target_pa
            target.parents.append((t.pa, idx))
            self._links.append((root, base, level, target_pa))
            a = Anomaly("shared", root, base, base + span, level, t.pa + 8 * idx, int(t.arr[idx]),
                        f"shares {r.level_name(target.level)} table {target_pa:#x}", hw="mapped")
        else:
            kind = "loop" if target_pa in ancestors else "level_confusion"
            a = Anomaly(kind, root, base, base + span, level, t.pa + 8 * idx, int(t.arr[idx]),
                        f"points at level-{target.level} table {target_pa:#x}")
        self._anomalies.append(a)
        return a

    def _path_tables(self, root, va, level) -> list[int]:
        r = self.regime
        out = []
        t = self._root_table[root]
        out.append(t.pa)
        for lv in range(r.start_level, level):
            c = self._child_of(t, r.index(va, lv))
            if c is None:
                break
            t = self._table(c)
            out.append(t.pa)
        return out

    def set_raw(self, root: str, va: int, level: int, value: int, *, hw: str = "unmapped",
                note: str = "", pool: str = "ram") -> Anomaly:
        """Store an arbitrary descriptor value at the level-``level`` entry for ``va``.

        ``hw`` is what the hardware (and a correct Linux walker) makes of it:
        ``"unmapped"`` for invalid encodings (bit 0 clear, ``01`` at level 3, a block
        at a level where blocks are not architected), ``"undefined"`` otherwise.
        """
        r = self.regime
        va &= U64
        t, idx = self._entry_for(root, va, level, pool)
        if t.arr[idx] != 0:
            raise ValueError("entry not empty")
        t.arr[idx] = value & U64
        span = r.entry_span(level)
        base = (va - va % span) & U64
        a = Anomaly("raw", root, base, base + span, level, t.pa + 8 * idx, value & U64, note, hw=hw)
        self._anomalies.append(a)
        return a

    def set_table_outside_ram(self, root: str, va: int, level: int, pa: int, *,
                              table_prot: TableProt = TABLE_KERNEL, pool: str = "ram") -> Anomaly:
        """A table descriptor at ``level`` whose next-level table PA is not RAM."""
        r = self.regime
        if self.in_ram(pa):
            raise ValueError("PA is RAM")
        if level >= 3:
            raise ValueError("level-3 entries are never table descriptors")
        va &= U64
        t, idx = self._entry_for(root, va, level, pool)
        if t.arr[idx] != 0:
            raise ValueError("entry not empty")
        t.arr[idx] = self.enc.table(pa, table_prot)
        span = r.entry_span(level)
        base = (va - va % span) & U64
        a = Anomaly("table_outside_ram", root, base, base + span, level, t.pa + 8 * idx,
                    int(t.arr[idx]), f"next table at {pa:#x} is not RAM")
        self._anomalies.append(a)
        return a

    def omit_table(self, table_pa: int, mode: str = "absent") -> None:
        """Leave a table page out of the dump: ``"absent"`` (no PT_LOAD covers it) or
        ``"zero"`` (covered by ``p_memsz`` but not ``p_filesz``, as makedumpfile does
        with excluded pages; readers see zeros)."""
        if mode not in ("absent", "zero"):
            raise ValueError("mode is 'absent' or 'zero'")
        if table_pa not in self._tables and self._extent_of(table_pa) is None:
            raise KeyError(f"no table at {table_pa:#x}")
        page_pa = table_pa - table_pa % self.page
        self._omitted[page_pa] = mode
