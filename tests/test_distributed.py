"""Data-parallel training without MPI: ranks simulated as threads of this process (ThreadCommunicator).

SyncBatchNorm's values and float64 gradients over a batch split across ranks, the losses' normalisers (the
ranks' shares add up to the whole batch's loss and gradient), split-independent random draws, the bucketed
gradient allreduce, the one-line errors, and two simulated ranks training like one process. The same
equivalence under a real ``mpiexec -n 2`` is tests/test_distributed_mpi.py.
"""
import sys

import numpy as np
import pytest

from minimaskrcnn import config
from minimaskrcnn.data.transforms import DataLoader
from minimaskrcnn.engine import distributed
from minimaskrcnn.engine.distributed import (DistributedError, GradientAllreduce, SerialCommunicator,
                                             check_same_everywhere, run_ranks, split_batch, train_iterations)
from minimaskrcnn.model import build_model
from minimaskrcnn.model.losses import (batch_totals, fastrcnn_loss_backward, fastrcnn_loss_forward,
                                       maskrcnn_loss_backward, maskrcnn_loss_forward, rpn_loss_backward,
                                       rpn_loss_forward)
from minimaskrcnn.nn import BatchNorm2d, Parameter, Sequential, SyncBatchNorm, convert_sync_batchnorm
from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.nn.norm import batch_norm_backward, batch_norm_forward, sync_batch_norm_backward, \
    sync_batch_norm_forward
from minimaskrcnn.ops.sampler import BalancedPositiveNegativeSampler, image_streams


def small_config(**kw):
    return config.tiny(num_classes=4, min_size=64, max_size=64, images_per_batch=4, warmup_iters=2, lr_steps=(3,),
                       **kw)


# What 1 process and 2 ranks both run, here and under mpiexec (tests/_mpi_worker.py): {name: (config, iters)}.
# float64 for 3 iterations: the runs differ only in the order of additions (gradients summed per rank then
# over ranks; BN sums likewise), ~1e-16 relative per operation. In float32 that order alone (~1e-7) can flip a
# discrete choice (a proposal at the top-k or NMS boundary) from the second iteration on, after which two
# correct runs legitimately part ways; in float64 such a flip is ~1e9 times less likely. float32 is checked
# on the first iteration, whose forward pass is the same on both sides (the BN statistics are float64 sums).
EQUIVALENCE_RUNS = {"f64": (small_config(dtype="float64"), 3), "f32": (small_config(), 1)}


def run_two_ways(tmp_shapes, name):
    from minimaskrcnn.data.coco import CocoDataset

    cfg, iters = EQUIVALENCE_RUNS[name]
    ds = CocoDataset(tmp_shapes, "train")
    one = train_iterations(cfg, ds, iters)
    two = run_ranks(lambda comm: train_iterations(cfg, ds, iters, comm), 2)
    return one, two


def assert_same_training(name, losses_1, weights_1, losses_n, weights_n):
    """The tolerances of EQUIVALENCE_RUNS (see there for why):
    float64: losses to 1e-10 relative, every weight to 1e-9 of its tensor's largest magnitude (measured:
    ~1e-14; a wrong normaliser or unsynchronised BN differ by 1e-3 to 1e-1).
    float32 (one iteration): losses to 1e-5 relative, and the first update (w_after - w_init, all parameters
    together) to 1e-4 in relative L2 norm (measured: ~1e-6; single entries can be worse where a gradient is a
    sum that cancels, e.g. the bias of a BN followed by another BN)."""
    np.testing.assert_allclose(losses_n, losses_1, rtol=1e-10 if name == "f64" else 1e-5, err_msg=name)
    if name == "f64":
        for k in weights_1:
            scale = max(float(np.abs(weights_1[k]).max()), 1e-12)
            assert np.abs(weights_n[k] - weights_1[k]).max() <= 1e-9 * scale, k
    else:
        init = build_model(EQUIVALENCE_RUNS[name][0]).state_dict()
        keys = [k for k in weights_1 if weights_1[k].dtype.kind == "f"]
        step_1 = np.concatenate([(weights_1[k] - init[k]).ravel() for k in keys]).astype(np.float64)
        step_n = np.concatenate([(weights_n[k] - init[k]).ravel() for k in keys]).astype(np.float64)
        assert np.linalg.norm(step_n - step_1) <= 1e-4 * np.linalg.norm(step_1)


@pytest.fixture(scope="module")
def tmp_shapes(tmp_path_factory):
    from minimaskrcnn.data.shapes import make_shapes_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(root, num_train=8, num_val=2, image_size=64, object_size=(12, 30), progress=False)
    return root


