"""
Memory-management facts of a kernel, read in bulk
-------------------------------------------------

One module per kernel subsystem the classifier and the audit read:

- :mod:`~mminspect.mm.pagetype`: how ``page_type`` encodes a page table;
- :mod:`~mminspect.mm.struct_page`: the struct page/ptdesc layout and decoding;
- :mod:`~mminspect.mm.memmap`: batched reads and scans of the memmap;
- :mod:`~mminspect.mm.ptl`: split ptlock objects;
- :mod:`~mminspect.mm.memblock`: memblock after boot;
- :mod:`~mminspect.mm.blocks`: memory sections and blocks;
- :mod:`~mminspect.mm.vmstat`: exact node statistics (NR_PAGETABLE).
"""
