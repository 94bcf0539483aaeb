"""A strict stand-in for CuPy, for tests on machines without a GPU: ``backend.use_fake_cupy(fakecupy)``.

Its arrays (:class:`ndarray`, a wrapper around a NumPy array, not a subclass) live in host memory but obey
the rules that break NumPy code on a first real GPU, so those bugs show on any machine:

Enforced, as CuPy does:
  - an operation mixing a device array with a NumPy array raises ``TypeError`` (NumPy scalars, 0-d NumPy
    arrays and Python numbers are fine); so do Python lists as operands of arithmetic and ufuncs;
  - ``np.asarray(x)`` / ``np.array(x)`` / ``__array__`` raise: ``x.get()`` and ``asnumpy(x)`` are the only
    ways back to the host;
  - ``numpy.add.at`` and every other ufunc method except a plain call refuse (``cupyx.scatter_add`` instead);
  - reductions and integer indexing give 0-d device arrays, not Python or NumPy scalars;
  - a ``RawKernel`` takes device arrays only (it runs the CPU emulator of ``ops/rawkernel.py``).

Enforced, stricter than CuPy (each is a silent copy or a dispatch that happens to work there):
  - every NumPy function or ufunc called on a device array raises (CuPy dispatches the ones it has through
    ``__array_function__``/``__array_ufunc__``; the project's rule is to call ``xp.*``);
  - a NumPy array as an index or as the value of an assignment raises (CuPy copies it to the device);
  - the views of ``lib.stride_tricks.as_strided`` are read-only.

Counted in :data:`stats` (see :func:`counting`): copies to the host (``asnumpy``, ``.get()``, ``tolist``),
copies to the device (``asarray``/``array`` of host data), syncs (``float``/``int``/``bool``/``.item()``/
formatting of a device value), and the syncs CuPy makes inside functions whose output size depends on the
data (``nonzero``, boolean masks, ``unique``, ``bincount``).

Not modelled: streams and asynchrony (every call finishes at once), memory pools and out-of-memory, real
parallel kernels (the emulator runs threads one after another, so a race is not found), CuPy's dtype
promotion where it differs from NumPy's, multiple devices. Only the surface minimaskrcnn uses is here;
any other attribute raises ``AttributeError`` saying so.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np

__all__ = ["ndarray", "asarray", "array", "asnumpy", "get_array_module", "RawKernel", "cupyx", "stats",
           "counting"]

from .transfers import Stats, counting, stats  # noqa: F401  (part of the stand-in's interface)


def _mixed(what: str, x) -> TypeError:
    return TypeError(f"{what}: a NumPy array (shape {np.shape(x)}) mixed with device arrays; CuPy raises here. "
                     "Create it with xp, or move it with minimaskrcnn.backend.to_device first")


def _scalar(x) -> bool:
    return isinstance(x, (bool, int, float, complex, np.generic)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _operand(x, what: str):
    """The NumPy array or scalar behind an operand of arithmetic or of a ufunc."""
    if isinstance(x, ndarray):
        return x._a
    if _scalar(x):
        return x
    if isinstance(x, np.ndarray):
        raise _mixed(what, x)
    raise TypeError(f"{what}: unsupported operand type {type(x).__name__} (CuPy takes device arrays and scalars)")


def _unwrap(x, what: str):
    """Arguments of a function: device arrays unwrapped, inside lists and tuples too; NumPy arrays refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and x.ndim > 0:
        raise _mixed(what, x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, what) for v in x)
    return x


def _wrap(r):
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):       # CuPy returns 0-d device arrays where NumPy returns scalars
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _index(key, what: str):
    if isinstance(key, tuple):
        return tuple(_index(k, what) for k in key)
    if isinstance(key, ndarray):
        if key.dtype == np.bool_:
            stats.add("hidden_syncs")   # the result's size is the number of True values: CuPy reads it back
        return key._a
    if isinstance(key, list):
        stats.add("to_device")          # CuPy copies a list index to the device
    if isinstance(key, np.ndarray) and key.ndim > 0:
        raise TypeError(f"{what}: a NumPy array (shape {key.shape}) as the index of a device array; CuPy copies "
                        "it to the device on every call: build the index with xp")
    return key


