"""Data-parallel training: N processes (ranks) train one model on one batch, as one process would.

    mpiexec -n 2 python -m minimaskrcnn train --data DIR --out DIR      # MPI, through mpi4py

How it works, step by step (the paper trained this way: 8 GPUs, 2 images each, 16 per batch):

1. Every rank builds the same model (same config, same seed: the same weights; :func:`check_same_everywhere`
   makes sure code, config and weights agree before training starts).
2. The batch of B images is split: rank r loads images ``r*B/N .. (r+1)*B/N - 1`` of it (N must divide B).
3. Each rank runs forward and backward on its own images. Every loss divides by a count of the *whole*
   batch (sampled anchors, sampled RoIs: ``model/losses.py``), so a rank's loss is its share of the batch's
   loss, and its gradients are its share of the batch's gradient: d(sum of shares) = sum of d(shares).
4. :class:`GradientAllreduce` sums the gradients over the ranks (``Allreduce`` on a few large buffers):
   every rank now holds the gradient one process would have computed on the whole batch, takes the same
   SGD step, and the weights stay equal everywhere. No division by N: the shares already add up to it.
5. Batch norm is the one layer where an image's output depends on the other images of the batch (its mean
   and variance): :class:`~minimaskrcnn.nn.norm.SyncBatchNorm` takes them over the whole batch.
6. Random draws (anchor and RoI sampling, flips) come from per-image streams keyed by (seed, iteration,
   the image's place in the batch), so they do not depend on which rank holds the image.
7. Rank 0 alone writes checkpoints and logs and shows the progress bar.

Communicators here all have the same small interface, which ``nn/`` and ``model/`` use without importing this
module: ``rank``, ``size``, ``allreduce(array, op="sum") -> array``, ``allgather(obj) -> list``,
``barrier()``, ``abort(code)``. :class:`SerialCommunicator` is one process (nothing to reduce),
:class:`MPICommunicator` wraps mpi4py, :class:`ThreadCommunicator` simulates ranks as threads of one process
(tests, notebook 06), :class:`NCCLCommunicator` reduces CuPy arrays on GPUs (not run by the tests: there is
no GPU pair here). ``import minimaskrcnn`` never imports mpi4py: only :func:`get_communicator` does, and only
when a launcher started several processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..backend import get_module_for_device, get_xp, is_cupy, to_numpy

# Seconds an aborting rank waits for mpiexec to forward its last output (MPICommunicator.abort).
ABORT_GRACE_S = 0.5

# Environment variables by which launchers tell a process how many were started: MPICH / Intel MPI (PMI),
# Open MPI, MVAPICH, Slurm's srun. mpi4py is imported only when one of them says more than one.
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
BUCKET_BYTES = 25 * 2 ** 20       # gradients per Allreduce call (PyTorch DDP's default bucket size)
_BUILD_LOCK = threading.Lock()


class DistributedError(RuntimeError):
    """A set-up that cannot train data-parallel (one line; raised on every rank alike)."""


# ---- communicators --------------------------------------------------------------------------------------
class SerialCommunicator:
    """One process holds the whole batch: every collective is the identity."""
    rank, size = 0, 1

    def allreduce(self, x, op: str = "sum"):
        return x

    def allgather(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


class MPICommunicator:
    """mpi4py's ``COMM_WORLD`` (or any mpi4py communicator) behind the interface above.

    ``allreduce`` sends the array's memory directly (mpi4py's upper-case, buffer-based ``Allreduce``, no
    pickling). CuPy arrays go the same way when the MPI library is CUDA-aware (built with CUDA support).
    """

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce(self, x, op: str = "sum"):
        xp = get_xp(x)
        x = xp.ascontiguousarray(x)
        out = xp.empty_like(x)
        if is_cupy(x):       # CUDA-aware MPI reads device memory: the kernels that wrote x must be done
            xp.cuda.get_current_stream().synchronize()
        self.comm.Allreduce(x, out, op={"sum": self.MPI.SUM, "max": self.MPI.MAX}[op])
        return out

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        # What this rank just wrote (its one-line error) travels through mpiexec's forwarding, which the abort
        # tears down: flush it and give the launcher a moment, or the user may get an exit code and no word.
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)     # ends every rank: none is left waiting in a collective


class NCCLCommunicator(MPICommunicator):
    """GPUs: CuPy arrays are summed by NCCL (``cupy.cuda.nccl``), set up over MPI (rank 0 makes the NCCL id and
    sends it to the others); everything else is :class:`MPICommunicator`'s. Each rank uses GPU
    ``local rank % number of GPUs``. Not run by the tests (it needs two GPUs); kept this small on purpose."""

    def __init__(self, comm=None):
        super().__init__(comm)
        cupy = get_module_for_device("cuda")     # the package imports CuPy in backend.py only
        nccl = cupy.cuda.nccl
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_rank()
        cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
        uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None)
        self.nccl, self.nccl_comm = nccl, nccl.NcclCommunicator(self.size, uid, self.rank)

    def allreduce(self, x, op: str = "sum"):
        if not is_cupy(x):
            return super().allreduce(x, op)
        xp = get_xp(x)
        x = xp.ascontiguousarray(x)
        out = xp.empty_like(x)
        dtype = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32, np.dtype(np.float64): self.nccl.NCCL_FLOAT64,
                 np.dtype(np.int64): self.nccl.NCCL_INT64}[x.dtype]
        stream = xp.cuda.get_current_stream()
        self.nccl_comm.allReduce(x.data.ptr, out.data.ptr, x.size, dtype,
                                 {"sum": self.nccl.NCCL_SUM, "max": self.nccl.NCCL_MAX}[op], stream.ptr)
        return out


class ThreadCommunicator:
    """Rank ``rank`` of ``size`` ranks simulated as threads of one process (see :func:`run_ranks`): each
    allreduce waits until every rank has put its array in, then every rank sums them in rank order (so all
    get the same bits). For tests and notebooks: MPI's semantics without ``mpiexec``."""

    def __init__(self, rank: int, group: "_ThreadGroup"):
        self.rank, self.size, self.group = rank, group.size, group

    def allreduce(self, x, op: str = "sum"):
        parts = self.group.exchange(self.rank, x)
        xp = get_xp(x)
        out = xp.array(parts[0], copy=True)
        for p in parts[1:]:
            out = out + p if op == "sum" else xp.maximum(out, p)
        return out

    def allgather(self, obj) -> list:
        return list(self.group.exchange(self.rank, obj))

    def barrier(self) -> None:
        self.group.exchange(self.rank, None)

    def abort(self, code: int = 1) -> None:
        self.group.barrier.abort()
        raise SystemExit(code)


