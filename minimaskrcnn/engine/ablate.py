"""``python -m minimaskrcnn ablate``: the paper's ablations (Tables 2b-2e, §4.2's class-agnostic masks, Table 3's
multi-task effect, Table 6's RoIPool vs RoIAlign for keypoints) trained in miniature, evaluated with COCOeval,
and set beside the paper's numbers.

Each table (:mod:`minimaskrcnn.engine.ablate_tables`) has variants; each variant is trained once per seed from
scratch on the same data with the same schedule, then scored on the validation split. Tables 2c, 2e and 3
train on the demo's shapes drawn at 192 px (``data/shapes_192``), 2d on the same with larger objects
(``data/shapes_192_large``), 2b and §4.2 on the hard shapes set (``data/shapes_hard``), Table 6 on the pose set
(``data/poses``, keypoint AP by OKS); each built-in set is generated on first use (``ablate_tables.DATASETS``).
``--table all`` is Tables 2b-3 (its 2-hour budget); Table 6 runs on its own, ``--table 6``. What it writes in
``--out``::

    runs/<run id>/         one folder per (variant, seed): last.npz, log.json, result.json (written last)
    ablations.json         every run (variant, seed, config, data, iterations, wall time, box, mask and keypoint
                           AP/AP50/AP75/APs/APm, None where COCOeval has none) and each table's summary (mean
                           and spread over seeds, the paper's numbers, the command and commit that made it)
    ablations.md           the tables, ours beside the paper's, and which gaps exceed the seed spread
    ablation_<table>.png   bars of our mean with each seed's point, the paper's numbers beside
    examples.json          seed 0's confident detections (masks as RLE, or keypoints) on the first val images

Tables run by different invocations into one ``--out`` are merged in ``ablations.json``; each table keeps the
command, commit, time and data of the invocation that produced it (the top-level ones are the last's).

A run whose ``result.json`` exists is skipped, a run with a ``last.npz`` but no result resumes from it: the
command run again after an interruption finishes the work. Runs with equal configs are trained once, whatever
tables they serve. ``--jobs 2`` trains two runs at a time, one BLAS thread each: on 2 cores that is nearly
twice the throughput of one run with two threads (bench/RESULTS.md: 2 threads gain 6% over 1).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .ablate_report import summarise, write_markdown
from typing import NamedTuple

from .ablate_tables import DATASETS, ITERS, TABLE_ORDER, TABLES
from .run import UserError, open_dataset, writable_folder

NUM_EXAMPLES = 6               # validation images whose detections examples.json keeps (seed 0 only)
RUN_STATS = ("AP", "AP50", "AP75", "APs", "APm")    # kept per run and iou type (keypoints have no APs: None)
PROVENANCE = ("command", "commit", "finished", "elapsed_s")     # recorded per table and for the last invocation


# ---- what to run ------------------------------------------------------------------------------------------------
def schedule(iters: int) -> dict:
    """The learning-rate schedule of a run of ``iters`` iterations, the same for every variant."""
    return {"max_iters": int(iters), "warmup_iters": min(100, int(iters) // 10), "lr_steps": (int(0.8 * iters),)}


class TableData(NamedTuple):
    """A data set as :func:`plan_runs` needs it (:func:`table_data` reads it from a folder)."""
    root: str                 # the COCO-format folder
    class_names: tuple        # with '__background__' first
    keypoints: tuple = ((), ())   # (names, skeleton) of a keypoint set; empty names: none
    fingerprint: str = ""     # data_fingerprint(root): part of each run's id
    image_size: int = DATASETS["hard"]["image_size"]     # the models' input size (min = max) unless --image-size


def plan_runs(tables, data, seeds=None, iters=None, image_size=None):
    """The runs the tables need, shared between tables where the configs (and data) are equal.

    ``data``: ``{data kind: TableData}`` with the kind of every table (``TABLES[t].data``), or one
    :class:`TableData` for all. ``image_size``: the models' input size, None: each data set's own.

    Returns ``(runs, layout)``: runs ``{run_id: {'config': dict, 'data': root, 'seed', 'iterations', 'label',
    'serves'}}`` (``serves``: every 'table: variant' the run stands for) and layout
    ``{table: {variant name: [run_id per seed]}}``."""
    from ..config import get_config

    runs, layout = {}, {}
    for t in tables:
        table = TABLES[t]
        d = data if isinstance(data, TableData) else data[table.data]
        size = image_size or d.image_size
        n_seeds = table.seeds if seeds is None else int(seeds)
        n_iters = ITERS[t] if iters is None else int(iters)
        layout[t] = {}
        for v in table.variants:
            ids = []
            for seed in range(n_seeds):
                cfg = get_config(table.config, len(d.class_names), class_names=tuple(d.class_names), seed=seed,
                                 min_size=size, max_size=size, **schedule(n_iters), **v.overrides)
                if cfg.keypoint_on:          # as many heatmaps as the data has keypoints (engine.run.run_config)
                    names, skeleton = d.keypoints
                    if not names:
                        raise UserError(f"table {t} trains keypoints, but {d.root} has no keypoint names")
                    cfg = cfg.replace(num_keypoints=len(names), keypoint_names=tuple(names),
                                      keypoint_skeleton=tuple(tuple(p) for p in skeleton))
                cfg_dict = cfg.to_dict()
                digest = hashlib.sha256(json.dumps([cfg_dict, d.fingerprint], sort_keys=True,
                                                   default=list).encode())
                slug = "".join(c if c.isalnum() else "-" for c in v.name.lower()).strip("-")
                run_id = f"{table.config}-{slug}-s{seed}-{n_iters}it-{digest.hexdigest()[:8]}"
                # the same config under another name (a shared baseline) is the same run
                same = [r for r, spec in runs.items() if spec["digest"] == digest.hexdigest()]
                run_id = same[0] if same else run_id
                runs.setdefault(run_id, {"config": cfg_dict, "data": str(d.root), "seed": seed,
                                         "iterations": n_iters, "label": f"{t}: {v.name}",
                                         "digest": digest.hexdigest(), "serves": []})
                runs[run_id]["serves"].append(f"{t}: {v.name}")
                ids.append(run_id)
            layout[t][v.name] = ids
    return runs, layout


def data_fingerprint(root) -> str:
    """A digest of the data's two annotation files (``instances_<split>.json``, or COCO's
    ``person_keypoints_<split>.json`` where there is none): a run's result is only reused on the same data."""
    from ..data.coco import annotation_file

    h = hashlib.sha256()
    for split in ("train", "val"):
        with open(annotation_file(root, split), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


# ---- one run ----------------------------------------------------------------------------------------------------
def run_one(run_id, spec, out_dir, device="cpu", progress=True, threads=1) -> dict:
    """Train and evaluate one run on its data (``spec['data']``), resuming its checkpoint if there is one;
    write and return its result."""
    from ..config import MaskRCNNConfig
    from .inference import evaluate_model
    from .run import train_model
    from .threads import blas_threads

    folder = Path(out_dir) / "runs" / run_id
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    train_set, val_set = open_dataset(spec["data"], "train"), open_dataset(spec["data"], "val")
    config = MaskRCNNConfig.from_dict(spec["config"])
    with blas_threads(threads):
        t0 = time.perf_counter()
        model, trainer = train_model(config, train_set, folder, device, resume=(folder / "last.npz").exists(),
                                     checkpoint_every=100, progress=progress)
        t1 = time.perf_counter()
        metrics, _, preds = evaluate_model(model, val_set, verbose=False, progress=progress, keep_masks=NUM_EXAMPLES)
        t2 = time.perf_counter()
    seconds = trainer.log["seconds"]
    result = {"run_id": run_id, "variant": spec["label"], "serves": spec["serves"], "seed": spec["seed"],
              "iterations": spec["iterations"], "data": spec["data"],
              "config": spec["config"], "wall_time_s": round(t2 - t0, 1), "train_s": round(t1 - t0, 1),
              "eval_s": round(t2 - t1, 1), "seconds_per_iter": round(sum(seconds) / max(1, len(seconds)), 4),
              "resumed": len(seconds) != spec["iterations"] or None,
              # COCOeval's -1 (no object in that size range) becomes None, and so does a statistic it does not
              # compute (keypoint AP has no APs: COCO's keypoint areas start at medium)
              **{t: {k: round(100 * m[k], 2) if m.get(k, -1) >= 0 else None for k in RUN_STATS}
                 for t, m in metrics.items()},
              "examples": _examples(val_set, preds) if spec["seed"] == 0 else None}
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, done)
    return result


