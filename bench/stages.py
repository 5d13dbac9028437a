"""
Benchmark stages, each run in a fresh process
---------------------------------------------

``python -m bench.stages STAGE KERNEL_DIR [--repeat N]`` opens the cached
vmcore through mminspect's drgn target, runs one stage, and prints one line
``BENCH-RESULT {json}``: seconds (the best of the repeats), CPU seconds, the
peak RSS of the process while the stage ran (VmHWM, reset after opening the
dump where the kernel allows it), and checks of the stage's output against
what the generator built. A stage that cannot run on this kernel (a 64 GiB
removal with 4 GiB hot-added) reports ``status: n/a`` with the reason.

Stages:

==============  ==========================================================
``read``        (a) the baseline: every init_mm table page read once
                through the same target, one ``read_phys`` per page
``read-bulk``   the same pages, physically contiguous ones in 1 MiB reads
``walk``        (b) ``walk(kernel, init_mm)``
``walk-before`` the walker before issue 7 (mminspect/walk.py at BEFORE_REV, loaded from git)
``classify``    (c) walk, then classify every table page (struct page
                reads); the time is classify's alone, ``walk_seconds``
                holds the walk's
``audit``       (d) the NR_PAGETABLE audit
``remove-1G``   (e) simulate-remove of the top 1 GiB of RAM (hot-added)
``remove-64G``  (e) simulate-remove of the top 64 GiB (all hot-added)
``read-memmap-cold``, ``audit-cold``: the memmap read and the audit with the
                dump evicted from the page cache before each run
                (:mod:`bench.cold`)
``walk-roots``  (g) every root walked once (init_mm, efi_mm): the baseline
                of identify
``identify-10k`` (g) identify 10,000 physical addresses (half table pages,
                half random RAM) against every root, struct pages included
``walk-two``    (h) every root of two states walked: the baseline of diff
``diff``        (h) diff of the kernel against a second state of it, the
                hot-added range's linear map removed (its PUD entries
                cleared in a sparse copy of the dump, made once, untimed)
==============  ==========================================================
"""

import argparse
import gc
import json
import os
import sys
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np

GiB = 1 << 30


class NotAvailable(Exception):
    """The stage cannot run: the kernel lacks something (or git, for walk-before)."""


def vm_status(key: str) -> int:
    """A /proc/self/status value in KiB (VmHWM, VmRSS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+: ``echo 5 > clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- stages ------------------------------------------------------------------
# Each returns (run, check): run() does the timed work and returns a result;
# check(result) returns a dict of facts about it (not timed).


def _load(meta, name: str) -> np.ndarray:
    return np.load(os.path.join(meta["_dir"], name + ".npy"))


def _linear_mapped(kernel, w) -> int:
    from mminspect.walk import CLS_LEAF

    runs = w.runs[w.runs["cls"] == CLS_LEAF]
    lo, hi = np.uint64(kernel.layout.page_offset), np.uint64(kernel.layout.page_end)
    sel = (runs["va"] >= lo) & (runs["va"] < hi)
    return int(runs["size"][sel].sum())


def stage_read(kernel, meta, tables) -> Tuple[Callable, Callable]:
    t = kernel.target
    ps = meta["page_size"]
    pas = tables.tolist()

    def run():
        n = 0
        for pa in pas:
            n += len(t.read_phys(pa, ps))
        return n

    return run, lambda n: {"pages": len(pas), "bytes": n, "ok": n == len(pas) * ps}


def stage_read_bulk(kernel, meta, tables) -> Tuple[Callable, Callable]:
    t = kernel.target
    ps = meta["page_size"]
    brk = np.nonzero(np.diff(tables) != np.uint64(ps))[0] + 1
    starts = np.concatenate(([0], brk)).tolist()
    ends = np.concatenate((brk, [len(tables)])).tolist()
    per = max(1, (1 << 20) // ps)
    pieces = []
    for s, e in zip(starts, ends):
        for s2 in range(s, e, per):
            pieces.append((int(tables[s2]), (min(e, s2 + per) - s2) * ps))

    def run():
        n = 0
        for pa, size in pieces:
            n += len(t.read_phys(pa, size))
        return n

    return run, lambda n: {"reads": len(pieces), "bytes": n, "ok": n == len(tables) * ps}


def _walk_check(kernel, meta, tables):
    def check(w):
        mapped = _linear_mapped(kernel, w)
        found = np.sort(w.table_phys)
        return {
            "tables": int(w.table_count),
            "expected_tables": len(tables),
            "tables_match": bool(np.array_equal(found, tables)),
            "linear_mapped": mapped,
            "linear_size": meta["linear_size"],
            "problems": len(w.problems),
            "runs": int(len(w.runs)),
            "reads": int(w.stats.get("reads", 0)),
            "ok": bool(np.array_equal(found, tables)) and mapped == meta["linear_size"] and not w.problems,
        }

    return check


def stage_walk(kernel, meta, tables):
    from mminspect.walk import walk

    root = kernel.root("init_mm")
    return (lambda: walk(kernel, root)), _walk_check(kernel, meta, tables)


#: The last commit of mminspect/walk.py before issue 7's performance work.
BEFORE_REV = "f8768a0"


def _walker_before():
    """mminspect/walk.py as it was at BEFORE_REV, imported from git so that
    no second copy of the walker lives in the tree."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "-C", str(repo), "show", f"{BEFORE_REV}:mminspect/walk.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise NotAvailable(f"not available: git cannot show mminspect/walk.py at {BEFORE_REV}") from None
    spec = importlib.util.spec_from_loader("mminspect_walk_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{BEFORE_REV}:mminspect/walk.py", "exec"), module.__dict__)
    return module.walk


