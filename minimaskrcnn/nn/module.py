"""Module: the thin stateful wrapper around the functional ``*_forward`` / ``*_backward`` pairs.

A Module holds named parameters (:class:`Parameter`: ``.data`` and ``.grad``), buffers (arrays that are
saved but not trained, e.g. BatchNorm's running statistics) and child modules, all registered by
plain attribute assignment as in PyTorch, so that names come out as ``backbone.body.layer1.0.conv1.weight``
and a torchvision state_dict loads key for key.

Contract for subclasses:
    ``forward(x)`` computes the output and, in training mode, keeps what ``backward`` needs with
    ``self.save_for_backward(cache)``;
    ``backward(dout)`` takes it back with ``self.saved()``, returns the gradient for the input and adds
    parameter gradients into each ``Parameter.grad``.

The saved caches form a stack (a tape): a module applied several times in one forward pass (the RPN
head runs once per FPN level) is taken back through in the reverse order, each backward popping the
cache of the matching forward, and its parameter gradients accumulate over the uses.
"""
from __future__ import annotations

import os
import tempfile
from collections import OrderedDict

import numpy as np

from ..backend import get_xp, to_device, to_numpy


class Parameter:
    """A trainable array and its gradient. ``requires_grad=False`` freezes it (no gradient is kept)."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad: bool = True):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    def accumulate(self, g) -> None:
        """``grad += g`` (the first call stores a copy). Ignored for frozen parameters."""
        if not self.requires_grad:
            return
        if g.shape != self.data.shape:
            raise ValueError(f"gradient shape {g.shape} does not match parameter shape {self.data.shape}")
        if self.grad is None:
            self.grad = g.astype(self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}, requires_grad={self.requires_grad})"


class Module:
    """Base class: registration of parameters/buffers/children, train/eval, state_dict, devices."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_tape", [])

    # ---- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value) -> None:
        """An array saved in the state_dict and moved with the module, but not trained."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def add_module(self, name: str, module: "Module") -> None:
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # ---- traversal ----------------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_parameters(self, prefix: str = ""):
        """(name, Parameter) for every parameter, this module's first, then each child's in order."""
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalars in all parameters (as ``sum(p.numel() for p in model.parameters())``)."""
        return int(sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only))

    # ---- modes and gradients ------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def save_for_backward(self, cache) -> None:
        """Keep ``cache`` for the matching ``backward`` (only in training mode: eval keeps nothing)."""
        if self.training:
            self._tape.append(cache)

    def saved(self):
        """The cache of the most recent forward not yet taken back through, removed from the tape."""
        if not self._tape:
            raise RuntimeError(f"{type(self).__name__}.backward called without a matching training-mode forward")
        return self._tape.pop()

    def free_cache(self) -> None:
        """Drop every saved forward activation (e.g. after a forward that will not be followed by backward)."""
        for _, m in self.named_modules():
            m._tape.clear()

    # ---- forward / backward -------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """Name -> array for every parameter and buffer, in PyTorch's order (own params, own buffers,
        then children). The arrays are the module's own (not copies)."""
        out = OrderedDict()
        self._collect_state(out, "")
        return out

    def _collect_state(self, out, prefix):
        for name, p in self._parameters.items():
            out[prefix + name] = p.data
        for name, b in self._buffers.items():
            if b is not None:
                out[prefix + name] = b
        for name, m in self._modules.items():
            m._collect_state(out, f"{prefix}{name}.")

    def load_state_dict(self, state, strict: bool = True) -> "Module":
        """Copy arrays from ``state`` (a dict, or a path to an ``.npz`` file) into this module.

        Each array is cast to the dtype and moved to the device of the entry it replaces. With
        ``strict``, any missing key, unexpected key or shape mismatch raises one ``ValueError``
        listing all of them; without, only the keys present in both with equal shapes are loaded.
        """
        if isinstance(state, (str, os.PathLike)):
            state = load_npz(state)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        bad = {k for k in own if k in state and tuple(np.shape(state[k])) != tuple(own[k].shape)}
        mismatched = [f"{k}: checkpoint {tuple(np.shape(state[k]))} vs model {tuple(own[k].shape)}"
                      for k in own if k in bad]
        if strict and (missing or unexpected or mismatched):
            lines = []
            for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", mismatched)):
                if items:
                    shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
                    lines.append(f"{title}: {shown}")
            raise ValueError("load_state_dict: the state does not fit the model; " + "; ".join(lines))
        params = dict(self.named_parameters())
        for mod_name, m in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name in list(m._buffers):
                key = pre + name
                if key in state and key not in bad and m._buffers[name] is not None:
                    setattr(m, name, _like(state[key], m._buffers[name]))
        for key, p in params.items():
            if key in state and key not in bad:
                p.data = _like(state[key], p.data)
        return self

    def to(self, device: str) -> "Module":
        """Move every parameter, gradient and buffer to 'cpu' (NumPy) or 'cuda' (CuPy)."""
        for _, p in self.named_parameters():
            p.data = to_device(p.data, device)
            if p.grad is not None:
                p.grad = to_device(p.grad, device)
        for _, m in self.named_modules():
            for name, b in list(m._buffers.items()):
                if b is not None:
                    setattr(m, name, to_device(b, device))
        return self

    def astype(self, dtype) -> "Module":
        """Cast every floating-point parameter and buffer (float64 is used for gradient checks)."""
        for _, p in self.named_parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        for _, m in self.named_modules():
            for name, b in list(m._buffers.items()):
                if b is not None and np.issubdtype(b.dtype, np.floating):
                    setattr(m, name, b.astype(dtype))
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


def _like(value, ref):
    """``value`` as an array with ``ref``'s dtype, on ``ref``'s device."""
    xp = get_xp(ref)
    return xp.asarray(to_numpy(value) if xp is np else value, dtype=ref.dtype).copy()


class Sequential(Module):
    """Children ``0, 1, 2, ...`` applied in order; backward runs them in reverse."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dout):
        for m in reversed(list(self._modules.values())):
            dout = m.backward(dout)
        return dout


class ModuleList(Module):
    """A list of children named ``0, 1, 2, ...`` (no forward of its own)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> None:
        self.add_module(str(len(self._modules)), m)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


# ---- checkpoints on disk: npz without pickle, written atomically ------------------------------------
def save_npz(path, arrays: dict) -> None:
    """Write ``arrays`` (name -> array; NumPy or CuPy) to ``path`` as an uncompressed ``.npz``.

    The file is written beside its destination under a temporary name and renamed into place, so a
    crash mid-write never leaves a truncated checkpoint where the last good one was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    host = {}
    for k, v in arrays.items():
        a = to_numpy(v)
        if a.dtype == object:
            raise ValueError(f"save_npz: entry {k!r} is an object array; only numeric arrays are saved")
        host[k] = a
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **host)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_npz(path) -> "OrderedDict[str, np.ndarray]":
    """Read every array of an ``.npz`` file (never unpickling), with a clear error for a bad file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise ValueError(f"{path}: cannot read as .npz (not a zip archive; truncated or not a checkpoint)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return OrderedDict((k, z[k]) for k in z.files)
    except ValueError as e:  # object arrays need pickle: refuse them
        raise ValueError(f"{path}: not a plain-array .npz checkpoint ({e})") from None
    except Exception as e:
        raise ValueError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from None