# ---- SyncBatchNorm -------------------------------------------------------------------------------------------
def split_rows(x, sizes):
    return np.split(x, np.cumsum(sizes)[:-1])


@pytest.mark.parametrize("sizes", [(2, 2), (1, 3)])
def test_sync_batch_norm_over_ranks_is_batch_norm_of_the_whole_batch(sizes, rng):
    x = rng.standard_normal((sum(sizes), 3, 4, 5)) * 2 + 1
    g, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    dout = rng.standard_normal(x.shape)
    ref, ref_cache = batch_norm_forward(x, g, b, np.zeros(3), np.ones(3))
    ref_dx, ref_dg, ref_db = batch_norm_backward(dout, ref_cache)

    def rank(comm):
        part = slice(sum(sizes[:comm.rank]), sum(sizes[:comm.rank + 1]))
        rm, rv = np.zeros(3), np.ones(3)
        out, cache = sync_batch_norm_forward(x[part], g, b, comm, rm, rv)
        return (out, rm, rv) + sync_batch_norm_backward(dout[part], cache)

    parts = run_ranks(rank, len(sizes))
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([p[3] for p in parts]), ref_dx, rtol=1e-9, atol=1e-12)
    # each rank's dgamma/dbeta is its share: summed over the ranks (the gradient allreduce) they are BN's
    np.testing.assert_allclose(sum(p[4] for p in parts), ref_dg, rtol=1e-10)
    np.testing.assert_allclose(sum(p[5] for p in parts), ref_db, rtol=1e-10)
    rm, rv = np.zeros(3), np.ones(3)
    batch_norm_forward(x, g, b, rm, rv)
    for p in parts:                      # the running statistics: the whole batch's, equal on every rank
        np.testing.assert_allclose(p[1], rm, rtol=1e-12)
        np.testing.assert_allclose(p[2], rv, rtol=1e-12)


def test_sync_batch_norm_gradients_across_two_ranks(rng):
    """float64 central differences of the whole batch's ``sum(out * dout)`` against the ranks' analytic
    gradients, for x (every value moves every rank's statistics), gamma and beta."""
    x = rng.standard_normal((4, 3, 3, 3))
    g, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    dout = rng.standard_normal(x.shape)
    sizes = (1, 3)

    def forward(x, g, b):
        def rank(comm):
            part = slice(sum(sizes[:comm.rank]), sum(sizes[:comm.rank + 1]))
            out, cache = sync_batch_norm_forward(x[part], g, b, comm)
            return out, sync_batch_norm_backward(dout[part], cache)
        return run_ranks(rank, 2)

    parts = forward(x, g, b)
    dx = np.concatenate([p[1][0] for p in parts])
    dg, db = sum(p[1][1] for p in parts), sum(p[1][2] for p in parts)
    whole = lambda x, g, b: np.concatenate([p[0] for p in forward(x, g, b)])
    assert check_gradient(lambda v: whole(v, g, b), x, dx, dout) < 1e-7
    assert check_gradient(lambda v: whole(x, v, b), g, dg, dout) < 1e-7
    assert check_gradient(lambda v: whole(x, g, v), b, db, dout) < 1e-7


def test_convert_sync_batchnorm_keeps_the_arrays_and_names(rng):
    model = Sequential(BatchNorm2d(3), Sequential(BatchNorm2d(2)))
    model[0].running_mean[...] = 5
    before = model.state_dict()
    convert_sync_batchnorm(model, SerialCommunicator())
    assert isinstance(model[0], SyncBatchNorm) and isinstance(model[1][0], SyncBatchNorm)
    after = model.state_dict()
    assert list(after) == list(before) and all(np.array_equal(after[k], before[k]) for k in before)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(model[0](x), BatchNorm2d(3)(x), atol=1e-6)       # one rank: plain BN
    model.eval()
    np.testing.assert_array_equal(model[0](x), batch_norm_forward(x, model[0].weight.data, model[0].bias.data,
                                                                  model[0].running_mean, model[0].running_var,
                                                                  training=False)[0])


