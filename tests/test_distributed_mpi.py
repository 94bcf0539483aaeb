"""Data-parallel training under a real ``mpiexec -n 2`` (MPI through mpi4py; the ``mpi`` extra).

2 ranks train like one process (the tolerances are test_distributed.assert_same_training's), a killed rank or
a failing one ends the run in bounded time instead of a hang, the one-line errors of bad set-ups, and the
commands (demo, train, resume with another number of ranks) under mpiexec, ``demo --procs 2`` starting itself
under mpiexec, and a Ctrl-C reaching every rank. Skipped, saying why, where mpi4py or mpiexec is missing; the test
command's requirements (``-e .[dev,mpi]``) install both.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_distributed import EQUIVALENCE_RUNS, assert_same_training

ROOT = Path(__file__).resolve().parents[1]
# the mpiexec beside this Python first (the mpich wheel installs it there), then PATH's
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
pytestmark = pytest.mark.skipif(MPIEXEC is None or not HAVE_MPI4PY,
                                reason="needs mpi4py and an mpiexec (pip install -e .[mpi])")
LIMIT = 120      # seconds: every run here takes a few; a hang would take forever


def mpiexec(*args, n=2, timeout=LIMIT):
    """Run ``mpiexec -n n args`` (args may hold ':' for MPMD); returns (exit code, stdout, stderr, seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=ROOT)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from minimaskrcnn.data.shapes import make_shapes_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(root, num_train=8, num_val=2, image_size=64, object_size=(12, 30), progress=False)
    return root


def test_two_ranks_under_mpiexec_train_like_one_process(shapes, tmp_path):
    from minimaskrcnn.data.coco import CocoDataset
    from minimaskrcnn.engine.distributed import train_iterations

    code, out, err, _ = mpiexec(sys.executable, "tests/_mpi_worker.py", "equivalence", str(shapes),
                                str(tmp_path / "two.npz"))
    assert code == 0, out + err
    two = np.load(tmp_path / "two.npz")
    assert int(two["size"]) == 2
    ds = CocoDataset(shapes, "train")
    for name, (cfg, iters) in EQUIVALENCE_RUNS.items():
        losses, weights, _ = train_iterations(cfg, ds, iters)
        assert len(losses) == iters
        mine = {k: two[f"{name}.w.{k}"] for k in weights}
        assert_same_training(name, np.array([[d[k] for k in sorted(d)] for d in losses]), weights,
                             two[f"{name}.losses"], mine)


def test_a_killed_rank_ends_every_rank_in_bounded_time(shapes, tmp_path):
    code, out, err, seconds = mpiexec(sys.executable, "tests/_mpi_worker.py", "kill", str(shapes),
                                      str(tmp_path / "run"))
    assert code != 0 and seconds < 60
    assert "signal 9" in (out + err).lower() or "killed" in (out + err).lower(), out + err


def test_an_error_on_one_rank_is_one_line_and_ends_every_rank(shapes, tmp_path):
    code, out, err, seconds = mpiexec(sys.executable, "tests/_mpi_worker.py", "raise", str(shapes),
                                      str(tmp_path / "run"))
    assert code != 0 and seconds < 60
    # (rank 0's progress bar may precede it on the same line of stderr)
    assert err.count("minimaskrcnn train: error:") == 1, err
    assert "minimaskrcnn train: error: rank 1 of 2: the model's outputs are not finite numbers: loss_mask is nan " \
        "(injected by the test)\n" in err, err


def test_bad_setups_are_one_line(shapes, tmp_path):
    train = [sys.executable, "-m", "minimaskrcnn", "train", "--data", str(shapes), "--iters", "1"]
    code, out, err, _ = mpiexec(*train, "--out", str(tmp_path / "a"), "--batch-size", "4", n=3)
    assert code != 0 and err.strip().splitlines() == [
        "minimaskrcnn train: error: 3 processes cannot split a batch of 4 images evenly: choose a number of "
        "processes that divides it, or --batch-size a multiple of 3"], err
    out_b = ["--out", str(tmp_path / "b"), "--batch-size", "2"]     # MPMD: the two ranks ask for other lr
    code, out, err, _ = mpiexec(*train, *out_b, "--lr", "0.01", ":", "-n", "1", *train, *out_b, "--lr", "0.02", n=1)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "the processes run different config (rank 1's hash" in lines[0], err


