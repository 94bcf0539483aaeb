"""``ablate --estimate``: how long the ablations will take, from a few timed iterations of each variant.

Each distinct config (seeds aside) trains ``TIMED_ITERS`` iterations after one warm-up iteration, and predicts a
few validation images; a run is projected as ``iterations x seconds per iteration + validation images x seconds
per image``, and the whole as the sum of the runs divided by ``--jobs`` (runs are of similar length, so the
jobs finish close together). On a busy machine every number is inflated by the load, so the estimate also times
the demo's ``tiny`` config at 128 px (the reference) and scales the projection by the ratio of the reference's
quiet time in bench/RESULTS.md (``REFERENCE_QUIET_S``) to its time now: a rough correction, reported beside the
raw figure, never instead of it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

TIMED_ITERS = 3
TIMED_IMAGES = 4
# bench/RESULTS.md (issue 9): the tiny config's training iteration, batch of 4 at 128 px, 1 BLAS thread, quiet.
REFERENCE_QUIET_S = 0.363


def _time_config(cfg_dict, train_set, val_set, device):
    from ..config import MaskRCNNConfig
    from ..data.transforms import DataLoader
    from ..model import build_model
    from .trainer import Trainer

    config = MaskRCNNConfig.from_dict(cfg_dict)
    model = build_model(config).to(device)
    loader = DataLoader(train_set, config.images_per_batch, seed=config.seed, hflip_prob=config.hflip_prob)
    trainer = Trainer(model, loader, out_dir=os.devnull, progress=False)
    model.train()
    trainer.step(*next(loader))                       # warm-up: first-call allocations
    t0 = time.perf_counter()
    for _ in range(TIMED_ITERS):
        trainer.step(*next(loader))
    per_iter = (time.perf_counter() - t0) / TIMED_ITERS
    images = [val_set.load_image(i) for i in range(min(TIMED_IMAGES, len(val_set)))]
    t0 = time.perf_counter()
    model.predict(images)
    return per_iter, (time.perf_counter() - t0) / len(images)


def estimate(runs, out, jobs=1, device="cpu", report=print, name="estimate.json") -> dict:
    """Time each distinct config of ``runs`` (:func:`~minimaskrcnn.engine.ablate.plan_runs`) on its run's data
    and project the wall time of all of them with ``jobs`` in parallel. Writes ``<out>/<name>`` and returns it."""
    from .run import open_dataset
    from .threads import blas_threads

    splits = {}                   # data root -> (train set, val set), opened once

    def data_of(spec):
        if spec["data"] not in splits:
            splits[spec["data"]] = open_dataset(spec["data"], "train"), open_dataset(spec["data"], "val")
        return splits[spec["data"]]

    timed, rows = {}, []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with blas_threads(1):
        for run_id, spec in runs.items():
            train_set, val_set = data_of(spec)
            key = json.dumps([{k: v for k, v in spec["config"].items() if k != "seed"}, spec["data"]],
                             sort_keys=True, default=list)
            if key not in timed:
                timed[key] = _time_config(spec["config"], train_set, val_set, device)
                report(f"  {spec['label']:<40s} {timed[key][0]:.3f} s/iteration, {timed[key][1]:.3f} s/image "
                       "to predict")
            per_iter, per_image = timed[key]
            rows.append({"run_id": run_id, "label": spec["label"], "iterations": spec["iterations"],
                         "s_per_iter": round(per_iter, 4), "s_per_val_image": round(per_image, 4),
                         "projected_s": round(spec["iterations"] * per_iter + len(val_set) * per_image, 1)})
        from ..config import tiny
        train_set, val_set = data_of(next(iter(runs.values())))     # the reference: tiny at 128 px on that data
        ref_cfg = tiny(len(train_set.class_names), class_names=tuple(train_set.class_names)).to_dict()
        reference = _time_config(ref_cfg, train_set, val_set, device)[0]
    total = sum(r["projected_s"] for r in rows)
    quiet = min(1.0, REFERENCE_QUIET_S / reference)
    result = {"runs": rows, "serial_s": round(total, 1), "jobs": jobs, "projected_wall_s": round(total / jobs, 1),
              "reference_s_per_iter": round(reference, 4), "reference_quiet_s_per_iter": REFERENCE_QUIET_S,
              "projected_quiet_wall_s": round(total * quiet / jobs, 1),
              "load_average_1min": load, "cpu_count": os.cpu_count(), "timed_iterations": TIMED_ITERS,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(out, name).write_text(json.dumps(result, indent=1))
    report(f"ablate --estimate: {len(rows)} runs, {total / 60:.1f} min one after the other, about "
           f"{total / jobs / 60:.1f} min with --jobs {jobs}"
           + (f" (measured with a 1-minute load average of {load:.1f} on {os.cpu_count()} cores: on a busy "
              "machine every figure is inflated)" if load is not None else "")
           + f"; the demo's tiny config takes {reference:.3f} s/iteration here against {REFERENCE_QUIET_S} s quiet "
             f"(bench/RESULTS.md), which scales the projection to about {total * quiet / jobs / 60:.1f} min")
    return result