def stage_walk_before(kernel, meta, tables):
    walk = _walker_before()

    root = kernel.root("init_mm")
    return (lambda: walk(kernel, root)), _walk_check(kernel, meta, tables)


def stage_classify(kernel, meta, tables):
    from mminspect.classify import ORIGINS, classify_walk
    from mminspect.walk import walk

    t0 = time.perf_counter()
    w = walk(kernel, kernel.root("init_mm"))
    walk_seconds = time.perf_counter() - t0

    def check(out):
        u, n = np.unique(out.origin, return_counts=True)
        ok = out.facts["ok"]
        return {
            "walk_seconds": walk_seconds,
            "classified": len(out),
            "origins": {ORIGINS[int(a)]: int(b) for a, b in zip(u, n)},
            "typed": int(np.count_nonzero(out.facts["table"] & ok)),
            "reserved": int(np.count_nonzero(out.facts["reserved"] & ok)),
            "mismatches": int(out.mismatches),
            "findings": len(out.findings),
            "stats": out.stats,
            "expected_typed": len(np.intersect1d(tables, _load(meta, "typed"))),
            "expected_reserved": len(np.intersect1d(tables, _load(meta, "reserved"))),
            "ok": len(out) == len(tables),
        }

    return (lambda: classify_walk(kernel, w)), check


def stage_audit(kernel, meta, tables):
    from mminspect.classify import audit

    def check(res):
        return {"typed_count": res.typed_count, "counter": res.counter, "difference": res.difference,
                "scanned_pages": res.scanned_pages, "unreadable_pages": res.unreadable_pages,
                "roots": res.roots, "root_errors": res.root_errors,
                "unreachable_typed": len(res.unreachable_typed), "stats": res.stats, "ok": True}

    return (lambda: audit(kernel)), check