def test_train_under_mpiexec_then_resume_in_one_process(shapes, tmp_path):
    from minimaskrcnn.cli import main

    run = tmp_path / "run"
    code, out, err, _ = mpiexec(sys.executable, "-m", "minimaskrcnn", "train", "--data", str(shapes), "--iters", "2",
                                "--batch-size", "2", "--out", str(run))
    assert code == 0, out + err
    assert out.count("data-parallel: 2 processes, 1 images each per batch") == 1     # rank 0 alone prints
    assert main(["train", "--data", str(shapes), "--iters", "3", "--out", str(run), "--resume"]) == 0
    log = json.loads((run / "log.json").read_text())
    assert len(log["losses"]) == 3
    one = tmp_path / "one"
    assert main(["train", "--data", str(shapes), "--iters", "1", "--batch-size", "2", "--out", str(one)]) == 0
    first = json.loads((one / "log.json").read_text())["losses"][0]
    for k, v in first.items():       # the first iteration: the same batch, samples and forward pass
        assert abs(log["losses"][0][k] - v) <= 1e-5 * abs(v), k


def test_demo_procs_2_starts_itself_under_mpiexec(tmp_path):
    """``demo --procs 2``, started as one process, runs as 2 ranks (the demo under mpiexec: the ranks are started
    by the venv's mpiexec with ``--procs 1``) and writes what a one-process demo writes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    demo = [sys.executable, "-m", "minimaskrcnn", "demo", "--procs", "2", "--data", str(tmp_path / "shapes"),
            "--out", str(tmp_path / "demo"), "--num-train", "8", "--num-val", "2", "--iters", "2"]
    p = subprocess.run(demo, capture_output=True, text=True, timeout=LIMIT, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("demo: 2 processes x 1 BLAS thread (data-parallel, mpiexec; --procs 1 for one "
                               "process)\n"), p.stdout
    assert p.stdout.count("data-parallel: 2 processes, 2 images each per batch") == 1     # rank 0 alone prints
    assert p.stdout.count("mask AP") == 1 and p.stdout.count("demo: ") == 1              # the ranks do not relaunch
    assert sorted(f.name for f in (tmp_path / "demo").iterdir()) == [
        "bbox_results.json", "last.npz", "log.json", "losses.png", "metrics.json", "pr_bbox.png", "pr_segm.png",
        "predictions.png", "segm_results.json"]
    assert len(json.loads((tmp_path / "demo" / "log.json").read_text())["losses"]) == 2


def test_ctrl_c_reaches_every_rank_through_mpiexec(tmp_path):
    """What ``demo --procs 2`` does on a Ctrl-C: the waiting process passes SIGINT to mpiexec once, mpiexec to
    every rank (each ends as one process would), and the exit code comes back."""
    # each rank's lines go out in one write each: print may write its pieces separately (with unbuffered
    # output), and CI runs got two ranks' pieces interleaved ("rankrank 1 interrupted\n 0 interrupted",
    # "readyready\n\n")
    rank = ("import os, sys, time\nos.write(1, b'ready\\n')\ntry:\n    time.sleep(60)\n"
            "except KeyboardInterrupt:\n    os.write(1, f\"rank {os.environ['PMI_RANK']} interrupted\\n\".encode())\n"
            "    sys.exit(130)\n")
    parent = ("import sys\nfrom minimaskrcnn.engine.launch import run_passing_signals\n"
              f"code = run_passing_signals([{MPIEXEC!r}, '-n', '2', sys.executable, '-c', {rank!r}])\n"
              "print('returns', code, flush=True)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env)
    try:
        assert [p.stdout.readline().strip() for _ in range(2)] == ["ready", "ready"]
        t0 = time.perf_counter()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert time.perf_counter() - t0 < 20
    assert "rank 0 interrupted" in out and "rank 1 interrupted" in out and out.rstrip().endswith("returns 130"), out
