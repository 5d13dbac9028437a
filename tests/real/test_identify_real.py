"""identify on real dumps: table pages are named as classify names them
(root, level, origin, ptlock), and every sampled VA of init_mm and efi_mm is
among the VAs identify gives for the page it maps (drgn's follow_phys says
which page that is)."""

import random

import numpy as np
from drgn.helpers.linux.mm import follow_phys

import mminspect
from mminspect.classify import classify_walk, resolve_roots
from mminspect.identify import identify
from mminspect.walk import CLS_LEAF, walk


def test_identify_tables_and_reverse_map(real_prog):
    dump, prog = real_prog
    k = mminspect.open(prog=prog)
    roots = resolve_roots(k, "all")
    walks = [walk(k, r) for r in roots]
    init = walks[0]
    rng = random.Random(0x1d)
    # Table pages, as classify sees them.
    cls = {t.phys: t for t in classify_walk(k, init).records()}
    picks = rng.sample(sorted(cls), min(60, len(cls)))
    got = identify(k, picks, walks=walks, page_facts=False)
    for phys, ident in zip(picks, got):
        rec = next(t for t in ident.tables if t["root"] == "init_mm" and t["phys"] == phys)
        c = cls[phys]
        assert (rec["level"], rec["origin"], rec["ptlock"], rec["va"]) == (c.level_name, c.origin, c.ptlock, c.va)
    # Mapped pages: the VA we started from is among those identify lists.
    leaf = init.runs[init.runs["cls"] == CLS_LEAF]
    vas = []
    for r in rng.choices(list(leaf), k=400):  # with replacement: block-mapped kernels have few runs
        vas.append(int(r["va"]) + rng.randrange(int(r["size"]) >> k.regime.page_shift) * k.regime.page_size)
    pas = [follow_phys(prog["init_mm"].address_of_(), va).value_() for va in vas]
    from mminspect.classify import classifier_for

    mem = classifier_for(k).memory
    ram = [(va, pa) for va, pa in zip(vas, pas) if any(s.start <= pa < s.start + s.size for s in mem.sections)]
    got = identify(k, [pa for _, pa in ram], walks=walks, page_facts=False)
    for (va, pa), ident in zip(ram, got):
        assert any(m.root == "init_mm" and m.va <= va < m.va + m.size for m in ident.mapped_at), \
            f"{va:#x} -> {pa:#x} not in identify's list {ident.mapped_at}"
    assert len(ram) > 50
