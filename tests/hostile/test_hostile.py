"""
The hostile-input suite: every case of :mod:`tests.hostile.cases` run as a
user would run the CLI (in a forked child with a memory limit and a time
limit, :mod:`tests.hostile.runner`), each judged on: one clear line on
stderr, the documented exit status (2 for bad input), the inputs unchanged
by hash and mtime, no file left behind, no hang, no memory blow-up, no
exception's name for a message, no silent wrong answer.

``python -m tests.hostile.suite`` prints the same as counts per family.
"""

import collections
import os

import pytest

from tests.hostile.cases import all_cases
from tests.hostile.inputs import make_inputs
from tests.hostile.suite import run_all

FAMILIES = ("elf", "kdump", "vmcoreinfo", "files", "qmp", "snapshot", "plugin", "output", "interrupt", "tables",
            "args")


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    """(cases, results) of the whole suite, run once, four cases at a time (mostly waiting)."""
    root = str(tmp_path_factory.mktemp("hostile"))
    inputs = make_inputs(os.path.join(root, "in"))
    cases = all_cases(inputs, os.path.join(root, "in"))
    return cases, run_all(cases, root)


def test_at_least_200_cases_in_every_family(hostile):
    cases, _ = hostile
    per = collections.Counter(c.family for c in cases)
    assert len(cases) >= 200 and set(per) == set(FAMILIES), per
    assert len({c.id for c in cases}) == len(cases), "case names repeat"


@pytest.mark.parametrize("family", FAMILIES)
def test_family(hostile, family):
    cases, results = hostile
    failed = {c.id: (results[c.id][1], results[c.id][0].status, results[c.id][0].stderr[-300:])
              for c in cases if c.family == family and results[c.id][1]}
    assert not failed, "\n".join(f"{cid}: {fails} exit {st}: {err!r}" for cid, (fails, st, err) in failed.items())


def test_judge_sees_failures(tmp_path):
    """The judge is not a rubber stamp: a run that changes its input, leaves
    a file, prints two lines or exits 0 on bad input is caught."""
    from tests.hostile.runner import Case, Outcome, judge

    case = Case("x", "y", [], lambda d: None)
    clean = Outcome(2, None, "", "mminspect: error: bad\n", 0.1, {"a": ("h", 1)}, {"a": ("h", 1)})
    assert judge(case, clean) == []
    assert judge(case, Outcome(2, None, "", "x\n", 0.1, {"a": ("h", 1)}, {"a": ("h", 2)})) == ["input changed"]
    assert judge(case, Outcome(2, None, "", "x\n", 0.1, {}, {"a.tmp": ("h", 1)})) == ["left behind"]
    assert judge(case, Outcome(2, None, "", "x\ny\n", 0.1, {}, {})) == ["not one line"]
    assert judge(case, Outcome(0, None, "out", "", 0.1, {}, {})) == ["accepted"]
    assert judge(case, Outcome(None, None, "", "", 20, {}, {})) == ["hang"]
    assert judge(case, Outcome(2, None, "", "mminspect: error: ValueError: x\n", 0.1, {}, {})) == ["exception name"]
    assert judge(case, Outcome(2, None, "", "mminspect: error: out of memory\n", 0.1, {}, {})) == ["memory"]
