"""The training loop: SGD with warm-up and steps, image-centric batches, a progress bar with every loss,
periodic evaluation, atomic checkpoints, exact resume, and a guard against NaN/inf losses.

A checkpoint (``<out>/last.npz``, plain arrays, no pickle) holds everything the next iteration depends
on: weights and buffers (``model.*``), momentum buffers (``optim.*``), the iteration, the data loader's
position and the samplers' random state (``meta.*``). So training resumed from it reaches exactly the
weights that uninterrupted training would have.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from ..backend import get_xp
from ..nn.module import load_npz, save_npz
from ..nn.optim import SGD, WarmupMultiStepLR

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN or infinite; the message names it and the last good checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not a readable plain-array ``.npz``, or not for this model."""


def read_checkpoint(path):
    """The parts of a checkpoint that :meth:`Trainer.save` wrote: ``(meta, model_state, optim_state)``.

    A weights-only ``.npz`` (e.g. converted from torchvision) has no ``meta.json``: it gives
    ``(None, all its arrays, {})``. Raises :class:`CheckpointError` for a file that is not a plain ``.npz``.
    """
    try:
        arrays = load_npz(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if "meta.json" not in arrays:
        return None, arrays, {}
    meta = json.loads(str(arrays["meta.json"]))
    model_state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    optim_state = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
    return meta, model_state, optim_state


def load_state_checked(module, state, path) -> None:
    """``module.load_state_dict(state)``, its error (missing, unexpected, mismatched keys) naming ``path``."""
    try:
        module.load_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


class Trainer:
    """Train ``model`` on batches from ``loader`` for ``max_iters`` iterations.

    Args:
        model: a :class:`~minimaskrcnn.model.mask_rcnn.MaskRCNN`; its config gives lr, momentum, weight decay,
            warm-up and steps (paper §3.1).
        loader: a :class:`~minimaskrcnn.data.transforms.DataLoader` (resumable batches).
        out_dir: where ``last.npz`` and ``log.json`` go.
        eval_fn: optional ``eval_fn(model) -> dict`` run every ``eval_every`` iterations and at the end.
        checkpoint_every: iterations between checkpoints (and always at the end).
        progress: show a tqdm progress bar.
    """

    def __init__(self, model, loader, out_dir, max_iters=None, eval_fn=None, eval_every=0, checkpoint_every=100,
                 progress=True):
        c = model.config
        self.model, self.loader, self.out_dir = model, loader, os.fspath(out_dir)
        self.max_iters = c.max_iters if max_iters is None else int(max_iters)
        self.schedule = WarmupMultiStepLR(c.lr, c.lr_steps, 0.1, c.warmup_iters, c.warmup_factor)
        self.optimizer = SGD(model.named_parameters(), c.lr, c.momentum, c.weight_decay)
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.checkpoint_every, self.progress = checkpoint_every, progress
        self.iteration = 0
        self.log = {"losses": [], "lr": [], "seconds": [], "evals": []}

    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, "last.npz")

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write ``last.npz`` and ``log.json`` atomically (temporary file, then rename)."""
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim.{k}": v for k, v in self.optimizer.state_dict().items()})
        meta = {"iteration": self.iteration, "loader": self.loader.state_dict(),
                "rng": self.model.rng.bit_generator.state, "config": self.model.config.to_dict()}
        arrays["meta.json"] = np.array(json.dumps(meta))  # a unicode string array: loads without pickle
        save_npz(self.checkpoint_path, arrays)
        self._save_log()

    def _save_log(self) -> None:
        _write_json_atomic(os.path.join(self.out_dir, "log.json"), self.log)

    def load(self, path=None) -> None:
        """Restore weights, optimizer, iteration, loader position and random state from a checkpoint."""
        path = self.checkpoint_path if path is None else path
        meta, model_state, optim_state = read_checkpoint(path)
        if meta is None:
            raise CheckpointError(f"{path}: not a training checkpoint (no meta.json entry); "
                                  "to start from weights only, use model.load_state_dict")
        load_state_checked(self.model, model_state, path)
        load_state_checked(self.optimizer, optim_state, path)
        self.loader.load_state_dict(meta["loader"])
        self.model.rng.bit_generator.state = meta["rng"]
        self.iteration = int(meta["iteration"])
        log_path = os.path.join(os.path.dirname(os.path.abspath(path)), "log.json")
        if os.path.exists(log_path):
            with open(log_path) as f:
                log = json.load(f)
            self.log = {k: v[: self.iteration] if k != "evals" else [e for e in v if e["iteration"] <= self.iteration]
                        for k, v in log.items()}

    # ---- the loop ---------------------------------------------------------------------------------------
    def step(self, images, targets) -> dict:
        """One iteration: forward, backward, guard, SGD update. Returns the losses."""
        model = self.model
        lr = self.schedule(self.iteration)
        try:
            losses = model.forward_train(images, targets)
        except FloatingPointError as e:
            raise self._diverged(str(e)) from None
        model.zero_grad()
        model.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not _finite(p.grad)]
        if bad:
            raise self._diverged(f"the gradient of {bad[0]} is not finite ({len(bad)} parameters affected)")
        self.optimizer.lr = lr
        self.optimizer.step()
        self.iteration += 1
        return losses

    def _diverged(self, what: str) -> TrainingDiverged:
        have = os.path.exists(self.checkpoint_path)
        where = (f"the last good checkpoint, {self.checkpoint_path}, is kept" if have
                 else "no checkpoint was written yet")
        return TrainingDiverged(f"training stopped at iteration {self.iteration}: {what}; {where}")

    def train(self) -> dict:
        """Run from ``self.iteration`` to ``max_iters``. Returns the log (losses, lr, seconds, evals)."""
        from tqdm.auto import tqdm

        self.model.train()
        bar = tqdm(total=self.max_iters, initial=self.iteration, disable=not self.progress, desc="train",
                   dynamic_ncols=True)
        smooth = {}
        try:
            while self.iteration < self.max_iters:
                t0 = time.perf_counter()
                images, targets = next(self.loader)
                losses = self.step(images, targets)
                lr = self.optimizer.lr
                self.log["losses"].append(losses)
                self.log["lr"].append(lr)
                self.log["seconds"].append(time.perf_counter() - t0)
                for k, v in losses.items():  # exponential moving averages for a readable bar
                    smooth[k] = v if k not in smooth else 0.9 * smooth[k] + 0.1 * v
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in smooth.items()} | {"lr": f"{lr:.2g}"})
                bar.update(1)
                if self.iteration < self.max_iters:   # the last iteration is saved once, below
                    if self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
                        self.save()
                    if self.eval_fn and self.eval_every and self.iteration % self.eval_every == 0:
                        self._evaluate()
        finally:
            bar.close()
        self.save()               # before the final evaluation, so that a failing one loses no training
        if self.eval_fn:
            self._evaluate()
            self._save_log()
        return self.log

    def _evaluate(self):
        metrics = self.eval_fn(self.model)
        self.model.train()
        self.log["evals"].append({"iteration": self.iteration, **metrics})


def _finite(a) -> bool:
    return bool(get_xp(a).isfinite(a).all())


def _write_json_atomic(path, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