def _examples(dataset, preds, score_threshold=0.5):
    """Seed 0's detections on the first validation images, scores >= 0.5: a keypoint model's keypoints
    ((D, K, 2) x, y in pixels, and their (D, K) scores), another model's masks as COCO RLE (small JSON)."""
    from pycocotools import mask as mask_util
    import numpy as np

    out = []
    for i, p in enumerate(preds[:NUM_EXAMPLES]):
        keep = np.nonzero(p["scores"] >= score_threshold)[0]
        item = {"image_id": int(dataset.image_ids[i]), "boxes": np.round(p["boxes"][keep], 1).tolist(),
                "labels": p["labels"][keep].tolist(), "scores": np.round(p["scores"][keep], 3).tolist()}
        if "keypoints" in p:
            item["keypoints"] = np.round(p["keypoints"][keep][..., :2], 1).tolist()
            item["keypoints_scores"] = np.round(p["keypoints_scores"][keep], 2).tolist()
        elif "masks" in p:
            rles = mask_util.encode(np.asfortranarray(p["masks"][keep].transpose(1, 2, 0).astype(np.uint8)))
            item["masks"] = [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]
        out.append(item)
    return out


def _worker(args):
    run_id, spec, out_dir, device, threads = args
    return run_one(run_id, spec, out_dir, device, progress=False, threads=threads)