class ndarray:
    """A device array (host memory underneath): see the module's docstring for the rules it obeys."""

    __slots__ = ("_a",)
    __array_ufunc__ = None   # NumPy's operators then defer to ours, and numpy ufuncs refuse
    __hash__ = None

    def __init__(self, a):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (CuPy raises here): use .get(), "
                        "cupy.asnumpy or minimaskrcnn.backend.to_numpy")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a device array: call xp.{func.__name__} "
                        "(xp = minimaskrcnn.backend.get_xp(...))")

    # ---- the ways back to the host --------------------------------------------------------------------
    def get(self):
        stats.add("to_host")
        return self._a.copy()

    def tolist(self):
        stats.add("to_host")
        return self._a.tolist()

    def item(self):
        stats.add("syncs")
        return self._a.item()

    def _sync(self, convert):
        stats.add("syncs")
        return convert(self._a)

    __float__ = lambda self: self._sync(float)
    __int__ = lambda self: self._sync(int)
    __bool__ = lambda self: self._sync(bool)

    def __index__(self):
        if self._a.dtype.kind not in "iub":
            raise TypeError(f"a device array of dtype {self.dtype} cannot be used as an index")
        return self._sync(int)

    def __format__(self, spec):
        stats.add("syncs")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        stats.add("syncs")
        return "fakecupy." + repr(self._a)

    __str__ = __repr__

    # ---- attributes and methods --------------------------------------------------------------------
    for _name in ("shape", "dtype", "ndim", "size", "itemsize", "nbytes", "strides", "flags"):
        locals()[_name] = property(lambda self, _name=_name: getattr(self._a, _name))
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __getattr__(self, name):
        if name in _METHODS:
            method = getattr(self._a, name)

            def call(*args, **kwargs):
                unknown = set(kwargs) - set(_METHODS[name])
                if unknown:
                    raise TypeError(f"ndarray.{name}: CuPy takes no keyword {sorted(unknown)[0]!r}")
                if name == "nonzero":
                    stats.add("hidden_syncs")
                return _wrap(method(*_unwrap(args, f"ndarray.{name}"),
                                    **{k: _unwrap(v, f"ndarray.{name}") for k, v in kwargs.items()}))
            return call
        raise AttributeError(f"fakecupy.ndarray has no attribute {name!r}: the stand-in has only the part of "
                             "CuPy that minimaskrcnn uses (add it to fakecupy if CuPy has it)")

    def __getitem__(self, key):
        return _wrap(self._a[_index(key, "indexing")])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise _mixed("assignment into a device array", value)
        self._a[_index(key, "assignment")] = _operand(value, "assignment into a device array")


# CuPy's ndarray methods with the keywords CuPy's signatures take (NumPy's take more: e.g. max(initial=)).
_REDUCE = ("axis", "dtype", "out", "keepdims")
_METHODS = {"astype": ("dtype", "order", "casting", "subok", "copy"), "reshape": ("order", "copy"),
            "sum": _REDUCE, "mean": _REDUCE, "prod": _REDUCE, "std": _REDUCE + ("ddof",), "var": _REDUCE + ("ddof",),
            "max": ("axis", "out", "keepdims"), "min": ("axis", "out", "keepdims"), "argmax": _REDUCE,
            "argmin": _REDUCE, "any": ("axis", "out", "keepdims"), "all": ("axis", "out", "keepdims"),
            "cumsum": ("axis", "dtype", "out"), "copy": ("order",), "transpose": (), "ravel": ("order",),
            "flatten": ("order",), "clip": ("min", "max", "out"), "squeeze": ("axis",), "swapaxes": (),
            "repeat": ("axis",), "take": ("axis", "out"), "argsort": ("axis", "kind"), "sort": ("axis", "kind"),
            "fill": (), "round": ("decimals", "out"), "dot": ("out",), "nonzero": (), "view": ("dtype",)}


def _binary(op):
    def forward(self, other):
        return _wrap(op(self._a, _operand(other, f"operator {op.__name__}")))

    def reflected(self, other):
        return _wrap(op(_operand(other, f"operator {op.__name__}"), self._a))
    return forward, reflected


def _inplace(op):
    def method(self, other):
        op(self._a, _operand(other, f"operator {op.__name__}"))
        return self
    return method


_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
        "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
        "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
        "lshift": np.left_shift, "rshift": np.right_shift}
for _name, _op in _OPS.items():
    _f, _r = _binary(_op)
    setattr(ndarray, f"__{_name}__", _f)
    setattr(ndarray, f"__r{_name}__", _r)
    setattr(ndarray, f"__i{_name}__", _inplace(lambda a, b, _op=_op: _op(a, b, out=a)))
for _name, _op in {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
                   "ge": np.greater_equal}.items():
    setattr(ndarray, f"__{_name}__", _binary(_op)[0])
for _name, _op in {"neg": np.negative, "pos": np.positive, "abs": np.abs, "invert": np.invert}.items():
    setattr(ndarray, f"__{_name}__", lambda self, _op=_op: ndarray(_op(self._a)))


# ---- module functions -------------------------------------------------------------------------------
def asarray(a, dtype=None):
    """A device array: ``a`` itself (cast) when it already is one, else a copy of host data to the device."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    if isinstance(a, (list, tuple)) and any(isinstance(v, ndarray) for v in a):
        raise TypeError("asarray of a list holding device arrays: use stack")
    stats.add("to_device")
    return ndarray(np.array(a, dtype=dtype))


def array(a, dtype=None, copy=True):
    out = asarray(a, dtype)
    return ndarray(out._a.copy()) if copy and out is a else out


def asnumpy(a):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):       # CuPy's takes device arrays only
        raise TypeError(f"ascontiguousarray: expected a device array, got {type(a).__name__}")
    return ndarray(np.ascontiguousarray(a._a, dtype))


class RawKernel:
    """``cupy.RawKernel(code, name)`` run by the CPU emulator; its arguments must be device arrays and NumPy
    scalars of the parameters' types."""

    def __init__(self, code, name, options=(), backend="nvrtc"):
        from ..ops.rawkernel import KERNEL_DIR, EmulatedKernel
        # the file's own name keeps the emulator's compiled-library cache shared with the NumPy path
        filename = next((str(p) for p in sorted(KERNEL_DIR.glob("*.cu")) if p.read_text() == code), "<RawKernel>")
        self._kernel = EmulatedKernel(code, name, filename=filename)

    def __call__(self, grid, block, args, shared_mem=0):
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                raise TypeError(f"RawKernel {self._kernel.name}: argument {i} is a NumPy array; a GPU kernel "
                                "reads device memory only")
        self._kernel(grid, block, tuple(a._a if isinstance(a, ndarray) else a for a in args), shared_mem)


