"""The training loop: SGD with warm-up and steps, image-centric batches, a progress bar with every loss,
periodic evaluation, atomic checkpoints, exact resume, and a guard against divergence.

A checkpoint (``<out>/last.npz``, plain arrays, no pickle) holds everything the next iteration depends
on: weights and buffers (``model.*``), momentum buffers (``optim.*``), the iteration, the data loader's
position and the samplers' random state (``meta.*``). So training resumed from it reaches exactly the
weights that uninterrupted training would have. The training log is inside it too (``log.json`` beside it is
a copy for people), so the log resumed is always the checkpoint's own.

Divergence (paper §3.1's schedule with a learning rate far too large): a NaN/inf loss or gradient stops
training at once; a loss far above its running median (``SPIKE_FACTOR``) postpones the next checkpoint,
and weights beyond :data:`~minimaskrcnn.engine.checkpoint.MAX_SANE_WEIGHT` stop training before they are
saved. So ``last.npz`` only ever holds a sane model.

Data-parallel (``comm`` from :mod:`~minimaskrcnn.engine.distributed`, the loader sharded over its ranks):
after each backward the gradients and the losses are summed over the ranks, so every rank takes the step
one process would take on the whole batch; rank 0 alone writes files and shows progress. The samplers'
random streams are keyed by (seed, iteration, image's place in the batch): no random state to save.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from ..backend import get_xp, to_numpy
from ..nn.module import save_npz
from ..nn.optim import SGD, WarmupMultiStepLR
from ..ops.sampler import image_streams
from .checkpoint import CheckpointError, load_state_checked, read_checkpoint, weights_problem
from .distributed import GradientAllreduce, SerialCommunicator, allreduce_losses

__all__ = ["LOSS_NAMES", "CheckpointError", "Trainer", "TrainingDiverged", "read_checkpoint"]

SPIKE_FACTOR = 20.0    # a total loss this many times its running median is a divergence, not noise
SPIKE_WINDOW = 50      # iterations in the running median
SPIKE_MIN_HISTORY = 5  # no verdict before this many iterations
LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


class TrainingDiverged(RuntimeError):
    """The losses or weights became NaN, infinite or blown up; the message names it and the checkpoint kept."""


class Trainer:
    """Train ``model`` on batches from ``loader`` for ``max_iters`` iterations.

    Args:
        model: a :class:`~minimaskrcnn.model.mask_rcnn.MaskRCNN`; its config gives lr, momentum, weight decay,
            warm-up and steps (paper §3.1).
        loader: a :class:`~minimaskrcnn.data.transforms.DataLoader` (resumable batches); its data set's
            ``class_names`` are saved in the checkpoint.
        out_dir: where ``last.npz`` and ``log.json`` go.
        eval_fn: optional ``eval_fn(model) -> dict`` run every ``eval_every`` iterations and at the end.
        checkpoint_every: iterations between checkpoints (and always at the end).
        progress: show a tqdm progress bar.
        comm: the ranks of data-parallel training (``engine.distributed``; ``distribute_model`` applied to
            ``model``, ``loader`` sharded); None: this process alone. ``eval_fn`` runs on rank 0 only.
    """

    def __init__(self, model, loader, out_dir, max_iters=None, eval_fn=None, eval_every=0, checkpoint_every=100,
                 progress=True, comm=None):
        c = model.config
        self.comm = SerialCommunicator() if comm is None else comm
        self.is_main = self.comm.rank == 0       # rank 0 writes files and shows progress
        self.allreduce_gradients = GradientAllreduce(model.named_parameters(), self.comm)
        self.model, self.loader, self.out_dir = model, loader, os.fspath(out_dir)
        self.max_iters = c.max_iters if max_iters is None else int(max_iters)
        self.schedule = WarmupMultiStepLR(c.lr, c.lr_steps, 0.1, c.warmup_iters, c.warmup_factor)
        self.optimizer = SGD(model.named_parameters(), c.lr, c.momentum, c.weight_decay)
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.checkpoint_every, self.progress = checkpoint_every, progress and self.is_main
        self.iteration = 0
        self.saved_iteration = None        # the iteration last.npz holds (None: not written by this run)
        self.spike_since = None            # first iteration since that save whose loss spiked
        self.log = {"losses": [], "lr": [], "seconds": [], "evals": [], "overrides": []}

    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, "last.npz")

    @property
    def class_names(self):
        names = getattr(getattr(self.loader, "dataset", None), "class_names", None)
        return list(names) if names is not None else list(self.model.config.class_names)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write ``last.npz`` atomically (temporary file, then rename), then its copy of the log, ``log.json``
        (rank 0 only: every rank holds the same weights)."""
        self.saved_iteration, self.spike_since = self.iteration, None
        if not self.is_main:
            return
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim.{k}": v for k, v in self.optimizer.state_dict().items()})
        meta = {"iteration": self.iteration, "loader": self.loader.state_dict(),
                "rng": self.model.rng.bit_generator.state, "config": self.model.config.to_dict(),
                "class_names": self.class_names, "log": self.log}
        # a unicode string array: loads without pickle
        arrays["meta.json"] = np.array(json.dumps(meta, default=_json_default))
        save_npz(self.checkpoint_path, arrays)
        self._save_log()

    def _save_log(self) -> None:
        _write_json_atomic(os.path.join(self.out_dir, "log.json"), self.log)

    def load(self, path=None) -> None:
        """Restore weights, optimizer, iteration, loader position, random state and log from a checkpoint."""
        path = self.checkpoint_path if path is None else path
        meta, model_state, optim_state = read_checkpoint(path)
        if meta is None:
            raise CheckpointError(f"{path}: not a training checkpoint (no meta.json entry); "
                                  "to start from weights only, use model.load_state_dict")
        load_state_checked(self.model, model_state, path)
        load_state_checked(self.optimizer, optim_state, path)
        try:
            self.loader.load_state_dict(meta["loader"])
            self.model.rng.bit_generator.state = meta["rng"]
            self.iteration = int(meta["iteration"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its meta.json entry is incomplete or damaged ({type(e).__name__}: "
                                  f"{e})") from None
        self.saved_iteration = self.iteration
        log = meta.get("log")
        if log is None:        # written before the log went into the checkpoint: the copy beside it
            log = _read_old_log(os.path.join(os.path.dirname(os.path.abspath(path)), "log.json"), self.iteration)
        self.log = {"losses": [], "lr": [], "seconds": [], "evals": [], "overrides": [], **log}

    def remove_stale_temporaries(self) -> list:
        """Delete what an interrupted save left in ``out_dir`` (``save_npz``'s ``.tmp_*.npz``, the log's
        ``log.json.tmp<pid>``): only our own temporary names. Returns the paths removed."""
        if not self.is_main or not os.path.isdir(self.out_dir):
            return []
        removed = []
        for name in sorted(os.listdir(self.out_dir)):
            if (name.startswith(".tmp_") and name.endswith(".npz")) or name.startswith("log.json.tmp"):
                os.remove(os.path.join(self.out_dir, name))
                removed.append(os.path.join(self.out_dir, name))
        return removed

    # ---- the loop ---------------------------------------------------------------------------------------
    def step(self, images, targets) -> dict:
        """One iteration: forward, backward, (data-parallel: sum the gradients and losses over the ranks),
        guard, SGD update. Returns the losses (of the whole batch)."""
        model = self.model
        lr = self.schedule(self.iteration)
        places = getattr(self.loader, "last_places", None) or range(len(images))   # in the whole batch
        try:
            losses = model.forward_train(images, targets,
                                         rngs=image_streams(model.config.seed, self.iteration, places))
        except FloatingPointError as e:
            raise self._diverged(str(e)) from None
        model.zero_grad()
        model.backward()
        if self.comm.size > 1:
            self.allreduce_gradients()
            losses = allreduce_losses(losses, self.comm)
        bad = _non_finite([(n, p.grad) for n, p in model.named_parameters() if p.grad is not None])
        if bad:
            raise self._diverged(f"the gradient of {bad[0]} is not finite ({len(bad)} parameters affected)")
        self.optimizer.lr = lr
        self.optimizer.step()
        self.iteration += 1
        return losses

    def loss_spike(self) -> str | None:
        """Why the latest total loss looks diverged (``SPIKE_FACTOR`` times the median of the
        ``SPIKE_WINDOW`` before it), or None."""
        totals = [sum(d.values()) for d in self.log["losses"][-SPIKE_WINDOW - 1:]]
        if len(totals) <= SPIKE_MIN_HISTORY:
            return None
        median = float(np.median(totals[:-1]))
        if totals[-1] > SPIKE_FACTOR * median:
            return f"the loss {totals[-1]:.4g} is {totals[-1] / median:.0f}x its running median {median:.4g}"
        return None

    def _diverged(self, what: str) -> TrainingDiverged:
        if self.saved_iteration is not None:
            where = f"the last good checkpoint, {self.checkpoint_path} (iteration {self.saved_iteration}), is kept"
        else:
            where = "this run wrote no checkpoint yet"
        earlier = ""
        if self.spike_since is not None and self.spike_since < self.iteration:
            earlier = (f"; the run was already diverging from iteration {self.spike_since} (loss far above its "
                       "running median)")
        return TrainingDiverged(f"training stopped at iteration {self.iteration}: {what}{earlier}; {where}; "
                                "lower the learning rate")

    def _checkpoint(self, final: bool = False) -> None:
        """Save, unless the model looks diverged: weights blown up stop training; a loss spike postpones a
        periodic save (and stops training at the final one)."""
        problem = weights_problem(self.model)
        if problem:
            raise self._diverged(f"the weights blew up ({problem})")
        spike = self.loss_spike()
        if spike:
            if final:
                raise self._diverged(spike)
            self._note(f"iteration {self.iteration}: {spike}; checkpoint postponed")
            return
        self.save()

    def _note(self, text: str) -> None:
        from tqdm.auto import tqdm
        if self.progress:
            tqdm.write(text)

    def train(self) -> dict:
        """Run from ``self.iteration`` to ``max_iters``. Returns the log (losses, lr, seconds, evals)."""
        from tqdm.auto import tqdm

        for path in self.remove_stale_temporaries():
            self._note(f"removed {path}, left by an interrupted save")
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
                if self.spike_since is None and self.loss_spike():
                    self.spike_since = self.iteration
                for k, v in losses.items():  # exponential moving averages for a readable bar
                    smooth[k] = v if k not in smooth else 0.9 * smooth[k] + 0.1 * v
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in smooth.items()} | {"lr": f"{lr:.2g}"})
                bar.update(1)
                if self.iteration < self.max_iters:   # the last iteration is saved once, below
                    if self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
                        self._checkpoint()
                    if self.eval_fn and self.eval_every and self.iteration % self.eval_every == 0:
                        self._evaluate()
        finally:
            bar.close()
        self._checkpoint(final=True)   # before the final evaluation, so that a failing one loses no training
        if self.eval_fn:
            self._evaluate()
            self.save()                # the checkpoint's log holds the final evaluation too
        return self.log

    def _evaluate(self):
        if not self.is_main:
            return
        metrics = self.eval_fn(self.model)
        self.model.train()
        self.log["evals"].append({"iteration": self.iteration, **metrics})


def _read_old_log(path, iteration: int) -> dict:
    """The log of a checkpoint written before logs went inside checkpoints: ``log.json`` cut at ``iteration``."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            log = json.load(f)
        return {k: v[:iteration] if k != "evals" else [e for e in v if e["iteration"] <= iteration]
                for k, v in log.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: the training log cannot be read ({type(e).__name__}: {e}); "
                              "remove or repair it to resume") from None


def _non_finite(named_arrays) -> list:
    """The names of the arrays holding a NaN or an infinity. One flag per array, stacked and read back once:
    on a GPU a read-back waits for the device, so one per parameter would stall every iteration ~100 times."""
    if not named_arrays:
        return []
    xp = get_xp(named_arrays[0][1])
    finite = xp.stack([xp.isfinite(a).all() for _, a in named_arrays])
    if bool(finite.all()):
        return []
    return [n for (n, _), ok in zip(named_arrays, to_numpy(finite), strict=True) if not ok]


def _write_json_atomic(path, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
