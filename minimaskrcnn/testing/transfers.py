"""The host-device traffic that the CuPy stand-in (``fakecupy``) counts, with the source lines that cause it."""
from __future__ import annotations

import collections
import contextlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = os.path.dirname(_HERE)


class Stats:
    """Host-device traffic: ``to_host``, ``to_device``, ``syncs`` (by the caller), ``hidden_syncs`` (inside
    CuPy functions), each a count and a Counter of the package's source lines that caused them."""

    KINDS = ("to_host", "to_device", "syncs", "hidden_syncs")

    def __init__(self):
        self.reset()

    def reset(self):
        self.where = {k: collections.Counter() for k in self.KINDS}

    def __getitem__(self, kind):
        return sum(self.where[kind].values())

    def total(self):
        return {k: self[k] for k in self.KINDS}

    def add(self, kind):
        self.where[kind][_caller()] += 1


_ABSPATHS: dict = {}


def _caller() -> str:
    """``file:line`` of the innermost frame in minimaskrcnn outside this module and backend.py."""
    f = sys._getframe(2)
    while f is not None:
        name = _ABSPATHS.get(f.f_code.co_filename) or _ABSPATHS.setdefault(f.f_code.co_filename,
                                                                              os.path.abspath(f.f_code.co_filename))
        if name.startswith(_PACKAGE) and not name.startswith(_HERE) and not name.endswith("backend.py"):
            return f"{os.path.relpath(name, os.path.dirname(_PACKAGE))}:{f.f_lineno}"
        f = f.f_back
    return "<outside minimaskrcnn>"


stats = Stats()


@contextlib.contextmanager
def counting():
    """``with counting() as s:`` resets :data:`stats` and yields it."""
    stats.reset()
    yield stats