# ---- the losses' normalisers --------------------------------------------------------------------------------
def test_ranks_loss_shares_add_up_to_the_whole_batch_loss(rng):
    """Each loss on a batch split in two, divided by the whole batch's count: the two shares add up to the
    one-process loss, and the two gradients are the rows of the one-process gradient. Half 2 has no positive
    RoI (its mask share is 0) and a different number of samples: a mean per half would not add up."""
    A = 30
    obj, deltas, targets = rng.standard_normal(A), rng.standard_normal((A, 4)), rng.standard_normal((A, 4))
    labels = rng.choice([-1, 0, 1], A)
    cut = 12
    (lo, lb), c = rpn_loss_forward(obj, deltas, labels, targets)
    d_ref = rpn_loss_backward((0.7, 1.3), c)
    S = int((labels >= 0).sum())
    shares = [rpn_loss_forward(obj[s], deltas[s], labels[s], targets[s], normalizer=S)
              for s in (slice(0, cut), slice(cut, None))]
    np.testing.assert_allclose(sum(v[0][0] for v in shares), lo, rtol=1e-12)
    np.testing.assert_allclose(sum(v[0][1] for v in shares), lb, rtol=1e-12)
    for k in range(2):
        np.testing.assert_allclose(np.concatenate([rpn_loss_backward((0.7, 1.3), v[1])[k] for v in shares]),
                                   d_ref[k], rtol=1e-12)

    R, K = 20, 4
    logits, boxes, t = rng.standard_normal((R, K)), rng.standard_normal((R, 4 * K)), rng.standard_normal((R, 4))
    cls = rng.integers(0, K, R)
    cls[cut:] = 0
    (lc, lb), c = fastrcnn_loss_forward(logits, boxes, cls, t)
    shares = [fastrcnn_loss_forward(logits[s], boxes[s], cls[s], t[s], normalizer=R)
              for s in (slice(0, cut), slice(cut, None))]
    np.testing.assert_allclose(sum(v[0][0] for v in shares), lc, rtol=1e-12)
    np.testing.assert_allclose(sum(v[0][1] for v in shares), lb, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([fastrcnn_loss_backward((1.0, 1.0), v[1])[0] for v in shares]),
                               fastrcnn_loss_backward((1.0, 1.0), c)[0], rtol=1e-12)

    for mode in ("sigmoid", "softmax"):
        P, M = 5, 6
        ml, mt, pl = rng.standard_normal((P, K, M, M)), rng.uniform(0, 1, (P, M, M)), rng.integers(1, K, P)
        whole, c = maskrcnn_loss_forward(ml, mt, pl, mode)
        a, b = (maskrcnn_loss_forward(ml[s], mt[s], pl[s], mode, normalizer=P) for s in (slice(0, 2), slice(2, P)))
        np.testing.assert_allclose(a[0] + b[0], whole, rtol=1e-12)
        d_halves = [maskrcnn_loss_backward(1.0, a[1]), maskrcnn_loss_backward(1.0, b[1])]
        np.testing.assert_allclose(np.concatenate(d_halves), maskrcnn_loss_backward(1.0, c), rtol=1e-12)


def test_batch_totals_sum_the_counts_over_the_ranks():
    assert batch_totals([3, 5]) == [3, 5]
    assert run_ranks(lambda comm: batch_totals([comm.rank + 1, 10], comm), 3) == [[6, 30]] * 3


# ---- random draws, data, gradients --------------------------------------------------------------------------
def test_sampler_streams_do_not_depend_on_the_split(rng):
    labels = [rng.choice([-1, 0, 1, 2], 200) for _ in range(4)]
    sampler = BalancedPositiveNegativeSampler(32, 0.25)
    whole = sampler(labels, image_streams(0, 7, range(4)))
    halves = [sampler(labels[a:a + 2], image_streams(0, 7, range(a, a + 2))) for a in (0, 2)]
    for k in range(2):
        for x, y in zip(whole[k], halves[0][k] + halves[1][k], strict=True):
            np.testing.assert_array_equal(x, y)
    other = sampler(labels, image_streams(0, 8, range(4)))      # the next iteration draws anew
    assert any((x != y).any() for x, y in zip(whole[0], other[0]))


def test_sharded_loaders_load_the_batch_and_flips_of_one_loader(rng):
    data = [(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), {"boxes": np.array([[0, 0, 2, 3]], np.float32)})
            for _ in range(8)]
    one = DataLoader(data, 4, seed=3)
    shards = [DataLoader(data, 4, seed=3, shard=(r, 2)) for r in range(2)]
    flips = 0
    for _ in range(4):
        images, targets = next(one)
        parts = [next(s) for s in shards]
        assert shards[1].last_places == [2, 3]
        for a, b in zip(images, parts[0][0] + parts[1][0], strict=True):
            np.testing.assert_array_equal(a, b)
        flips += sum(t["boxes"][0, 0] != 0 for t in targets)
    assert 0 < flips < 16
    with pytest.raises(ValueError, match="size dividing batch_size 4"):
        DataLoader(data, 4, shard=(0, 3))


