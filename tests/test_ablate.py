"""Issue 11: the ablations' switches (C5 at stride 32, mask_on=False), the hard shapes set, the statistics, and
`python -m minimaskrcnn ablate` itself (a smoke run: a few iterations, one variant per table, 64 px images);
issue 12: Table 6 (RoIPool vs RoIAlign for keypoints) on the pose set, and each table's own provenance."""
import json

import numpy as np
import pytest
from test_model import tiny_float64_model

from minimaskrcnn import config as configs
from minimaskrcnn.cli import main
from minimaskrcnn.data import shapes
from minimaskrcnn.data.shapes_hard import HARD_NAMES, draw_hard_image, hard_shape_area, hard_shape_mask
from minimaskrcnn.engine import ablate as ab
from minimaskrcnn.engine.ablate_report import summarise
from minimaskrcnn.engine.ablate_tables import DATASETS, TABLE_CHOICES, TABLE_ORDER, TABLES
from minimaskrcnn.model import build_model
from minimaskrcnn.nn.gradcheck import check_directional
from minimaskrcnn.testing import fixed_proposals, fixed_sample_losses
from minimaskrcnn.testing import synthetic_scene as scene


# ---- the switches -----------------------------------------------------------------------------------------------
def _whole_model_check(model):
    rng = np.random.default_rng(3)
    images, targets = (list(t) for t in zip(*[scene(rng, 2), scene(rng, 3)]))
    proposals = fixed_proposals(model, images, targets)
    losses = fixed_sample_losses(model, images, targets, proposals, backward=True)
    params = {n: p.data for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    err = check_directional(lambda: sum(fixed_sample_losses(model, images, targets, proposals).values()), params,
                            grads)
    assert err < 1e-7, f"directional relative error {err:.2e}"
    return losses


def test_c5_model_pools_one_stride32_map_and_its_gradient_is_exact():
    model = tiny_float64_model(architecture="c5", anchor_sizes=((16, 32),))
    batch = np.zeros((1, 3, 64, 64))
    features = model.backbone(batch)
    model.backbone.free_cache()
    assert len(features) == 1 and features[0].shape[-2:] == (2, 2)             # stride 32
    assert model.roi_heads.featmap_levels == (0,)
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("backbone.body.layer4.") for n in names) and not any(".fpn." in n for n in names)
    assert any(n.startswith("roi_heads.mask_head.") for n in names)             # FPN's FCN head, not res5
    losses = _whole_model_check(model)
    assert losses["loss_mask"] > 0


def test_c5_builder_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="one tuple of sizes"):
        build_model(configs.tiny(3, architecture="c5"))                         # five levels of anchors
    with pytest.raises(ValueError, match="mask_head"):
        build_model(configs.tiny_c5(3, mask_head="mlp"))
    with pytest.raises(ValueError, match="architecture"):
        configs.tiny(3, architecture="c6")


@pytest.mark.parametrize("architecture", ["fpn", "c4", "c5"])
def test_mask_on_false_is_faster_rcnn(architecture):
    """Table 3's Faster R-CNN: no mask parameters, no loss_mask, no masks predicted, box AP only."""
    from minimaskrcnn.engine.inference import model_iou_types

    make = {"fpn": configs.tiny, "c4": configs.tiny_c4, "c5": configs.tiny_c5}[architecture]
    model = build_model(make(3, mask_on=False, min_size=64, max_size=64))
    assert not any("mask" in n for n, _ in model.named_parameters())
    assert model_iou_types(model) == ("bbox",)
    assert model_iou_types(build_model(make(3, min_size=64, max_size=64))) == ("bbox", "segm")
    rng = np.random.default_rng(1)
    images, targets = (list(t) for t in zip(*[scene(rng, 3), scene(rng, 2)]))
    losses = model.train().forward_train(images, targets)
    assert "loss_mask" not in losses and losses["loss_classifier"] > 0
    model.zero_grad()
    model.backward()
    assert all(p.grad is not None for _, p in model.named_parameters())
    assert all("masks" not in p for p in model.predict(images))


def test_mask_on_false_gradient_float64():
    _whole_model_check(tiny_float64_model(mask_on=False))