class _ThreadGroup:
    def __init__(self, size: int, timeout: float):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)

    def exchange(self, rank: int, value) -> list:
        self.slots[rank] = value
        self.barrier.wait()          # everyone has written ...
        parts = list(self.slots)
        self.barrier.wait()          # ... and read, before anyone writes again
        return parts


def run_ranks(fn, size: int, timeout: float = 120.0) -> list:
    """Run ``fn(comm)`` for ``size`` simulated ranks, one thread each, and return their results in rank
    order. An exception in one rank breaks the others' collectives (``threading.BrokenBarrierError``
    instead of waiting forever) and is raised here."""
    group = _ThreadGroup(size, timeout)
    results, errors = [None] * size, [None] * size

    def target(rank):
        try:
            results[rank] = fn(ThreadCommunicator(rank, group))
        except BaseException as e:    # noqa: B036 (re-raised in the caller's thread)
            errors[rank] = e
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
                 next((e for e in errors if e is not None), None))
    if first is not None:
        raise first
    return results


# ---- starting up ----------------------------------------------------------------------------------------
def launched_size() -> tuple[int, str | None]:
    """(number of processes the launcher started, the variable that says so); (1, None) without a launcher."""
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return int(value), var
    return 1, None


def launched_rank() -> int:
    """This process's rank as the launcher says (0 without one): usable before, or without, MPI."""
    if launched_size()[0] == 1:
        return 0
    for var in LAUNCHER_RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def get_communicator(gpu: bool = False):
    """The communicator of this run: :class:`SerialCommunicator` unless a launcher (``mpiexec``, ``srun``)
    started several processes, then mpi4py's ``COMM_WORLD`` (``gpu``: with NCCL for CuPy arrays). One-line
    errors if mpi4py is missing or sees fewer processes than the launcher started (mpi4py built against
    another MPI than that ``mpiexec``)."""
    n, var = launched_size()
    if n == 1:
        return SerialCommunicator()
    try:
        comm = NCCLCommunicator() if gpu else MPICommunicator()
    except ImportError:
        raise DistributedError(f"started as one of {n} processes ({var}={n}) but mpi4py is not installed: "
                               "pip install -e .[mpi] (or build mpi4py against your cluster's MPI: see the "
                               "README)") from None
    if comm.size != n:
        raise DistributedError(f"the launcher started {n} processes ({var}={n}) but MPI sees {comm.size}: mpi4py "
                               "talks to another MPI library than this mpiexec's; use the mpiexec of the MPI "
                               "that mpi4py was built against (python -c 'import mpi4py; print(mpi4py.get_config())')")
    return comm


def split_batch(images_per_batch: int, comm) -> int:
    """Images per rank; a one-line error unless the number of ranks divides the batch."""
    if images_per_batch % comm.size:
        raise DistributedError(f"{comm.size} processes cannot split a batch of {images_per_batch} images evenly: "
                               f"choose a number of processes that divides it, or --batch-size a multiple of "
                               f"{comm.size}")
    return images_per_batch // comm.size