class CountingComm:
    def __init__(self, comm):
        self.comm, self.rank, self.size, self.calls = comm, comm.rank, comm.size, 0

    def allreduce(self, x, op="sum"):
        self.calls += 1
        return self.comm.allreduce(x, op)


def test_gradient_allreduce_sums_in_few_buckets():
    def rank(comm):
        params = [(f"p{i}", Parameter(np.zeros((10, 10), np.float32))) for i in range(7)]
        for i, (_, p) in enumerate(params):
            p.grad = np.full((10, 10), (comm.rank + 1) * (i + 1), np.float32)
        counting = CountingComm(comm)
        reduce = GradientAllreduce(params, counting, bucket_bytes=1000)      # 400 bytes each: 2 per bucket
        reduce()
        return [p.grad for _, p in params], counting.calls, len(reduce.buckets), reduce.nbytes

    for grads, calls, buckets, nbytes in run_ranks(rank, 2):
        assert calls == buckets == 4 and nbytes == 7 * 400
        for i, g in enumerate(grads):
            np.testing.assert_array_equal(g, np.full((10, 10), 3 * (i + 1)))


# ---- one process vs simulated ranks --------------------------------------------------------------------------
def test_two_simulated_ranks_train_like_one_process(tmp_shapes):
    """3 float64 iterations of the tiny model: 2 ranks (threads, SyncBN, allreduced gradients) and one
    process on the same batches give the same losses and weights (tolerances: assert_same_training)."""
    (losses, weights, _), two = run_two_ways(tmp_shapes, "f64")
    for losses_n, weights_n, _ in two:
        as_array = lambda ls: np.array([[d[k] for k in sorted(d)] for d in ls])
        assert_same_training("f64", as_array(losses), weights, as_array(losses_n), weights_n)


def test_without_syncbn_two_ranks_would_differ(tmp_shapes, monkeypatch):
    """The control: ranks normalising with their own images' statistics train another model."""
    from minimaskrcnn.data.coco import CocoDataset

    monkeypatch.setattr("minimaskrcnn.nn.norm.convert_sync_batchnorm", lambda model, comm: model)
    cfg = EQUIVALENCE_RUNS["f64"][0]
    ds = CocoDataset(tmp_shapes, "train")
    one = train_iterations(cfg, ds, 1)
    two = run_ranks(lambda comm: train_iterations(cfg, ds, 1, comm), 2)
    assert abs(two[0][0][0]["loss_mask"] - one[0][0]["loss_mask"]) > 1e-6 * one[0][0]["loss_mask"]


# ---- one-line errors ----------------------------------------------------------------------------------------
def test_a_batch_the_ranks_cannot_split_is_one_line():
    with pytest.raises(DistributedError, match="^3 processes cannot split a batch of 4 images evenly"):
        run_ranks(lambda comm: split_batch(4, comm), 3)


def test_launched_by_mpiexec_without_mpi4py_is_one_line(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # import mpi4py -> ImportError
    with pytest.raises(DistributedError, match=r"one of 2 processes \(PMI_SIZE=2\) but mpi4py is not installed"):
        distributed.get_communicator()
    assert distributed.launched_rank() == 1
    monkeypatch.setenv("PMI_SIZE", "1")
    assert isinstance(distributed.get_communicator(), SerialCommunicator)


def test_ranks_with_another_config_are_refused():
    def rank(comm):
        cfg = small_config(lr=0.02 if comm.rank == 0 else 0.01)
        check_same_everywhere(comm, cfg, build_model(small_config()))
    with pytest.raises(DistributedError, match=r"the processes run different config \(rank 1's hash"):
        run_ranks(rank, 2)


def test_one_failing_rank_breaks_the_others_collectives():
    def rank(comm):
        if comm.rank == 1:
            raise ValueError("rank 1 failed")
        comm.allreduce(np.ones(3))                # would wait forever for rank 1
    with pytest.raises(ValueError, match="rank 1 failed"):
        run_ranks(rank, 2, timeout=30)


def test_ranks_pad_their_images_to_the_whole_batch_size():
    """Images of other sizes on the two ranks: each pads to the largest over both, as one process pads the
    whole batch (the anchors and BN statistics depend on the padded size)."""
    models = [build_model(small_config()) for _ in range(2)]

    def rank(comm):
        models[comm.rank].comm = comm
        batch = np.ones((1, 3, 64, 32 if comm.rank == 0 else 96), np.float32)
        return models[comm.rank].pad_like_whole_batch(batch)

    padded = run_ranks(rank, 2)
    assert [p.shape for p in padded] == [(1, 3, 64, 96)] * 2
    assert padded[0][..., :32].all() and not padded[0][..., 32:].any()
