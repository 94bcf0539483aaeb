"""The keypoint task from the command line: the keypoint demo end to end on a tiny pose set, evaluate with
OKS, predict drawing skeletons, and one-line errors for a keypoint config on data without keypoints."""
import json

import numpy as np
import pytest

from minimaskrcnn.cli import main

from minimaskrcnn.engine.run import UserError, run_config


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("kpdemo")
    args = ["demo", "--task", "keypoints", "--data", str(root / "poses"), "--out", str(root / "run"), "--iters", "2",
            "--num-train", "4", "--num-val", "2", "--procs", "1"]     # one process (auto: 2 through mpiexec)
    assert main(args) == 0
    return root


def test_keypoint_demo_runs_end_to_end_and_writes_keypoint_metrics_and_skeletons(demo, capsys):
    metrics = json.loads((demo / "run" / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm", "keypoints"} and "APm" in metrics["keypoints"]
    assert (demo / "run" / "keypoints.png").stat().st_size > 0
    assert (demo / "run" / "keypoints_results.json").exists()


def test_evaluate_and_predict_with_the_keypoint_checkpoint(demo, tmp_path, capsys):
    ckpt = str(demo / "run" / "last.npz")
    assert main(["evaluate", "--data", str(demo / "poses"), "--checkpoint", ckpt, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "keypoints_results.json").exists()
    image = str(demo / "poses" / "val" / "000000.png")
    assert main(["predict", "--checkpoint", ckpt, image, "--out", str(tmp_path / "pred"),
                 "--score-threshold", "0"]) == 0
    assert (tmp_path / "pred" / "000000_pred.png").exists()
    # sigmas of the wrong length: a one-line error
    capsys.readouterr()
    assert main(["evaluate", "--data", str(demo / "poses"), "--checkpoint", ckpt, "--out", str(tmp_path),
                 "--kp-sigmas", "0.1,0.2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "need 17 positive numbers" in err


def test_keypoint_config_needs_data_with_keypoints():
    config = run_config(["__background__", "person"], "tiny_keypoints",
                        keypoints=(("a", "b"), ((1, 2),)))
    assert config.num_keypoints == 2 and config.keypoint_names == ("a", "b") and config.keypoint_skeleton == ((1, 2),)
    with pytest.raises(UserError, match="no 'keypoints' names"):
        run_config(["__background__", "circle"], "tiny_keypoints", keypoints=((), ()))
    assert not run_config(["__background__", "circle"], "tiny", keypoints=((), ())).keypoint_on


def test_draw_skeletons_styles_visible_and_occluded_differently(tmp_path):
    from minimaskrcnn.data.keypoints import COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON
    from minimaskrcnn.data.poses_draw import draw_poses_image
    from minimaskrcnn.viz.detections import draw_instances
    from minimaskrcnn.viz.keypoints import draw_skeletons
    image, _, kps = draw_poses_image(np.random.default_rng([0, 0, 0]))   # this image has occluded keypoints
    assert (kps[..., 2] == 1).any()
    fig = draw_instances(image)
    draw_skeletons(fig.axes[0], kps, COCO_PERSON_SKELETON, COCO_PERSON_KEYPOINTS)
    lines = fig.axes[0].lines
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    hollow = [ln for ln in lines if ln.get_marker() == "o" and ln.get_markerfacecolor() == "none"]
    assert dashed and hollow and len(hollow) == int((kps[..., 2] == 1).sum())
    fig.savefig(tmp_path / "s.png")