def _remove(size: int):
    def stage(kernel, meta, tables):
        from mminspect.hotremove import Proposal, capture_snapshot, select_policy, simulate

        hot = meta.get("hotadd")
        if not hot or hot[1] < size:
            raise NotAvailable(f"kernel has {((hot or [0, 0])[1]) >> 30} GiB hot-added, block is {size >> 30} GiB")
        end = hot[0] + hot[1]
        prop = Proposal(end - size, end)
        times: Dict[str, float] = {}

        def run():
            t0 = time.perf_counter()
            snap = capture_snapshot(kernel)
            t1 = time.perf_counter()
            res = simulate(snap, prop, select_policy(snap.era), force=True)
            times["capture_seconds"] = t1 - t0
            times["simulate_seconds"] = time.perf_counter() - t1
            return res

        def check(res):
            return {
                **times,
                "refusals": [r.rule for r in res.refusals],
                "freed_tables": len(res.freed),
                "kept_tables": len(res.kept),
                "warnings": len(res.warnings),
                "findings": len(res.findings),
                "delta_nr_pagetable": res.delta_nr_pagetable,
                "ok": res.simulated,
            }

        return run, check

    return stage


def stage_walk_roots(kernel, meta, tables):
    from mminspect.classify import resolve_roots
    from mminspect.walk import walk

    roots = resolve_roots(kernel, "all")

    def check(ws):
        return {"roots": [w.root.name for w in ws], "tables": sum(w.table_count for w in ws), "ok": True}

    return (lambda: [walk(kernel, r) for r in roots]), check