# ---- the hard shapes set ----------------------------------------------------------------------------------------
def test_hard_images_are_deterministic_and_classes_compete():
    draws = [draw_hard_image(np.random.default_rng([0, 0, i])) for i in range(60)]
    again = draw_hard_image(np.random.default_rng([0, 0, 7]))
    assert all(np.array_equal(a, b) for a, b in zip(draws[7], again))
    labels = np.concatenate([d[2] for d in draws])
    assert set(labels.tolist()) == set(range(1, 9))
    touching = total = 0
    for image, masks, labs in draws:
        assert image.shape == (192, 192, 3) and masks.shape[1:] == (192, 192)
        assert masks.sum(axis=0).max() <= 1 and np.all(masks.sum(axis=(1, 2)) >= 16)     # visible parts
        boxes = [(xs.min(), ys.min(), xs.max(), ys.max()) for ys, xs in (np.nonzero(m) for m in masks)]
        for a in range(len(labs)):
            total += 1
            touching += any(labs[a] != labs[b] and max(boxes[a][0], boxes[b][0]) <= min(boxes[a][2], boxes[b][2])
                            and max(boxes[a][1], boxes[b][1]) <= min(boxes[a][3], boxes[b][3])
                            for b in range(len(labs)) if b != a)
    assert touching / total > 0.6, "most objects should share their box with an object of another class"


@pytest.mark.parametrize("name", HARD_NAMES)
def test_hard_shape_area_matches_its_raster(name):
    mask = hard_shape_mask(name, 200.3, 199.7, 150.0, 0.4, 0.5, 400)
    assert abs(mask.sum() / hard_shape_area(name, 150.0, 0.5) - 1) < 0.02


def test_demo_set_parameters_are_unchanged_and_hard_kind_is_recorded(tmp_path):
    demo = shapes._params(2000, 200, 128, 0, 4, (10, 60), 0.5)
    assert "kind" not in demo      # an existing demo set's shapes.json still matches: it is reused, not rebuilt
    root = shapes.make_shapes_dataset(tmp_path / "h", num_train=3, num_val=2, image_size=64, object_size=(12, 30),
                                      kind="hard", progress=False)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(HARD_NAMES)
    assert json.loads((root / "shapes.json").read_text())["kind"] == "hard"
    assert shapes.is_complete_shapes_dataset(root, num_train=3, num_val=2, image_size=64, object_size=(12, 30),
                                             kind="hard")
    assert not shapes.is_complete_shapes_dataset(root, num_train=3, num_val=2, image_size=64, object_size=(12, 30))
    with pytest.raises(ValueError, match="kind"):
        shapes.make_shapes_dataset(tmp_path / "x", kind="harder", progress=False)


# ---- planning and statistics ------------------------------------------------------------------------------------
def test_plan_shares_equal_configs_and_gives_each_table_its_seeds():
    hard = ab.TableData("data/shapes_hard", ("__background__",) + HARD_NAMES, fingerprint="h")
    easy = ab.TableData("data/shapes_192", ("__background__", "circle", "rectangle", "triangle"), fingerprint="e")
    large = ab.TableData("data/shapes_192_large", easy.class_names, fingerprint="l")
    runs, layout = ab.plan_runs(TABLE_ORDER, {"hard": hard, "shapes": easy, "large": large})
    # 2b's sigmoid is §4.2's class-specific model (same config, same data: the same runs), 2e's FCN Table 3's
    assert layout["2b"]["sigmoid"] == layout["agnostic"]["class-specific"]
    assert layout["2e"]["FCN"] == layout["3"]["Mask R-CNN"]
    # 2c's RoIAlign (avg) is the same config on other data: other runs
    assert not set(layout["2c"]["RoIAlign (avg)"]) & set(layout["2b"]["sigmoid"])
    assert {runs[r]["data"] for r in layout["2b"]["softmax"]} == {"data/shapes_hard"}
    assert {runs[r]["data"] for t in ("2c", "2e", "3") for ids in layout[t].values() for r in ids} == \
        {"data/shapes_192"}
    # stride 32: the same generator and image size with larger objects (1-4 cells of C5)
    assert {runs[r]["data"] for ids in layout["2d"].values() for r in ids} == {"data/shapes_192_large"}
    shapes, larger = DATASETS["shapes"], DATASETS["large"]
    assert shapes["image_size"] == larger["image_size"] == 192
    assert shapes["params"]["object_size"] == (15.0, 90.0) and larger["params"]["object_size"] == (30.0, 120.0)
    assert {k: v for k, v in shapes["params"].items() if k != "object_size"} == \
        {k: v for k, v in larger["params"].items() if k != "object_size"}
    assert len(layout["2c"]["RoIPool (max)"]) == len(layout["2d"]["RoIPool"]) == 3
    assert len(layout["2b"]["softmax"]) == len(layout["3"]["Mask R-CNN"]) == 2
    assert len(runs) == 15 + 6 + 4 + 2 + 4 + 2
    pool, align = (runs[layout["2d"][v][0]]["config"] for v in ("RoIPool", "RoIAlign"))
    assert {k for k in pool if pool[k] != align[k]} == {"roi_op"}      # nothing else differs between variants
    assert pool["architecture"] == "c5" and runs[layout["2c"]["RoIPool (max)"][0]]["config"]["architecture"] == "c4"