def _start_worker(parent_pid):
    """Worker initializer: malloc set as the commands set it (:mod:`minimaskrcnn.engine.allocator`), and an
    end with the parent."""
    from .allocator import keep_freed_memory

    keep_freed_memory()
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid, every_s=2.0):
    """Worker initializer: end this worker when the ``ablate`` process that started it is gone.

    Ctrl-C reaches every process of the terminal's group, but a parent ended alone (``kill``, a closed ssh
    session, a job scheduler's SIGTERM) would leave its workers training for an hour with nobody to collect
    their results. Each finished run is already on disk (``result.json``; an unfinished one resumes from its
    checkpoint), so ending at once loses nothing."""
    import threading

    def watch():
        while True:
            time.sleep(every_s)
            if os.getppid() != parent_pid:
                os._exit(143)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def worker_pool(jobs):
    """``jobs`` worker processes (spawned: a forked child would inherit the parent's BLAS threads mid-state)
    that end when this process ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))


def run_all(runs, out_dir, device="cpu", jobs=1, threads=1, progress=True, report=print) -> dict:
    """Every run not done yet, ``jobs`` at a time; returns ``{run_id: result}``. Runs already done are read."""
    from tqdm.auto import tqdm

    results, todo = {}, []
    for run_id in runs:
        done = Path(out_dir) / "runs" / run_id / "result.json"
        if done.exists():
            results[run_id] = json.loads(done.read_text())
        else:
            todo.append(run_id)
    if results:
        report(f"ablate: {len(results)} of {len(runs)} runs already done in {out_dir}/runs (skipped)")
    bar = tqdm(total=len(runs), initial=len(results), desc="ablate runs", disable=not progress, dynamic_ncols=True)
    try:
        if jobs <= 1:
            for run_id in todo:
                bar.set_postfix_str(runs[run_id]["label"] + f", seed {runs[run_id]['seed']}")
                results[run_id] = run_one(run_id, runs[run_id], out_dir, device, progress, threads)
                bar.update(1)
        else:
            from concurrent.futures import as_completed

            with worker_pool(jobs) as pool:
                futures = {pool.submit(_worker, (r, runs[r], str(out_dir), device, 1)): r
                           for r in todo}
                for f in as_completed(futures):
                    results[futures[f]] = f.result()
                    bar.set_postfix_str(runs[futures[f]]["label"])
                    bar.update(1)
    finally:
        bar.close()
    return results


# ---- the data ---------------------------------------------------------------------------------------------------
def ensure_data(data=None, kind="hard", report=print):
    """The given COCO-format folder, or the built-in set of this kind (``DATASETS``: 'shapes', the demo's shapes
    at 192 px, 'hard', the hard shapes set, or 'poses', the pose set), generated on first use."""
    if data is not None:
        return Path(data)
    spec = DATASETS[kind]
    if kind == "poses":
        from ..data.poses import ensure_poses_dataset
        return ensure_poses_dataset(Path(spec["folder"]), **spec["params"], report=report)
    from ..data.shapes import ensure_shapes_dataset
    from ..data.shapes_hard import HARD_DEFAULTS

    defaults = HARD_DEFAULTS if spec["params"].get("kind") == "hard" else {}
    return ensure_shapes_dataset(Path(spec["folder"]), **{**defaults, **spec["params"]}, report=report)


def table_data(root, kind="hard", tables=()) -> TableData:
    """What :func:`plan_runs` needs of the folder ``root`` for tables on data of this kind; a keypoint kind
    needs a set whose categories list keypoint names (one-line error otherwise)."""
    train_set = open_dataset(root, "train")
    if DATASETS[kind]["keypoints"] and not train_set.keypoint_names:
        raise UserError(f"--data {root}: table {', '.join(tables) or kind} trains keypoints, but its categories "
                        f"({', '.join(train_set.class_names[1:])}) list no 'keypoints' names: give a keypoint set "
                        "such as the pose set (python -m minimaskrcnn.data.poses --out data/poses)")
    return TableData(str(root), tuple(train_set.class_names), (train_set.keypoint_names, train_set.skeleton),
                     data_fingerprint(root), DATASETS[kind]["image_size"])


# ---- the command ------------------------------------------------------------------------------------------------
def _git_commit():
    try:
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            return head.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def check_options(table, seeds, iters, jobs, image_size):
    """The tables to run (``'all'``: ``TABLE_ORDER``, which leaves out Table 6); one-line errors for bad values."""
    for name, value in (("--seeds", seeds), ("--iters", iters), ("--jobs", jobs), ("--image-size", image_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if image_size is not None and image_size % 32:
        raise UserError(f"--image-size must be a multiple of 32 (the stride of C5), got {image_size}")
    return list(TABLE_ORDER) if table == "all" else [table]


def ablate(table="all", data=None, seeds=None, iters=None, out="runs/ablations", jobs=1, image_size=None,
           device="cpu", threads=1, estimate=False, progress=True, report=print, command=None) -> dict:
    """Train, evaluate and report the ablations of ``table`` ('2b', '2c', '2d', '2e', '3', 'agnostic', '6' or
    'all', which is Tables 2b-3 without 6). ``data``: a COCO-format folder for every table run (a keypoint set
    for Table 6); None: each table's built-in set (``ablate_tables.DATASETS``), generated on first use.

    Returns the content of ``ablations.json``. ``estimate=True`` trains nothing: it times a few iterations of
    each variant and returns the projected wall time (:func:`minimaskrcnn.engine.ablate_estimate.estimate`).
    """
    started = time.perf_counter()
    tables = check_options(table, seeds, iters, jobs, image_size)
    if seeds == 1:
        report("ablate: with one seed there is no seed spread: no gap can be judged against noise")
    kinds = list(dict.fromkeys(TABLES[t].data for t in tables))
    data_sets = {k: table_data(ensure_data(data, k, report), k, [t for t in tables if TABLES[t].data == k])
                 for k in kinds}
    out = writable_folder(out)
    runs, layout = plan_runs(tables, data_sets, seeds, iters, image_size)
    if estimate:
        from .ablate_estimate import estimate as run_estimate
        name = "estimate.json" if table == "all" else f"estimate_{table}.json"     # one table's keeps all's
        return run_estimate(runs, out, jobs, device, report, name)
    roots = ", ".join(d.root for d in data_sets.values())
    report(f"ablate: tables {', '.join(tables)}: {len(runs)} runs on {roots}; outputs in {out}")
    results = run_all(runs, out, device, jobs, threads, progress, report)
    summary = summarise(tables, layout, results)
    path = out / "ablations.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    stamp = {"command": command or "python -m minimaskrcnn ablate", "commit": _git_commit(),
             "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
             "elapsed_s": round(time.perf_counter() - started, 1)}     # this invocation, runs skipped included
    for t, s in summary.items():
        s.update(stamp, data=data_sets[TABLES[t].data].root, jobs=jobs)
    # a table written before tables kept their own provenance takes its file's top-level fields (the last
    # invocation's then: the best there is)
    legacy = {k: previous.get(k) for k in (*PROVENANCE, "data", "jobs")}
    record = {**stamp, "data": roots, "jobs": jobs,
              "tables": {**{t: {**legacy, **s} for t, s in previous.get("tables", {}).items()}, **summary},
              "runs": {**previous.get("runs", {}), **{r: {**{k: v for k, v in res.items() if k != "examples"},
                                                         "serves": runs[r]["serves"]} for r, res in results.items()}}}
    record["wall_time_s"] = round(sum(r["wall_time_s"] for r in record["runs"].values()), 1)
    _write_json(path, record)
    examples_path = out / "examples.json"
    examples = json.loads(examples_path.read_text()) if examples_path.exists() else {}
    examples.update({r: res["examples"] for r, res in results.items() if res.get("examples") is not None})
    _write_json(examples_path, examples)
    md = write_markdown(record, out / "ablations.md")
    figures = _plots(record, out)
    report(md)
    report("wrote " + ", ".join(str(p) for p in [path, out / "ablations.md", examples_path, *figures]))
    return record


def _plots(record, out):
    from ..viz.ablations import plot_ablation

    files = []
    for t, summary in record["tables"].items():
        files.append(out / f"ablation_{t}.png")
        plot_ablation(summary, save_path=files[-1])
    return files


def _write_json(path, obj):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main_args(args) -> dict:
    """What cli.py's ``ablate`` subcommand calls with its parsed arguments (``args.argv``: the words given)."""
    command = "python -m minimaskrcnn " + shlex.join(getattr(args, "argv", sys.argv[1:]))
    return ablate(args.table, args.data, args.seeds, args.iters, args.out, args.jobs, args.image_size, args.device,
                  args.threads, args.estimate, command=command)
