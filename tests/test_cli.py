"""The command line: runs are never replaced silently, resumes are exact or explicitly overridden,
checkpoints and data must agree, every user error is one line, predict goes on past bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.cli import main
from minimaskrcnn.data.shapes import make_shapes_dataset
from minimaskrcnn.nn import load_npz, save_npz


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(root, num_train=6, num_val=3, image_size=64, object_size=(12, 30), progress=False)
    return root


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory):
    """A one-iteration training run: <run>/last.npz, log.json."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(shapes), "--iters", "1", "--out", str(out), "--batch-size", "2"]) == 0
    return out


def one_error_line(capsys, *needles):
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert "Traceback" not in err[0]
    return err[0]


def copy_run(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


# ---- 7: a run is never replaced silently ----------------------------------------------------------------
def test_train_refuses_an_out_holding_a_run_without_resume_or_force(shapes, run, tmp_path, capsys):
    out = copy_run(run, tmp_path)
    before = (out / "last.npz").read_bytes()
    args = ["train", "--data", str(shapes), "--iters", "1", "--out", str(out), "--batch-size", "2"]
    assert main(args) == 1
    one_error_line(capsys, str(out), "already holds a run", "--resume", "--force")
    assert (out / "last.npz").read_bytes() == before
    assert main(args + ["--force"]) == 0
    assert (out / "last.npz").read_bytes() != before


def test_demo_refuses_an_out_holding_a_run_before_doing_anything(run, tmp_path, capsys):
    out = copy_run(run, tmp_path)
    assert main(["demo", "--out", str(out), "--data", str(tmp_path / "data"), "--iters", "1"]) == 1
    one_error_line(capsys, "already holds a run")
    assert not (tmp_path / "data").exists()


# ---- 10: --resume is exact unless --override ------------------------------------------------------------
def test_resume_with_another_lr_or_batch_size_is_refused_naming_the_values(shapes, run, tmp_path, capsys):
    out = copy_run(run, tmp_path)
    base = ["train", "--data", str(shapes), "--iters", "2", "--out", str(out), "--resume"]
    assert main(base + ["--lr", "0.5", "--batch-size", "3"]) == 1
    line = one_error_line(capsys, "lr: 0.02 in the checkpoint, 0.5 now", "images_per_batch: 2 in the checkpoint, 3 now",
                          "--override")
    assert "max_iters" not in line                      # training longer is not a change of the run
    assert main(base + ["--config", "resnet18_fpn"]) == 1
    one_error_line(capsys, "differs from the checkpoint's")
    assert json.loads(str(load_npz(out / "last.npz")["meta.json"]))["iteration"] == 1   # untouched

    assert main(base + ["--lr", "0.5", "--override"]) == 0
    meta = json.loads(str(load_npz(out / "last.npz")["meta.json"]))
    assert meta["iteration"] == 2 and meta["config"]["lr"] == 0.5
    log = json.loads((out / "log.json").read_text())
    assert log["overrides"] == [{"iteration": 1, "changes": {"lr": [0.02, 0.5]}}]
    assert "--override: lr 0.02 -> 0.5" in capsys.readouterr().out


def test_resume_keeps_the_checkpoint_config_and_may_train_longer(shapes, run, tmp_path):
    out = copy_run(run, tmp_path)
    assert main(["train", "--data", str(shapes), "--iters", "2", "--out", str(out), "--resume"]) == 0
    meta = json.loads(str(load_npz(out / "last.npz")["meta.json"]))
    assert meta["iteration"] == 2 and meta["config"]["images_per_batch"] == 2 and meta["config"]["max_iters"] == 2


# ---- 18: --iters defaults to the config's schedule --------------------------------------------------------
def test_train_iters_defaults_to_the_config_max_iters(shapes, tmp_path, monkeypatch):
    import minimaskrcnn.engine.run as run_module
    from minimaskrcnn.config import tiny

    seen = {}
    monkeypatch.setattr(run_module, "train_model", lambda config, *a, **k: seen.setdefault("config", config))
    assert main(["train", "--data", str(shapes), "--out", str(tmp_path / "o")]) == 0
    assert seen["config"].max_iters == tiny(num_classes=4).max_iters


# ---- 11: the checkpoint's classes against the data's ----------------------------------------------------
def _relabelled(shapes, tmp_path, change):
    root = tmp_path / "other"
    (root / "annotations").mkdir(parents=True)
    os.symlink(shapes / "val", root / "val")
    data = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    change(data)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def test_evaluate_refuses_data_with_other_classes(shapes, run, tmp_path, capsys):
    def rename(data):
        data["categories"][0]["name"] = "disc"
    root = _relabelled(shapes, tmp_path, rename)
    assert main(["evaluate", "--data", str(root), "--checkpoint", str(run / "last.npz"), "--out", str(tmp_path)]) == 1
    one_error_line(capsys, "does not fit", "only in the model: circle", "only in the data: disc")

    def add(data):
        data["categories"].append({"id": 4, "name": "star"})
    root = _relabelled(shapes, tmp_path / "b", add)
    assert main(["evaluate", "--data", str(root), "--checkpoint", str(run / "last.npz"), "--out", str(tmp_path)]) == 1
    one_error_line(capsys, "the model has 3 classes, the data 4", "only in the data: star")

    def drop(data):
        data["categories"] = data["categories"][:2]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] <= 2]
    root = _relabelled(shapes, tmp_path / "c", drop)
    assert main(["evaluate", "--data", str(root), "--checkpoint", str(run / "last.npz"), "--out", str(tmp_path)]) == 1
    one_error_line(capsys, "the model has 3 classes, the data 2", "only in the model: triangle")


