"""The builder's internal state: table pages, extents of generated tables, and
allocation pools."""

from __future__ import annotations

# --------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------


class _Table:
    __slots__ = ("pa", "level", "root", "va_start", "parents", "pool", "symbol", "n", "arr")

    def __init__(self, pa, level, root, va_start, pool, symbol, n, arr):
        self.pa = pa
        self.level = level
        self.root = root
        self.va_start = va_start
        self.parents: list[tuple[int, int]] = []
        self.pool = pool
        self.symbol = symbol
        self.n = n
        self.arr = arr          # np.ndarray view (uint64, n entries), or None when lazy


class _Extent:
    """A run of lazily generated PTE tables for a page-granular uniform mapping.

    The tables occupy ``[table_pa0, table_pa0 + n_tables pages)``. Table ``k`` in VA
    order is page ``k`` of that range, or page ``n_tables - 1 - k`` when ``reverse``
    (memblock's top-down order: each table below the previous one).
    """

    __slots__ = ("table_pa0", "n_tables", "va0", "pa0", "attr_bits", "root", "parents_of", "reverse")

    def __init__(self, table_pa0, n_tables, va0, pa0, attr_bits, root, reverse=False):
        self.table_pa0 = table_pa0
        self.n_tables = n_tables
        self.va0 = va0
        self.pa0 = pa0
        self.attr_bits = attr_bits
        self.root = root
        self.reverse = reverse


class _Pool:
    """Bump allocator over a PA range; ``down`` allocates from the top like memblock."""

    def __init__(self, name: str, start: int, end: int, page: int, down: bool):
        self.name = name
        self.start, self.end, self.page, self.down = start, end, page, down
        self.cur = end if down else start

    def alloc(self, n: int = 1) -> int:
        size = n * self.page
        if self.down:
            if self.cur - size < self.start:
                raise MemoryError(f"pool {self.name} exhausted")
            self.cur -= size
            return self.cur
        if self.cur + size > self.end:
            raise MemoryError(f"pool {self.name} exhausted")
        pa = self.cur
        self.cur += size
        return pa

    @property
    def free(self) -> int:
        return (self.cur - self.start) if self.down else (self.end - self.cur)