def _fake_results(layout, table, values):
    """results with mask AP = values[variant][seed] (the other numbers follow)."""
    out = {}
    for name, ids in layout[table].items():
        for r, v in zip(ids, values[name]):
            stats = {"AP": v, "AP50": v + 20, "AP75": v + 1, "APs": 0, "APm": 0}
            out[r] = {"iterations": 5, "config": {"min_size": 64}, "segm": stats, "bbox": stats}
    return out


def test_a_gap_counts_only_beyond_the_seed_spread():
    _, layout = ab.plan_runs(["2d"], ab.TableData("d", ("bg", "a", "b")))
    clear = summarise(["2d"], layout, _fake_results(layout, "2d", {"RoIPool": [10, 11, 12], "RoIAlign": [15, 16, 14]}))
    gap = clear["2d"]["comparisons"][0]["gaps"]["segm AP"]
    assert gap == {"ours": 4.0, "paper": 7.3, "spread": 2, "counts": True}
    noisy = summarise(["2d"], layout, _fake_results(layout, "2d", {"RoIPool": [10, 14, 12], "RoIAlign": [15, 11, 13]}))
    assert noisy["2d"]["comparisons"][0]["gaps"]["segm AP"]["counts"] is False
    assert noisy["2d"]["variants"][0]["ours"]["segm"]["AP"] == {"seeds": [10, 14, 12], "mean": 12.0, "spread": 4}


# ---- the command: a smoke run -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    return shapes.make_shapes_dataset(tmp_path_factory.mktemp("abl") / "hard", num_train=6, num_val=3,
                                      image_size=64, object_size=(14, 30), kind="hard", progress=False)


def test_ablate_smoke_one_variant_per_table_then_resume(smoke_data, tmp_path, capsys):
    out = tmp_path / "abl"
    argv = ["ablate", "--table", "2d", "--data", str(smoke_data), "--image-size", "64", "--iters", "2",
            "--seeds", "1", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "ablations.json").read_text())
    assert set(record["tables"]) == {"2d"} and len(record["runs"]) == 2
    run = next(iter(record["runs"].values()))
    assert {"variant", "seed", "config", "iterations", "wall_time_s", "bbox", "segm"} <= set(run)
    assert run["iterations"] == 2 and set(run["segm"]) == {"AP", "AP50", "AP75", "APs", "APm"}
    assert "RoIAlign − RoIPool" in (out / "ablations.md").read_text() and (out / "ablation_2d.png").stat().st_size
    assert set(json.loads((out / "examples.json").read_text())) == set(record["runs"])
    # run again: nothing is trained; a run interrupted after its checkpoint resumes from it
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/last.npz")}
    assert main(argv) == 0
    assert "2 of 2 runs already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/last.npz")} == stamps
    victim = sorted(out.glob("runs/*/result.json"))[0]
    victim.unlink()
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out and victim.exists()
    # one variant of every other table trains, evaluates and reports (the non-default one: the switch at work)
    names = ("__background__",) + HARD_NAMES
    for t in ("2c", "2b", "agnostic", "2e", "3"):
        runs, layout = ab.plan_runs([t], ab.TableData(str(smoke_data), names), seeds=1, iters=2, image_size=64)
        run_id = layout[t][TABLES[t].variants[0].name][0]
        result = ab.run_one(run_id, runs[run_id], tmp_path / "one", progress=False)
        assert result["iterations"] == 2 and ("segm" in result) == (t != "3") and "bbox" in result


