"""mminspect.forked: work in a forked child, and what comes back."""

import threading

import numpy as np
import pytest

from mminspect.forked import in_child


def test_the_childs_result_comes_back():
    big = np.arange(1 << 20, dtype=np.uint64)  # inherited, not sent
    join = in_child(lambda: (int(big.sum()), big[::4096].copy()))
    assert join is not None
    total, sample = join()
    assert total == int(big.sum()) and np.array_equal(sample, big[::4096])


def test_what_the_child_raises_is_raised_here():
    def fail():
        raise KeyError("no such section")

    join = in_child(fail)
    with pytest.raises(RuntimeError, match="KeyError: 'no such section'"):
        join()


def test_no_fork_while_other_threads_run():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert in_child(lambda: 1) is None
    finally:
        stop.set()
        t.join()
    assert in_child(lambda: 1)() == 1
