"""engine.allocator: freed arrays keep their pages, so recycling them costs no page faults."""
import platform
import subprocess
import sys

import pytest

from minimaskrcnn.engine import allocator

RECYCLE = """
import resource
import numpy as np
from minimaskrcnn.engine.allocator import keep_freed_memory
assert keep_freed_memory()
def rounds(n):                      # what an iteration does: the same large arrays, allocated and freed
    for _ in range(n):
        arrays = [np.ones(5 * 2 ** 20, np.float32) for _ in range(3)]      # 20 MiB each, every page touched
        del arrays
rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (10 * 3 * 20 * 2 ** 20 / 4096))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_recycled_arrays_fault_no_pages_once_freed_memory_is_kept():
    """The share of a recycled array's pages that fault again, per round: none once the allocator keeps freed
    memory (glibc's own heuristics gave 6.6% on this pattern, and more on a training iteration's)."""
    share = float(subprocess.run([sys.executable, "-c", RECYCLE], capture_output=True, text=True,
                                 check=True).stdout)
    assert share < 0.01, share


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False
