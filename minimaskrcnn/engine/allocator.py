"""Keep freed memory in the process (glibc's malloc), so each iteration's arrays land on pages already mapped.

NumPy allocates every array with ``malloc``. glibc serves a request above ``M_MMAP_THRESHOLD`` bytes with a
fresh ``mmap`` and unmaps it on ``free``; smaller ones come from the heap, whose top goes back to the OS once
more than ``M_TRIM_THRESHOLD`` bytes are free there. Either way the next array of that size starts on pages the
kernel has to fault in and zero. A training iteration allocates and frees the same large arrays every time
(conv columns and row shifts, activations kept for the backward), so it pays this every iteration: the demo
(2 processes, 2,800 iterations) spent 124 s of its 940 CPU-seconds in the kernel, on 28 million page faults.
glibc raises the mmap threshold by itself as large blocks are freed, but keeps trimming the heap.

:func:`keep_freed_memory` fixes the mmap threshold at glibc's maximum (32 MiB) and stops the trimming: measured
293 -> 271 ms per training iteration of the demo's model (``bench/profile_train.py`` with and without
``--default-malloc``, one thread, trained weights), and the demo from 7:58 to 7:13 (bench/RESULTS.md). The
price: the process's resident memory stays at its high-water mark instead of shrinking after a peak (blocks
over 32 MiB are still unmapped when freed). The commands (``python -m minimaskrcnn ...``) and ``ablate``'s
worker processes call it; a notebook or a script can too.
"""
from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2 ** 20       # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 2 ** 31 - 1        # never trim (the largest value mallopt's int takes)
TOP_PAD = 64 * 2 ** 20              # grow the heap in steps of 64 MiB (address space only until touched)


def keep_freed_memory() -> bool:
    """Set glibc's malloc as above for this process; True if done, False where the C library is not glibc
    (macOS, musl: their allocators are left as they are)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt          # the C library this process already uses
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