def _scatter_add(a, slices, value):
    if not isinstance(a, ndarray):
        raise TypeError(f"cupyx.scatter_add: expected a device array, got {type(a).__name__}")
    np.add.at(a._a, _index(slices, "cupyx.scatter_add"), _operand(value, "cupyx.scatter_add"))


def _as_strided(x, shape=None, strides=None):
    return ndarray(np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides, writeable=False))


cupyx = SimpleNamespace(scatter_add=_scatter_add)
lib = SimpleNamespace(stride_tricks=SimpleNamespace(as_strided=_as_strided))
cuda = SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=lambda: 1))

# Functions that make arrays from shapes and numbers (no array inputs).
_CREATION = {"zeros", "ones", "empty", "full", "arange", "linspace", "eye"}
# Functions whose first argument is a sequence of device arrays.
_SEQUENCE = {"concatenate", "stack", "vstack", "hstack"}
# Functions CuPy gives a data-dependent output size: it reads a count back from the device (a sync).
_SYNCING = {"nonzero", "flatnonzero", "argwhere", "unique", "bincount"}
_FUNCTIONS = _CREATION | _SEQUENCE | _SYNCING | {
    "zeros_like", "ones_like", "empty_like", "full_like", "where", "take", "take_along_axis", "put_along_axis",
    "broadcast_to", "pad", "repeat", "tile", "argsort", "argpartition", "sort", "cumsum", "sum", "prod", "mean",
    "max", "min", "amax", "amin", "argmax", "argmin", "all", "any", "clip", "reshape", "transpose", "ravel",
    "expand_dims", "squeeze", "moveaxis", "flip", "nan_to_num", "count_nonzero", "searchsorted", "meshgrid",
    "einsum", "tensordot", "dot", "diff", "round", "packbits"}
# ufuncs (operands: device arrays and scalars)
_UFUNCS = {"add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "power", "maximum",
           "minimum", "fmax", "fmin", "exp", "log", "log2", "log1p", "expm1", "sqrt", "square", "abs", "absolute",
           "sign", "floor", "ceil", "trunc", "rint", "isfinite", "isnan", "isinf", "equal", "not_equal", "less",
           "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_not", "logical_xor",
           "negative", "tanh", "sin", "cos", "arctan2", "hypot", "remainder", "mod", "matmul"}
_CONSTANTS = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
              "uint64", "bool_", "intp", "dtype", "finfo", "iinfo", "inf", "nan", "pi", "e", "newaxis"}


def _ufunc(name):
    f = getattr(np, name)

    def call(*args, out=None, **kwargs):
        ops = [_operand(a, f"cupy.{name}") for a in args]
        if out is not None:
            f(*ops, out=_operand(out, f"cupy.{name}"), **kwargs)
            return out
        return _wrap(f(*ops, **kwargs))
    return call


def _function(name):
    f = getattr(np, name)

    def call(*args, **kwargs):
        what = f"cupy.{name}"
        if name not in _CREATION:
            first = args[0] if args else None
            items = first if name in _SEQUENCE and isinstance(first, (list, tuple)) else [first]
            for a in items:
                if not isinstance(a, ndarray):   # CuPy's routines take device arrays
                    raise TypeError(f"{what}: expected a device array, got {type(a).__name__}"
                                    + (f" of shape {a.shape}" if isinstance(a, np.ndarray) else ""))
        if name in _SYNCING or (name == "where" and len(args) == 1):
            stats.add("hidden_syncs")
        out = kwargs.pop("out", None)
        r = f(*_unwrap(args, what), **{k: _unwrap(v, what) for k, v in kwargs.items()},
              **({"out": _operand(out, what)} if out is not None else {}))
        return out if out is not None else _wrap(r)
    return call


_CACHE: dict = {}   # not globals(): "sum", "max", "any", ... would shadow the builtins inside this module


def __getattr__(name):
    if name in _CACHE:
        return _CACHE[name]
    if name in _UFUNCS:
        value = _ufunc(name)
    elif name in _FUNCTIONS:
        value = _function(name)
    elif name in _CONSTANTS:
        value = getattr(np, name)
    else:
        raise AttributeError(f"fakecupy has no attribute {name!r}: the stand-in has only the part of CuPy that "
                             "minimaskrcnn uses (add it to fakecupy if CuPy has it)")
    _CACHE[name] = value
    return value
