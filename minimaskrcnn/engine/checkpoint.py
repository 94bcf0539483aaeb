"""Checkpoints on disk: reading them, checking them, and building the model they hold.

A training checkpoint (``last.npz``, written by :meth:`minimaskrcnn.engine.trainer.Trainer.save`) is a plain
``.npz`` (loaded with ``allow_pickle=False``): the weights and buffers (``model.*``), the momentum buffers
(``optim.*``) and one string entry ``meta.json`` (iteration, loader position, random state, config, class
names, the training log). A weights-only ``.npz`` (e.g. converted from torchvision) has just the weights.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..nn.module import load_npz

# Parameters of a healthy detector stay within a few units (BN scales ~1, conv weights ~0.1); a run whose
# learning rate was far too large reaches 1e7 and more before its losses overflow. Buffers (BN running
# variances of converted models) are left out: they are not trained and can be large legitimately.
MAX_SANE_WEIGHT = 1e5


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not a readable plain-array ``.npz``, or not for this model."""


def read_checkpoint(path):
    """The parts of a checkpoint that :meth:`Trainer.save` wrote: ``(meta, model_state, optim_state)``.

    A weights-only ``.npz`` (e.g. converted from torchvision) has no ``meta.json``: it gives
    ``(None, all its arrays, {})``. Raises :class:`CheckpointError` for a file that is missing, not a plain
    ``.npz``, or whose ``meta.json`` is not a JSON object.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        arrays = load_npz(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if "meta.json" not in arrays:
        return None, arrays, {}
    try:
        meta = json.loads(str(arrays["meta.json"]))
    except ValueError as e:
        raise CheckpointError(f"{path}: its meta.json entry is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: its meta.json entry has no 'config' object; not a training checkpoint "
                              "of this project, or damaged")
    model_state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    optim_state = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
    return meta, model_state, optim_state


def load_state_checked(module, state, path) -> None:
    """``module.load_state_dict(state)``, its error (missing, unexpected, mismatched keys) naming ``path``."""
    try:
        module.load_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def weights_problem(model) -> str | None:
    """Why the parameters of ``model`` look diverged (a non-finite value, or one beyond
    ``MAX_SANE_WEIGHT``), or None when they look sane."""
    from ..backend import to_numpy

    largest, where = 0.0, None
    for name, p in model.named_parameters():
        a = to_numpy(p.data)
        if not np.isfinite(a).all():
            return f"{name} holds NaN or inf"
        m = float(np.abs(a).max()) if a.size else 0.0
        if m > largest:
            largest, where = m, name
    if largest > MAX_SANE_WEIGHT:
        return f"max |w| = {largest:.3g} (in {where}), beyond any trained model's"
    return None


def config_from_checkpoint(path, meta, config_name=None, num_classes=None):
    """The config of a checkpoint: its own (a training checkpoint) or ``config_name`` with ``num_classes``
    (a weights-only file)."""
    from ..config import MaskRCNNConfig, get_config

    if meta is not None:
        try:
            config = MaskRCNNConfig.from_dict(meta["config"])
            if not config.class_names and meta.get("class_names"):   # the trainer's data set's names
                config = config.replace(class_names=tuple(meta["class_names"]))
            return config
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its config cannot be read ({e})") from None
    if config_name is None or num_classes is None:
        raise CheckpointError(f"{path}: a weights-only file; give --config and --num-classes to build its model")
    try:
        return get_config(config_name, num_classes)
    except ValueError as e:
        raise CheckpointError(f"--config: {e}") from None


def load_checkpoint_model(path, device="cpu", config_name=None, num_classes=None):
    """A model from a checkpoint, its weights checked for divergence (:func:`weights_problem`).

    A training checkpoint carries its config; a plain weights file (e.g. a converted torchvision model) needs
    ``config_name`` and ``num_classes``. Raises :class:`CheckpointError` with a one-line message.
    """
    from ..model import build_model

    meta, state, _ = read_checkpoint(path)
    config = config_from_checkpoint(path, meta, config_name, num_classes)
    model = build_model(config).to(device)
    load_state_checked(model, state, path)
    problem = weights_problem(model)
    if problem:
        raise CheckpointError(f"{path}: the weights are not usable ({problem}): the run diverged before this "
                              "checkpoint was written; train again with a smaller learning rate")
    return model


def class_names_difference(checkpoint_names, data_names) -> str | None:
    """What differs between a model's class names and a data set's (both with ``__background__`` first),
    in words; None when they agree."""
    ours, theirs = list(checkpoint_names)[1:], list(data_names)[1:]
    if ours == theirs:
        return None
    if len(ours) != len(theirs):
        what = f"the model has {len(ours)} classes, the data {len(theirs)}"
    else:
        what = "the classes differ"
    only_model = [n for n in ours if n not in theirs]
    only_data = [n for n in theirs if n not in ours]
    parts = [what]
    if only_model:
        parts.append("only in the model: " + ", ".join(only_model))
    if only_data:
        parts.append("only in the data: " + ", ".join(only_data))
    if not only_model and not only_data:
        parts.append(f"same names in another order (model: {', '.join(ours)}; data: {', '.join(theirs)})")
    return "; ".join(parts)