# ---- 12: a diverged checkpoint is one line --------------------------------------------------------------
def test_evaluating_a_diverged_checkpoint_is_one_line(shapes, run, tmp_path, capsys):
    arrays = load_npz(run / "last.npz")
    blown = {k: (v * 1e7 if k.startswith("model.") and v.dtype.kind == "f" and "bn" not in k else v)
             for k, v in arrays.items()}
    save_npz(tmp_path / "blown.npz", blown)
    assert main(["evaluate", "--data", str(shapes), "--checkpoint", str(tmp_path / "blown.npz")]) == 1
    one_error_line(capsys, "blown.npz", "diverged")


# ---- 13: one line for every user error ------------------------------------------------------------------
def test_empty_split_unknown_config_and_unwritable_out_are_one_line(shapes, run, tmp_path, capsys):
    data = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    (shapes / "annotations" / "instances_empty.json").write_text(json.dumps({**data, "images": [],
                                                                             "annotations": []}))
    try:
        assert main(["evaluate", "--data", str(shapes), "--split", "empty", "--checkpoint", str(run / "last.npz"),
                     "--out", str(tmp_path)]) == 1
        one_error_line(capsys, "instances_empty.json", "no images")
        assert main(["train", "--data", str(shapes), "--train-split", "empty", "--out", str(tmp_path / "e")]) == 1
        one_error_line(capsys, "no images")
    finally:
        (shapes / "annotations" / "instances_empty.json").unlink()

    assert main(["train", "--data", str(shapes), "--config", "nosuch", "--iters", "1", "--out",
                 str(tmp_path / "n")]) == 1
    one_error_line(capsys, "--config", "nosuch")
    assert main(["predict", "--checkpoint", str(tmp_path / "w.npz"), "--config", "nosuch", "--num-classes", "4",
                 "x.png"]) == 1
    one_error_line(capsys, "not found")
    np.savez(tmp_path / "w.npz", a=np.zeros(1))
    assert main(["predict", "--checkpoint", str(tmp_path / "w.npz"), "--config", "nosuch", "--num-classes", "4",
                 "x.png"]) == 1
    one_error_line(capsys, "--config", "nosuch")

    (tmp_path / "file").write_text("a file")
    image = next((shapes / "val").glob("*.png"))
    assert main(["predict", "--checkpoint", str(run / "last.npz"), str(image), "--out",
                 str(tmp_path / "file" / "sub")]) == 1
    one_error_line(capsys, "--out", "cannot write there")
    assert main(["predict", "--checkpoint", str(run / "last.npz"), str(image), "--out", str(tmp_path / "file")]) == 1
    one_error_line(capsys, "--out", "not a folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_predict_into_a_read_only_folder_is_one_line(shapes, run, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    image = next((shapes / "val").glob("*.png"))
    try:
        assert main(["predict", "--checkpoint", str(run / "last.npz"), str(image), "--out", str(out)]) == 1
    finally:
        out.chmod(0o755)
    one_error_line(capsys, "--out", "cannot write there")


def test_a_failing_write_is_reported_and_the_rest_go_on(shapes, run, tmp_path, capsys, monkeypatch):
    """A write that fails for one image (e.g. the folder turned read-only, the disk filled) stops only that one."""
    from matplotlib.figure import Figure

    images = sorted((shapes / "val").glob("*.png"))
    save = Figure.savefig
    calls = []

    def flaky(self, path, *a, **k):
        calls.append(path)
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied")
        return save(self, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", flaky)
    assert main(["predict", "--checkpoint", str(run / "last.npz"), *map(str, images), "--out", str(tmp_path)]) == 1
    one_error_line(capsys, "1 of 3 images failed")
    assert len(list(tmp_path.glob("*_pred.png"))) == 2


# ---- 14: predict: unique names, bad inputs reported, the rest go on -------------------------------------
def test_predict_gives_unique_names_and_goes_on_past_bad_inputs(run, shapes, tmp_path, capsys):
    source = np.asarray(Image.open(next((shapes / "val").glob("*.png"))))
    for rel in ("a/x.png", "b/x.png", "b/x.jpg", "c/y.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(source).save(tmp_path / rel)
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    inputs = [tmp_path / "a/x.png", tmp_path / "missing.png", tmp_path / "b/x.png", tmp_path / "b/broken.png",
              tmp_path / "b/x.jpg", tmp_path / "c/y.png", tmp_path / "c/y.png"]
    out = tmp_path / "pred"
    code = main(["predict", "--checkpoint", str(run / "last.npz"), *map(str, inputs), "--out", str(out),
                 "--score-threshold", "0.0"])
    assert code == 1
    printed = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a_x_png_pred.png", "b_x_jpg_pred.png", "b_x_png_pred.png",
                                                     "y_pred.png"]
    assert "missing.png: image file not found" in printed.out and "broken.png: cannot read" in printed.out
    err = [line for line in printed.err.splitlines() if "error:" in line]
    assert len(err) == 1 and "2 of 6 images failed" in err[0]


# ---- 19: BLAS threads --------------------------------------------------------------------------------------
def test_threads_option_sets_the_blas_threads_for_the_command(monkeypatch):
    import minimaskrcnn.cli as cli
    from minimaskrcnn.engine.threads import DEFAULT_THREADS, blas_thread_counts, blas_threads

    before = blas_thread_counts()
    assert before                                       # NumPy's BLAS is found
    with blas_threads(1):
        assert set(blas_thread_counts().values()) == {1}
    assert blas_thread_counts() == before
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "evaluate", lambda args: seen.append(blas_thread_counts()))
    for argv, expected in ((["--threads", "2"], 2), ([], DEFAULT_THREADS)):
        assert main(["evaluate", "--data", "d", "--checkpoint", "c", *argv]) == 0
        assert set(seen[-1].values()) == {expected}
    assert DEFAULT_THREADS == 1
    assert main(["evaluate", "--data", "d", "--checkpoint", "c", "--threads", "0"]) == 1
