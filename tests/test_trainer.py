"""The training loop: exact resume, the NaN guard, checkpoints on disk, and the command line's errors."""
import json

import numpy as np
import pytest

from minimaskrcnn import config
from minimaskrcnn.cli import main
from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.shapes import make_shapes_dataset
from minimaskrcnn.data.transforms import DataLoader
from minimaskrcnn.engine.trainer import Trainer, TrainingDiverged
from minimaskrcnn.model import build_model
from minimaskrcnn.nn import load_npz


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(root, num_train=10, num_val=3, image_size=64, object_size=(12, 30), progress=False)
    return root


def small_config(**kw):
    return config.tiny(num_classes=4, min_size=64, max_size=64, images_per_batch=2, warmup_iters=2, lr_steps=(3,),
                       **kw)


def make_trainer(root, out, iters, checkpoint_every=2):
    ds = CocoDataset(root, "train")
    model = build_model(small_config())
    loader = DataLoader(ds, 2, seed=0)
    return Trainer(model, loader, out, max_iters=iters, checkpoint_every=checkpoint_every, progress=False)


def test_resumed_training_reaches_exactly_the_uninterrupted_weights(shapes, tmp_path):
    full = make_trainer(shapes, tmp_path / "full", 5)
    full.train()
    part = make_trainer(shapes, tmp_path / "part", 2)
    part.train()                                  # stops after 2 iterations, checkpoint written
    resumed = make_trainer(shapes, tmp_path / "part", 5)
    resumed.load()
    assert resumed.iteration == 2
    resumed.train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [round(d["loss_mask"], 12) for d in full.log["losses"]] == \
        [round(d["loss_mask"], 12) for d in resumed.log["losses"]]
    saved = load_npz(tmp_path / "part" / "last.npz")
    assert json.loads(str(saved["meta.json"]))["iteration"] == 5


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    tr = make_trainer(shapes, tmp_path, 6, checkpoint_every=1)
    tr.max_iters = 2
    tr.train()
    good = load_npz(tr.checkpoint_path)
    tr.max_iters = 6
    name, p = next(iter(tr.model.named_parameters()))
    p.data[...] = np.nan                          # poison the weights: the next loss is NaN
    with pytest.raises(TrainingDiverged, match=r"stopped at iteration 2: .*not finite.*last good checkpoint"):
        tr.train()
    kept = load_npz(tr.checkpoint_path)
    np.testing.assert_array_equal(kept[f"model.{name}"], good[f"model.{name}"])
    assert np.isfinite(kept[f"model.{name}"]).all()


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "instances_train.json").write_text("{not json")
    code = main(["train", "--data", str(bad), "--iters", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "instances_train.json" in err[0] and "Traceback" not in err[0]
    code = main(["evaluate", "--data", str(bad), "--checkpoint", str(tmp_path / "missing.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "missing.npz" in err and "not found" in err
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--iters", "1", "--out", str(tmp_path / "o")])
    assert code == 1 and "annotation file not found" in capsys.readouterr().err


def test_cli_resume_from_a_bad_checkpoint_is_one_line(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.npz").write_bytes(b"truncated")
    args = ["train", "--data", str(shapes), "--iters", "1", "--out", str(out), "--resume"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "last.npz" in err[0] and "not a zip archive" in err[0]
    np.savez(out / "last.npz", weights=np.zeros(3))            # a weights-only file, not a training checkpoint
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "not a training checkpoint" in err[0]


def test_cli_train_evaluate_predict_round_trip(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(shapes), "--config", "tiny", "--iters", "2", "--out", str(out),
                 "--batch-size", "2"]) == 0
    assert (out / "last.npz").exists() and (out / "log.json").exists()
    assert main(["evaluate", "--data", str(shapes), "--checkpoint", str(out / "last.npz")]) == 0
    assert "IoU type: segm" in capsys.readouterr().out
    image = next((shapes / "val").glob("*.png"))
    assert main(["predict", "--checkpoint", str(out / "last.npz"), str(image), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0.0"]) == 0
    assert (tmp_path / "p" / f"{image.stem}_pred.png").exists()


def test_blown_up_weights_are_never_saved_as_the_last_good_checkpoint(shapes, tmp_path):
    """A run diverging without NaN yet (weights grown to 1e8 by too large a step): training stops before
    saving them, and the checkpoint kept is the last sane one."""
    tr = make_trainer(shapes, tmp_path, 6, checkpoint_every=1)
    step = tr.step

    def step_then_blow_up(images, targets):
        losses = step(images, targets)
        if tr.iteration == 4:                           # after the 4th update: as if its step were huge
            dict(tr.model.named_parameters())["roi_heads.box_head.fc6.weight"].data *= 1e8
        return losses

    tr.step = step_then_blow_up
    with pytest.raises(TrainingDiverged, match=r"iteration 4: the weights blew up \(max \|w\| = .*\(iteration 3\)"):
        tr.train()
    kept = load_npz(tr.checkpoint_path)
    assert json.loads(str(kept["meta.json"]))["iteration"] == 3
    assert max(float(np.abs(v).max()) for k, v in kept.items() if k.startswith("model.") and v.size) < 100


def test_a_loss_spike_postpones_the_checkpoint_and_is_named_when_it_diverges(shapes, tmp_path):
    tr = make_trainer(shapes, tmp_path, 12, checkpoint_every=1)
    forward = tr.model.forward_train

    def spiking(images, targets, **kwargs):
        losses = forward(images, targets, **kwargs)
        return {k: v * 1e3 for k, v in losses.items()} if tr.iteration >= 8 else losses

    tr.model.forward_train = spiking
    with pytest.raises(TrainingDiverged, match=r"iteration 12: the loss .* its running median.*\(iteration 8\)"):
        tr.train()
    assert json.loads(str(load_npz(tr.checkpoint_path)["meta.json"]))["iteration"] == 8


def test_log_is_in_step_with_the_checkpoint_and_stale_temporaries_go(shapes, tmp_path):
    tr = make_trainer(shapes, tmp_path, 3, checkpoint_every=2)
    tr.train()
    # A run killed during a save leaves save_npz's temporary file; a later run writes log.json ahead of
    # the checkpoint (here: a log claiming 7 iterations) or leaves it corrupt.
    (tmp_path / ".tmp_abc123.npz").write_bytes(b"x" * 100)
    (tmp_path / "log.json.tmp999").write_text("{")
    (tmp_path / "notes.npz").write_bytes(b"mine")
    (tmp_path / "log.json").write_text(json.dumps({"losses": [{"loss_mask": 1.0}] * 7, "lr": [0.1] * 7,
                                                   "seconds": [1.0] * 7, "evals": []}))
    resumed = make_trainer(shapes, tmp_path, 5)
    resumed.load()
    assert resumed.iteration == 3 and len(resumed.log["losses"]) == 3
    assert resumed.log["losses"] == tr.log["losses"]
    resumed.train()
    assert not (tmp_path / ".tmp_abc123.npz").exists() and not (tmp_path / "log.json.tmp999").exists()
    assert (tmp_path / "notes.npz").read_bytes() == b"mine"            # not ours: kept
    on_disk = json.loads((tmp_path / "log.json").read_text())
    meta = json.loads(str(load_npz(tmp_path / "last.npz")["meta.json"]))
    assert len(on_disk["losses"]) == meta["iteration"] == 5 and on_disk == meta["log"]
    assert meta["class_names"] == ["__background__", "circle", "rectangle", "triangle"]


def test_resume_with_a_corrupt_meta_or_log_is_one_line(shapes, tmp_path, capsys):
    from minimaskrcnn.nn import save_npz

    out = tmp_path / "run"
    assert main(["train", "--data", str(shapes), "--iters", "1", "--out", str(out), "--batch-size", "2"]) == 0
    capsys.readouterr()
    arrays = load_npz(out / "last.npz")
    args = ["train", "--data", str(shapes), "--iters", "2", "--out", str(out), "--resume"]
    save_npz(out / "last.npz", {**arrays, "meta.json": np.array('{"iteration": 1, "config": {')})
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.json entry is not valid JSON" in err[0]
    # A checkpoint written before the log went inside it: the log.json beside it is read, and must parse.
    meta = json.loads(str(arrays["meta.json"]))
    del meta["log"]
    save_npz(out / "last.npz", {**arrays, "meta.json": np.array(json.dumps(meta))})
    (out / "log.json").write_text('{"losses": [')
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "log.json: the training log cannot be read" in err[0]