def test_ablate_errors_are_one_line(smoke_data, tmp_path, capsys):
    for extra, message in ((["--seeds", "0"], "--seeds must be at least 1"),
                           (["--image-size", "100"], "multiple of 32")):
        assert main(["ablate", "--table", "2b", "--data", str(smoke_data), "--out", str(tmp_path), *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err


# ---- Table 6: RoIPool vs RoIAlign for keypoints, on the pose set ------------------------------------------------
def test_table6_is_planned_on_the_pose_set_with_its_keypoints_and_is_not_in_all():
    from minimaskrcnn.cli import make_parser
    from minimaskrcnn.data.keypoints import COCO_PERSON_KEYPOINTS

    assert "6" not in TABLE_ORDER and "6" in TABLE_CHOICES and set(TABLE_CHOICES) == {*TABLES, "all"}
    assert ab.check_options("all", None, None, None, None) == list(TABLE_ORDER)
    assert make_parser().parse_args(["ablate", "--table", "6"]).table == "6"
    demo = make_parser().parse_args(["demo", "--task", "keypoints"])     # the keypoint demo's pose set
    poses = DATASETS["poses"]["params"]
    assert (poses["num_train"], poses["num_val"]) == (demo.num_train, demo.num_val)
    assert TABLES["6"].data == "poses" and DATASETS["poses"]["image_size"] == poses["image_size"] == 128
    names = tuple(COCO_PERSON_KEYPOINTS[:5])
    data = {"large": ab.TableData("h", ("__background__",) + HARD_NAMES, fingerprint="h"),
            "poses": ab.TableData("p", ("__background__", "person"), (names, ((1, 2), (2, 3))), "p", 128)}
    runs, layout = ab.plan_runs(["2d", "6"], data)
    pool, align = (runs[layout["6"][v][0]] for v in ("RoIPool", "RoIAlign"))
    assert {k for k in pool["config"] if pool["config"][k] != align["config"][k]} == {"roi_op"}
    cfg = align["config"]
    assert align["data"] == "p" and runs[layout["2d"]["RoIAlign"][0]]["data"] == "h"
    assert cfg["keypoint_on"] and cfg["num_keypoints"] == 5 and tuple(cfg["keypoint_names"]) == names
    assert cfg["min_size"] == cfg["max_size"] == 128 and cfg["num_classes"] == 2
    assert runs[layout["2d"]["RoIAlign"][0]]["config"]["min_size"] == 192           # each table its own size
    assert (cfg["max_iters"], cfg["warmup_iters"], tuple(cfg["lr_steps"])) == (1300, 100, (1040,))
    assert len(layout["6"]["RoIPool"]) == 2 and tuple(cfg["keypoint_skeleton"][0]) == (1, 2)
    with pytest.raises(ab.UserError, match="no keypoint names"):        # a keypoint config needs keypoint data
        ab.plan_runs(["6"], ab.TableData("s", ("__background__", "circle")))


@pytest.fixture(scope="module")
def smoke_poses(tmp_path_factory):
    from minimaskrcnn.data.poses import make_poses_dataset
    return make_poses_dataset(tmp_path_factory.mktemp("abl6") / "poses", num_train=4, num_val=2, progress=False)


def test_ablate_table6_smoke_and_each_table_keeps_its_own_command(smoke_data, smoke_poses, tmp_path):
    out = tmp_path / "abl"
    first = ["ablate", "--table", "2d", "--data", str(smoke_data), "--image-size", "64", "--iters", "1",
             "--seeds", "1", "--out", str(out)]
    assert main(first) == 0
    six = ["ablate", "--table", "6", "--data", str(smoke_poses), "--image-size", "64", "--iters", "2",
           "--seeds", "1", "--out", str(out)]
    assert main(six) == 0
    record = json.loads((out / "ablations.json").read_text())
    assert set(record["tables"]) == {"2d", "6"} and len(record["runs"]) == 4
    # provenance: the first table keeps the command that made it; the top level is the last invocation's
    assert record["tables"]["2d"]["command"] == "python -m minimaskrcnn " + " ".join(first)
    assert record["tables"]["6"]["command"] == record["command"] == "python -m minimaskrcnn " + " ".join(six)
    assert record["tables"]["2d"]["data"] == str(smoke_data) and record["tables"]["6"]["data"] == str(smoke_poses)
    assert all(k in record["tables"]["2d"] for k in ("commit", "finished", "elapsed_s"))
    md = (out / "ablations.md").read_text()
    assert f"Made by `python -m minimaskrcnn {' '.join(first)}`" in md and " ".join(six) in md
    # table 6: keypoint AP (and box AP) for both variants, whose configs differ in roi_op alone
    table = record["tables"]["6"]
    assert table["metrics"] == ["keypoints", "bbox"] and [v["name"] for v in table["variants"]] == ["RoIPool",
                                                                                                     "RoIAlign"]
    runs = [record["runs"][v["runs"][0]] for v in table["variants"]]
    for run, v in zip(runs, table["variants"]):
        assert run["keypoints"]["AP"] is not None and run["keypoints"]["APs"] is None      # OKS AP has no APs
        assert v["ours"]["keypoints"]["AP"]["mean"] == run["keypoints"]["AP"] and run["data"] == str(smoke_poses)
    pool, align = (r["config"] for r in runs)
    assert {k for k in pool if pool[k] != align[k]} == {"roi_op"} and pool["roi_op"] == "pool"
    assert pool["num_keypoints"] == 17 and pool["max_iters"] == 2 and pool["min_size"] == 64
    assert table["variants"][1]["paper"]["keypoints"]["AP"] == 64.2
    assert "keypoint AP / AP50 / AP75, ours" in md and "RoIAlign − RoIPool" in md
    assert (out / "ablation_6.png").stat().st_size and (out / "ablation_2d.png").stat().st_size
    examples = json.loads((out / "examples.json").read_text())
    kp_example = examples[runs[1]["run_id"]][0]
    assert "keypoints" in kp_example and "masks" not in kp_example
    assert "masks" in examples[record["tables"]["2d"]["variants"][0]["runs"][0]][0]
    # a file written before tables kept their provenance: its tables take its top-level command, not the new one
    record["command"] = "python -m minimaskrcnn ablate --table 2d (earlier)"
    for key in ("command", "commit", "finished", "elapsed_s", "data"):
        del record["tables"]["2d"][key]
    (out / "ablations.json").write_text(json.dumps(record))
    assert main(six) == 0                                  # all runs done: nothing trains
    again = json.loads((out / "ablations.json").read_text())
    assert again["tables"]["2d"]["command"] == "python -m minimaskrcnn ablate --table 2d (earlier)"
    assert again["command"] == again["tables"]["6"]["command"]


def test_ablate_table6_refuses_data_without_keypoints_and_estimates(smoke_data, smoke_poses, tmp_path, capsys):
    assert main(["ablate", "--table", "6", "--data", str(smoke_data), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "list no 'keypoints' names" in err and "table 6" in err
    assert main(["ablate", "--table", "6", "--data", str(smoke_poses), "--image-size", "64", "--iters", "2",
                 "--seeds", "1", "--estimate", "--out", str(tmp_path)]) == 0
    estimate = json.loads((tmp_path / "estimate_6.json").read_text())
    assert [r["label"] for r in estimate["runs"]] == ["6: RoIPool", "6: RoIAlign"]
    assert all(r["projected_s"] > 0 for r in estimate["runs"]) and not (tmp_path / "estimate.json").exists()


def test_coco_person_keypoints_files_are_read_and_fingerprinted(smoke_poses, tmp_path):
    """COCO's own keypoint set names its files person_keypoints_<split>.json (no instances_<split>.json)."""
    import shutil

    root = tmp_path / "coco_kp"
    shutil.copytree(smoke_poses, root)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").rename(root / "annotations" /
                                                                   f"person_keypoints_{split}.json")
    d = ab.table_data(root, "poses", ["6"])
    assert d.fingerprint == ab.data_fingerprint(smoke_poses) and len(d.keypoints[0]) == 17


def test_workers_end_when_the_ablate_process_is_killed(tmp_path):
    # A parent ended alone (kill, SIGTERM from a scheduler) must not leave its workers training: each worker
    # watches its parent (engine.ablate._exit_with_parent). The parent here is killed with SIGKILL, which no
    # handler of its own could catch.
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from minimaskrcnn.engine import ablate\n"
        "if __name__ == '__main__':\n"
        "    pool = ablate.worker_pool(1)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(ab.__file__).parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker = int(parent.stdout.readline())
        os.kill(worker, 0)                                  # the worker is alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its parent by 15 s")
    finally:
        parent.kill()
