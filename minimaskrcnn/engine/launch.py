"""``demo --procs auto``: the demo uses every core without its user knowing about MPI.

One process trains with one BLAS thread (``engine/threads.py`` says why), so on a machine with C cores C - 1
of them would idle. Data-parallel ranks (``engine/distributed.py``) use them without the BLAS threads' waiting:
on 2 cores, ``mpiexec -n 2 ... demo`` took 8:00 where one process took 13:05 (``bench/RESULTS.md``). So the
demo, started as one process, starts itself again under ``mpiexec``::

    <mpiexec> -n P <python> -m minimaskrcnn demo <the same arguments> --procs 1

and returns that command's exit code; the first process only waits (it does not train). P (``auto``) is the
largest divisor of the batch that fits the cores (cores // ``--threads``), and 1 where several processes
cannot run: one core, ``--device cuda`` (one GPU, one process), no mpi4py, no ``mpiexec``, or a quick trial
launch (:func:`probe`) that fails. An explicit ``--procs N`` (N > 1) that cannot be honoured is an error.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

from .run import UserError

PROBE_TIMEOUT = 30        # seconds for the trial launch (it takes about one on an idle machine)


class Launch(NamedTuple):
    """How the demo runs: ``procs`` processes (1: this one), started by ``mpiexec``, and why (for the line
    printed at start)."""
    procs: int
    mpiexec: str | None
    why: str


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or ``taskset``'s share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def find_mpiexec() -> str | None:
    """``mpiexec`` beside this Python (a venv's bin/, where the mpich wheel puts it), else on PATH."""
    here = str(Path(sys.executable).parent)     # not resolved: a venv's python is a link out of its bin/
    return shutil.which("mpiexec", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def mpi4py_available() -> bool:
    return importlib.util.find_spec("mpi4py") is not None


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def probe(mpiexec: str, procs: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Start ``procs`` Pythons under ``mpiexec`` that only check that MPI sees them all. None if it worked,
    else what went wrong (one line)."""
    check = (f"from mpi4py import MPI; n = MPI.COMM_WORLD.size; assert n == {procs}, "
             f"f'MPI sees {{n}} of the {procs} processes: mpi4py talks to another MPI than this mpiexec'")
    try:
        proc = subprocess.Popen([mpiexec, "-n", str(procs), sys.executable, "-c", check], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    except OSError as e:
        return f"cannot run {mpiexec} ({e.strerror or e})"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end(proc)
        proc.communicate()
        return f"{mpiexec} -n {procs} did not start {procs} Pythons in {timeout:g} s"
    except BaseException:     # Ctrl-C during the trial: end it too
        _end(proc)
        raise
    if proc.returncode != 0:
        lines = [line.strip() for line in (out or "").splitlines() if line.strip().strip("=")]   # no ==== rules
        last = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "no output")
        return f"{mpiexec} -n {procs} failed (exit code {proc.returncode}: {last[:200]})"
    return None


def _end(proc) -> None:
    """End ``proc`` if it still runs: SIGTERM first (mpiexec then ends the processes it started; SIGKILL would
    leave them running), SIGKILL if that is not enough."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _threads(n: int) -> str:
    return f"{n} BLAS thread{'s' if n != 1 else ''}"


def plan_processes(procs, images_per_batch: int, device: str = "cpu", threads: int = 1) -> Launch:
    """How many processes the demo runs as, for ``--procs procs`` ('auto' or a number) and a batch of
    ``images_per_batch`` images. ``auto`` falls back to 1 (saying why); a number N > 1 that cannot be had raises
    :class:`UserError`, naming the reason."""
    auto = procs == "auto"
    if not auto and procs < 1:
        raise UserError(f"--procs must be 'auto' or at least 1, got {procs}")
    if not auto and procs == 1:
        return Launch(1, None, "--procs 1")

    def cannot(reason: str, fallback: str | None = None) -> Launch:
        if not auto:
            raise UserError(f"--procs {procs}: {reason}")
        return Launch(1, None, fallback or reason)

    if device == "cuda":     # one GPU: one process (several GPUs: mpiexec -n N, one rank per GPU; see the README)
        return cannot("the demo runs one process on the GPU (for several GPUs start it with mpiexec -n N)",
                      "--device cuda: one process on the GPU")
    if auto:
        cores = available_cores()
        n = largest_divisor(images_per_batch, cores // max(1, threads))
        if n == 1:
            return Launch(1, None, "one core" if cores == 1 else
                          f"{cores} cores: no room for a second process of {_threads(threads)}")
    else:
        n = procs
        if images_per_batch % n:
            ok = ", ".join(str(d) for d in range(1, images_per_batch + 1) if images_per_batch % d == 0)
            raise UserError(f"--procs {n}: {n} processes cannot split the demo's batch of {images_per_batch} images "
                            f"evenly; choose one of {ok}")
    if not mpi4py_available():
        return cannot("mpi4py is not installed (pip install -e .[mpi] installs it and mpiexec)",
                      f"mpi4py is not installed: pip install -e .[mpi] for {n} processes")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        return cannot(f"no mpiexec beside {sys.executable} nor on PATH (pip install -e .[mpi] installs one)",
                      f"no mpiexec beside {sys.executable} nor on PATH")
    problem = probe(mpiexec, n)
    if problem:
        return cannot(problem, f"{n} processes failed to start, so the demo runs in one process: {problem}")
    return Launch(n, mpiexec, "data-parallel, mpiexec; --procs 1 for one process")


def start_line(launch: Launch, threads: int) -> str:
    """``demo: 2 processes x 1 BLAS thread (data-parallel, mpiexec; --procs 1 for one process)``."""
    return f"demo: {launch.procs} process{'es' if launch.procs != 1 else ''} x {_threads(threads)} ({launch.why})"


def relaunch_command(launch: Launch, argv) -> list:
    """``<mpiexec> -n P <python> -m minimaskrcnn <argv> --procs 1``: the same command in P processes (argparse
    keeps an option's last value, so the appended ``--procs 1`` wins over one in ``argv``)."""
    return [launch.mpiexec, "-n", str(launch.procs), sys.executable, "-m", "minimaskrcnn", *argv, "--procs", "1"]


def relaunch_env() -> dict:
    """This environment, with the folder this ``minimaskrcnn`` was imported from first on PYTHONPATH: the ranks
    run this very code even where it is not installed (e.g. a notebook's kernel that put it on sys.path)."""
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))


def batch_of_run(config_name: str, checkpoint=None) -> int:
    """The batch the demo will train with: a resumed checkpoint's (``resume_config`` keeps it), else the
    config's. An unreadable checkpoint gives the config's: the ranks then report it properly."""
    from ..config import get_config
    from .checkpoint import CheckpointError, read_checkpoint

    if checkpoint is not None and os.path.exists(checkpoint):
        with contextlib.suppress(CheckpointError, KeyError, TypeError, ValueError):
            meta, _, _ = read_checkpoint(checkpoint)
            return int(meta["config"]["images_per_batch"])
    return get_config(config_name, num_classes=2).images_per_batch


# Signals passed on to the processes: Ctrl-C (SIGINT: mpiexec hands it to every rank, each stops as one
# process would), SIGTERM, and SIGHUP (the terminal closed) as SIGTERM.
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM,
             **({signal.SIGHUP: signal.SIGTERM} if hasattr(signal, "SIGHUP") else {})}


def run_passing_signals(cmd, env=None) -> int:
    """Run ``cmd`` and return its exit code (128 + N for a signal N), passing each signal of ``FORWARDED`` this
    process gets on to it, once, while waiting.

    ``cmd`` runs in a session of its own, so a Ctrl-C in the terminal reaches only this process and mpiexec gets
    it once, from here: mpiexec takes a second Ctrl-C as "abort now". (mpiexec's ranks run in sessions of their
    own anyway: the terminal never reaches them directly.)"""
    started, pending = [], []

    def forward(signum, frame):
        if started:
            with contextlib.suppress(ProcessLookupError):
                started[0].send_signal(FORWARDED[signum])
        else:
            pending.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():     # signal handlers can only be set there
        previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        for signum in pending:
            proc.send_signal(FORWARDED[signum])
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code if code >= 0 else 128 - code
