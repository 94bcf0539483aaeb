"""Run by tests/test_distributed_mpi.py under ``mpiexec -n N`` (not collected by pytest).

    python tests/_mpi_worker.py equivalence DATA OUT.npz   # K iterations; rank 0 saves losses and weights
    python tests/_mpi_worker.py kill DATA OUT              # rank 1 dies (SIGKILL) in its second iteration
    python tests/_mpi_worker.py raise DATA OUT             # rank 1 raises in its second iteration (CLI)
"""
import os
import signal
import sys

import numpy as np

from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.engine import distributed
from minimaskrcnn.engine.trainer import Trainer

sys.path.insert(0, os.path.dirname(__file__))
from test_distributed import EQUIVALENCE_RUNS  # noqa: E402  (the configs and iterations both sides run)


def equivalence(data, out):
    comm = distributed.get_communicator()
    ds = CocoDataset(data, "train")
    arrays = {}
    for name, (cfg, iters) in EQUIVALENCE_RUNS.items():
        losses, state, _ = distributed.train_iterations(cfg, ds, iters, comm)
        arrays[f"{name}.losses"] = np.array([[d[k] for k in sorted(d)] for d in losses])
        arrays.update({f"{name}.w.{k}": v for k, v in state.items()})
    if comm.rank == 0:
        np.savez(out, size=comm.size, **arrays)


def fail_on_rank_1(how):
    step = Trainer.step

    def failing(self, images, targets):
        if self.comm.rank == 1 and self.iteration == 1:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise FloatingPointError("loss_mask is nan (injected by the test)")
        return step(self, images, targets)

    Trainer.step = failing


if __name__ == "__main__":
    mode, data, out = sys.argv[1:4]
    if mode == "equivalence":
        equivalence(data, out)
    else:
        from minimaskrcnn.cli import main

        fail_on_rank_1(mode)
        sys.exit(main(["train", "--data", data, "--out", out, "--iters", "4", "--batch-size", "2",
                       "--checkpoint-every", "100"]))