def stage_identify(kernel, meta, tables):
    from mminspect.identify import identify

    rng = np.random.default_rng(10_000)
    ps = meta["page_size"]
    lo, size = meta["boot"][0], meta["linear_size"]  # RAM: boot memory, then the hot-added part
    pick = rng.choice(tables, 5000, replace=False)
    data = (lo + rng.integers(0, size // ps, 5000) * ps).astype(np.uint64)
    pas = np.concatenate((pick, data)).tolist()

    def check(res):
        tab = sum(1 for i in res[:5000] if i.is_page_table)
        mapped = sum(1 for i in res[5000:] if any(m.root == "init_mm" for m in i.mapped_at))
        return {"addresses": len(res), "tables_found": tab, "data_mapped_in_init_mm": mapped,
                "ok": tab == 5000 and mapped == 5000}

    return (lambda: identify(kernel, pas)), check


def removed_state(kernel, meta) -> str:
    """A second state of the bench kernel: a sparse copy of its dump with the
    PUD entries that map the hot-added range's linear alias cleared, as a
    removal of that memory leaves them (made once, beside the dump)."""
    import shutil
    import subprocess

    from mminspect.target.elf import PT_LOAD, core_phdrs
    from mminspect.walk import walk

    path = os.path.join(meta["_dir"], "vmcore-removed")
    if os.path.exists(path):
        return path
    hot = meta.get("hotadd")
    if not hot:
        raise NotAvailable("kernel has no hot-added memory to remove")
    lo, hi = kernel.phys_to_virt(hot[0]), kernel.phys_to_virt(hot[0] + hot[1])
    w = walk(kernel, kernel.root("init_mm", lo, hi))
    pmd = (w.table_level == 2) & (w.table_va >= np.uint64(lo)) & (w.table_va < np.uint64(hi))
    entries = []
    for phys in w.table_phys[pmd].tolist():
        for p in w.parents_of(phys):
            entries.append(p.phys + 8 * p.index)
    loads = [(paddr, off, filesz) for ptype, off, _, paddr, filesz, _ in core_phdrs(kernel.target.core_file.path)
             if ptype == PT_LOAD]
    tmp = path + ".tmp"
    if shutil.which("cp"):
        subprocess.run(["cp", "--sparse=always", kernel.target.core_file.path, tmp], check=True)
    else:
        shutil.copyfile(kernel.target.core_file.path, tmp)
    with open(tmp, "r+b") as f:
        for pa in entries:
            seg = next(x for x in loads if x[0] <= pa < x[0] + x[2])
            f.seek(seg[1] + pa - seg[0])
            f.write(b"\0" * 8)
    os.rename(tmp, path)
    return path


def _second(kernel, meta):
    import mminspect

    return mminspect.open(core=removed_state(kernel, meta))


def stage_walk_two(kernel, meta, tables):
    from mminspect.classify import resolve_roots
    from mminspect.walk import walk

    other = _second(kernel, meta)
    ra, rb = resolve_roots(kernel, "all"), resolve_roots(other, "all")

    def run():
        return [walk(kernel, r) for r in ra] + [walk(other, r) for r in rb]

    return run, lambda ws: {"tables": sum(w.table_count for w in ws), "ok": True}


def stage_diff(kernel, meta, tables):
    from mminspect.diff import diff, state_of_kernel

    other = _second(kernel, meta)
    hot = meta["hotadd"]

    def run():
        return diff(state_of_kernel(kernel, "a"), state_of_kernel(other, "b"))

    def check(d):
        removed = [m for m in d.mappings.get("init_mm", []) if m["kind"] == "removed"]
        gone = sum(m["size"] for m in removed)
        n_pmd = hot[1] >> 30
        return {"freed": len(d.freed), "allocated": len(d.allocated), "moved": len(d.moved),
                "removed_bytes": gone, "ranges": sum(len(v) for v in d.mappings.values()),
                "ok": gone == hot[1] and len(d.freed) == n_pmd * (1 + meta["page_size"] // 8)
                and not len(d.allocated)}

    return run, check


STAGES = {
    "read": stage_read,
    "read-bulk": stage_read_bulk,
    "walk": stage_walk,
    "walk-before": stage_walk_before,
    "classify": stage_classify,
    "audit": stage_audit,
    "remove-1G": _remove(1 * GiB),
    "remove-64G": _remove(64 * GiB),
    "walk-roots": stage_walk_roots,
    "identify-10k": stage_identify,
    "walk-two": stage_walk_two,
    "diff": stage_diff,
}


def _cold_stages() -> None:
    from bench.cold import stage_audit_cold, stage_read_memmap_cold

    STAGES["read-memmap-cold"] = stage_read_memmap_cold
    STAGES["audit-cold"] = stage_audit_cold


_cold_stages()


def run_stage(stage: str, kernel_dir: str, repeat: int = 1, budget: float = 20.0) -> Dict:
    import mminspect

    with open(os.path.join(kernel_dir, "meta.json")) as f:
        meta = json.load(f)
    meta["_dir"] = kernel_dir
    tables = np.load(os.path.join(kernel_dir, "tables.npy"))
    out: Dict[str, object] = {"stage": stage, "kernel": meta["key"]}
    t0 = time.perf_counter()
    kernel = mminspect.open(core=os.path.join(kernel_dir, "vmcore"))
    out["open_seconds"] = time.perf_counter() - t0
    out["rss_after_open_kib"] = vm_status("VmRSS")
    try:
        run, check, *before = STAGES[stage](kernel, meta, tables)
    except NotAvailable as e:
        out.update(status="n/a", reason=str(e))
        return out
    gc.collect()
    out["peak_reset"] = reset_peak()
    times, cpus = [], []
    result = None
    spent = 0.0
    for i in range(max(1, repeat)):
        result = None
        gc.collect()
        for prepare in before:  # untimed: e.g. evict the dump from the page cache
            prepare()
        c0, w0 = time.process_time(), time.perf_counter()
        result = run()
        wall = time.perf_counter() - w0
        times.append(wall)
        cpus.append(time.process_time() - c0)
        spent += wall
        if spent + wall > budget:
            break
    out["peak_rss_kib"] = vm_status("VmHWM")
    out.update(status="ok", seconds=min(times), cpu_seconds=min(cpus), times=times)
    try:
        out["checks"] = check(result)
    except Exception as e:  # a check must not hide the timing
        out["checks"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    # The audit scans the memmap in a forked child: its peak counts too.
    child = (out["checks"].get("stats") or {}).get("scan_child_peak_kib", 0)
    out["peak_rss_kib"] = max(out["peak_rss_kib"], child or 0)
    return out


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stages")
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("kernel_dir")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--budget", type=float, default=20.0, help="stop repeating after this many seconds")
    a = ap.parse_args(argv)
    try:
        res = run_stage(a.stage, a.kernel_dir, a.repeat, a.budget)
    except Exception as e:
        import traceback

        res = {"stage": a.stage, "status": "error", "reason": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc(limit=8)}
    sys.stdout.write("BENCH-RESULT " + json.dumps(res, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
