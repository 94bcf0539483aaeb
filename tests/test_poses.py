"""The synthetic pose set and keypoints in the COCO reader: determinism, COCO's format, visibility flags,
one-line errors for bad keypoint fields, and flips that swap left and right."""
import json

import numpy as np
import pytest

from minimaskrcnn.data.coco import CocoDataset, DatasetError
from minimaskrcnn.data.keypoints import (COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS, COCO_PERSON_SKELETON,
                                         flip_indices, keypoint_sigmas)
from minimaskrcnn.data.poses import ensure_poses_dataset, main, make_poses_dataset
from minimaskrcnn.data.poses_draw import draw_poses_image
from minimaskrcnn.data.transforms import hflip

SMALL = dict(num_train=5, num_val=2, image_size=96, person_size=(35, 80), progress=False)


@pytest.fixture(scope="module")
def poses_root(tmp_path_factory):
    return make_poses_dataset(tmp_path_factory.mktemp("poses") / "set", **SMALL)


def test_same_seed_same_image_and_a_small_set_begins_a_bigger_one(tmp_path, poses_root):
    a, b = draw_poses_image(np.random.default_rng(3)), draw_poses_image(np.random.default_rng(3))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    bigger = make_poses_dataset(tmp_path / "big", **{**SMALL, "num_train": 6})
    small = json.loads((poses_root / "annotations" / "instances_train.json").read_text())
    big = json.loads((bigger / "annotations" / "instances_train.json").read_text())
    assert big["annotations"][: len(small["annotations"])] == small["annotations"]


def test_annotations_are_coco_keypoints(poses_root):
    coco = json.loads((poses_root / "annotations" / "instances_val.json").read_text())
    (cat,) = coco["categories"]
    assert cat["name"] == "person" and tuple(cat["keypoints"]) == COCO_PERSON_KEYPOINTS
    assert [tuple(p) for p in cat["skeleton"]] == list(COCO_PERSON_SKELETON)
    for ann in coco["annotations"]:
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        assert set(kp[:, 2]) <= {0, 1, 2}
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert np.all(kp[kp[:, 2] == 0, :2] == 0)                      # unlabelled: written as 0, 0, 0
        assert (kp[:, 2] == 2).sum() >= 6


def test_visible_keypoints_lie_on_the_persons_visible_pixels_and_occluded_ones_do_not():
    seen = {1: 0, 2: 0}
    for i in range(12):
        image, masks, kps = draw_poses_image(np.random.default_rng([0, 0, i]))
        for mask, kp in zip(masks, kps, strict=True):
            for x, y, v in kp:
                if v > 0:
                    assert 0 <= x < 128 and 0 <= y < 128
                    assert bool(mask[int(y), int(x)]) == (v == 2)
                    seen[int(v)] += 1
    assert seen[1] > 0 and seen[2] > 50                                # occlusions do happen


def test_reader_loads_keypoints(poses_root):
    ds = CocoDataset(poses_root, "train")
    assert ds.keypoint_names == COCO_PERSON_KEYPOINTS and ds.num_keypoints == 17
    _, t = ds[0]
    assert t["keypoints"].shape == (len(t["boxes"]), 17, 3) and t["keypoints"].dtype == np.float32
    raw = [a for a in ds.coco.dataset["annotations"] if a["image_id"] == ds.image_ids[0]]
    np.testing.assert_allclose(t["keypoints"].reshape(len(raw), -1), [a["keypoints"] for a in raw], atol=1e-4)


def _broken(tmp_path, poses_root, change):
    root = tmp_path / "broken"
    (root / "annotations").mkdir(parents=True)
    (root / "val").symlink_to(poses_root / "val")
    coco = json.loads((poses_root / "annotations" / "instances_val.json").read_text())
    change(coco)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError) as e:
        CocoDataset(root, "val")
    msg = str(e.value)
    assert "\n" not in msg and "instances_val.json" in msg
    return msg


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["annotations"][1].update(keypoints=c["annotations"][1]["keypoints"][:-3]), "annotations[1]"),
    (lambda c: c["annotations"][0]["keypoints"].__setitem__(2, 3), "v must be 0"),
    (lambda c: c["annotations"][0]["keypoints"].__setitem__(slice(0, 3), [500.0, 4.0, 2]), "outside the 96x96"),
    (lambda c: c["categories"][0].pop("keypoints"), "has no 'keypoints' names"),
    (lambda c: c["annotations"][0].update(num_keypoints=99), "'num_keypoints' is 99"),
])
def test_bad_keypoint_fields_give_one_line_errors(tmp_path, poses_root, change, expected):
    msg = _broken(tmp_path, poses_root, change)
    assert expected in msg and "annotations[" in msg


def test_hflip_swaps_left_and_right(poses_root):
    ds = CocoDataset(poses_root, "train")
    image, t = ds[0]
    _, f = hflip(image, t, ds.keypoint_flip_indices)
    k, fk = t["keypoints"], f["keypoints"]
    li, ri = COCO_PERSON_KEYPOINTS.index("left_wrist"), COCO_PERSON_KEYPOINTS.index("right_wrist")
    lab = k[:, li, 2] > 0
    np.testing.assert_allclose(fk[lab, ri, 0], 96 - k[lab, li, 0])
    np.testing.assert_array_equal(fk[:, ri, 2], k[:, li, 2])
    np.testing.assert_array_equal(fk[:, 0, 1], k[:, 0, 1])             # the nose stays the nose
    with pytest.raises(ValueError, match="keypoint_flip"):
        hflip(image, t)
    assert list(flip_indices(COCO_PERSON_KEYPOINTS)) == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def test_sigmas_coco_default_user_supplied_or_a_clear_error():
    np.testing.assert_allclose(keypoint_sigmas(COCO_PERSON_KEYPOINTS), COCO_PERSON_SIGMAS)
    assert keypoint_sigmas(("a", "b"), [0.1, 0.2]).tolist() == [0.1, 0.2]
    with pytest.raises(ValueError, match="give one sigma per keypoint"):
        keypoint_sigmas(("a", "b"))


def test_command_line_reuses_and_refuses(tmp_path, capsys):
    out = tmp_path / "p"
    args = ["--out", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "96"]
    assert main(args) == 0 and (out / "poses.json").exists()
    assert main(args) == 0 and "reusing" in capsys.readouterr().out
    assert main([*args[:-2], "--image-size", "112"]) == 1
    assert "not a pose set with these parameters" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        ensure_poses_dataset(tmp_path / "p", num_train=3, progress=False)
