import os

# One BLAS thread for the test suite: its matrices are small, where OpenBLAS's threads cost more than they
# save, and on a busy machine they thrash (10x slower). Set before NumPy loads, so the notebook kernels
# that nbmake starts inherit it too. The demo and the benchmarks keep the default (all cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)