def code_digest() -> str:
    """SHA-256 of the package's Python sources (names and contents), to compare across ranks."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode() + b"\0" + np.ascontiguousarray(to_numpy(value)).tobytes())
    return h.hexdigest()


def check_same_everywhere(comm, config, model) -> None:
    """Refuse to train if the ranks run different code, configs or initial weights (one allgather of three
    hashes): they would silently train different models and reduce meaningless gradients."""
    if comm.size == 1:
        return
    mine = {"code": code_digest(),
            "config": hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest(),
            "weights": weights_digest(model)}
    every = comm.allgather(mine)
    for what in ("code", "config", "weights"):
        differ = [r for r, d in enumerate(every) if d[what] != every[0][what]]
        if differ:
            raise DistributedError(f"the processes run different {what} (rank {differ[0]}'s hash "
                                   f"{every[differ[0]][what][:12]} != rank 0's {every[0][what][:12]}): "
                                   "start every process from the same installation and options")


def distribute_model(model, comm):
    """Make ``model`` a part of a data-parallel group: every BatchNorm2d becomes a SyncBatchNorm over ``comm``,
    and the parts that total counts over the batch (the RPN's and RoI heads' loss normalisers, the padded
    batch size) get ``comm``. One process (``comm.size == 1``): the model is left as it is. Returns it."""
    from ..nn.norm import convert_sync_batchnorm

    if comm.size > 1:
        convert_sync_batchnorm(model, comm)
        for _, m in model.named_modules():
            if hasattr(m, "comm"):
                m.comm = comm
    return model


# ---- the gradients --------------------------------------------------------------------------------------
class GradientAllreduce:
    """Sum every trainable parameter's gradient over the ranks, in buckets.

    The parameters are grouped, in order, into buckets of about ``bucket_bytes``; each bucket's gradients
    are copied into one contiguous buffer, summed by one ``allreduce``, and the parameters' ``.grad`` become
    views of the result. Few large messages, not one per parameter: each collective pays a fixed latency
    (~microseconds in one machine, tens across a network), and the tiny model alone has ~100 parameters.
    """

    def __init__(self, named_parameters, comm, bucket_bytes: int = BUCKET_BYTES):
        self.comm = comm
        self.buckets, bucket, size = [], [], 0
        for name, p in named_parameters:
            if not p.requires_grad:
                continue
            if bucket and size + p.data.nbytes > bucket_bytes:
                self.buckets.append(bucket)
                bucket, size = [], 0
            bucket.append((name, p))
            size += p.data.nbytes
        if bucket:
            self.buckets.append(bucket)

    @property
    def nbytes(self) -> int:
        """Bytes each rank sends into the allreduce per step (the parameters' size)."""
        return sum(p.data.nbytes for bucket in self.buckets for _, p in bucket)

    def __call__(self) -> None:
        for bucket in self.buckets:
            missing = [name for name, p in bucket if p.grad is None]
            if missing:   # the buffers of every rank must line up: a missing gradient is a bug, named here
                raise RuntimeError(f"parameter {missing[0]!r} has no gradient: the backward pass did not reach it")
            xp = get_xp(bucket[0][1].grad)
            flat = self.comm.allreduce(xp.concatenate([p.grad.reshape(-1) for _, p in bucket]))
            offset = 0
            for _, p in bucket:
                p.grad = flat[offset:offset + p.grad.size].reshape(p.grad.shape)
                offset += p.grad.size


def allreduce_losses(losses: dict, comm) -> dict:
    """Each rank's share of every loss -> the whole batch's losses (one small allreduce, in float64)."""
    if comm.size == 1:
        return losses
    names = list(losses)      # the same order on every rank: the same code made the dict
    total = comm.allreduce(np.array([losses[k] for k in names], np.float64))
    return {k: float(v) for k, v in zip(names, to_numpy(total))}


# ---- a few iterations, for the equivalence tests, notebook 06 and the benchmark -------------------------
def train_iterations(config, dataset, iters: int, comm=None, threads: int | None = None):
    """``iters`` iterations of a fresh model on ``dataset``, data-parallel over ``comm`` (None: this process
    alone), writing no files. Returns (the whole batch's losses of each iteration, the final state_dict as
    NumPy arrays, the seconds of each iteration): what 1 and N ranks must agree on."""
    import time

    from ..data.transforms import DataLoader
    from ..model import build_model
    from .threads import blas_threads
    from .trainer import Trainer

    comm = SerialCommunicator() if comm is None else comm
    split_batch(config.images_per_batch, comm)
    with _BUILD_LOCK:     # simulated ranks are threads, and the weights' initialisation has a global generator
        model = distribute_model(build_model(config), comm)
    loader = DataLoader(dataset, config.images_per_batch, seed=config.seed, hflip_prob=config.hflip_prob,
                        drop_last=True, shard=(comm.rank, comm.size))
    trainer = Trainer(model, loader, os.devnull, max_iters=iters, progress=False, comm=comm)
    losses, seconds = [], []
    with blas_threads(threads):
        for _ in range(iters):
            t0 = time.perf_counter()
            losses.append(trainer.step(*next(loader)))
            seconds.append(time.perf_counter() - t0)
    return losses, {k: to_numpy(v) for k, v in model.state_dict().items()}, seconds
