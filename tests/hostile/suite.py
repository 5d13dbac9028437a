"""
Running every hostile case, four at a time
-----------------------------------------

:func:`run_all` sets up each case in its own short directory (Unix socket
paths must stay under 108 bytes), serves its QMP peer if it has one, runs
it (:func:`tests.hostile.runner.run`) and judges it. Cases run on
:data:`WORKERS` threads, each forking its own CLI child.

``python -m tests.hostile.suite [--json FILE]`` prints the failures per
family of the code it imports (``PYTHONPATH=/other/tree`` measures another
version), as the issue's closing note reports them.
"""

import collections
import importlib
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

from tests.hostile.runner import FAILURES, Case, Outcome, judge, run

WORKERS = 4

#: Imported before any fork, so no child waits on an import lock a sibling
#: thread held when it forked.
PRELOAD = ("mminspect.cli", "mminspect.commands", "mminspect.capture", "mminspect.hotremove",
           "mminspect.hotremove.policies", "mminspect.classify", "mminspect.report.walk",
           "mminspect.report.ptdump", "mminspect.report.classify", "mminspect.report.simulate",
           "mminspect.qmp", "mminspect.target", "mminspect.target.bundle", "mminspect.target.kdump",
           "drgn.helpers.linux.pid", "importlib.util", "traceback", "json", "zipfile")


def preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    try:  # entry points are read (and cached) on the first policy lookup
        from mminspect.hotremove import available_policies

        available_policies()
    except Exception:
        pass


def run_one(case: Case, root: str) -> Tuple[Outcome, List[str]]:
    d = tempfile.mkdtemp(prefix="c", dir=root)
    case.setup(d)
    stop = None
    if case.qmp:
        from tests.hostile.qmp_peers import serve

        stop = serve(os.path.join(d, "qmp.sock"), case.qmp)
    try:
        outcome = run(case, d)
    finally:
        if stop:
            stop()
    return outcome, judge(case, outcome)


def run_all(cases: List[Case], root: str, workers: int = WORKERS) -> Dict[str, Tuple[Outcome, List[str]]]:
    preload()
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda c: (c.id, run_one(c, root)), cases)
        return dict(results)


def counts(cases: List[Case], results) -> Dict[str, collections.Counter]:
    """family -> Counter of failure kinds (and 'cases')."""
    out: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for c in cases:
        out[c.family]["cases"] += 1
        fails = results[c.id][1]
        if fails:
            out[c.family]["failed"] += 1
        for f in fails:
            out[c.family][f] += 1
    return out


def main() -> None:
    import json

    from tests.hostile.cases import all_cases
    from tests.hostile.inputs import make_inputs

    root = tempfile.mkdtemp(prefix="mmh", dir="/tmp")
    inputs = make_inputs(os.path.join(root, "in"))
    cases = all_cases(inputs, os.path.join(root, "in"))
    results = run_all(cases, root)
    table = counts(cases, results)
    cols = ["cases", "failed", *FAILURES]
    print(f"{'family':<11}" + "".join(f"{c[:9]:>10}" for c in cols))
    total = collections.Counter()
    for fam, cnt in table.items():
        total.update(cnt)
        print(f"{fam:<11}" + "".join(f"{cnt[c]:>10}" for c in cols))
    print(f"{'all':<11}" + "".join(f"{total[c]:>10}" for c in cols))
    if "--json" in sys.argv:
        detail = {cid: {"fails": f, "status": o.status, "signal": o.signal, "seconds": round(o.seconds, 2),
                        "stderr": o.stderr[-400:]} for cid, (o, f) in results.items()}
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as fp:
            json.dump(detail, fp, indent=1)


if __name__ == "__main__":
    main()
