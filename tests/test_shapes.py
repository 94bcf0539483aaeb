"""The synthetic shapes set: determinism, masks = visible pixels, valid COCO files, atomic generation."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from minimaskrcnn.data.shapes import (
    CATEGORIES,
    MIN_VISIBLE_PIXELS,
    draw_shapes_image,
    ensure_shapes_dataset,
    is_complete_shapes_dataset,
    make_shapes_dataset,
    place_shapes,
    shape_area,
    shape_mask,
    visible_masks,
)

SMALL = dict(num_train=6, num_val=3, image_size=64, object_size=(8, 30), progress=False)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "set", **SMALL)


def test_same_seed_same_image_other_seed_other_image():
    a = draw_shapes_image(np.random.default_rng(7))
    b = draw_shapes_image(np.random.default_rng(7))
    c = draw_shapes_image(np.random.default_rng(8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_data_set_is_a_function_of_its_parameters(tmp_path, shapes_root):
    again = make_shapes_dataset(tmp_path / "again", **SMALL)
    bigger = make_shapes_dataset(tmp_path / "bigger", **{**SMALL, "num_train": 8})
    ref = json.loads((shapes_root / "annotations" / "instances_train.json").read_text())
    assert json.loads((again / "annotations" / "instances_train.json").read_text()) == ref
    # A bigger set starts with the smaller one: images are seeded by (seed, split, index).
    big = json.loads((bigger / "annotations" / "instances_train.json").read_text())
    assert big["images"][:6] == ref["images"]
    assert big["annotations"][: len(ref["annotations"])] == ref["annotations"]
    from PIL import Image
    for name in ("000000.png", "000005.png"):
        pixels = [np.asarray(Image.open(root / "train" / name)) for root in (shapes_root, again, bigger)]
        np.testing.assert_array_equal(pixels[0], pixels[1])
        np.testing.assert_array_equal(pixels[0], pixels[2])
    other_seed = make_shapes_dataset(tmp_path / "seed1", **{**SMALL, "seed": 1})
    assert json.loads((other_seed / "annotations" / "instances_train.json").read_text()) != ref


def test_shape_mask_areas_match_the_continuous_shapes():
    # Big shapes in the middle of a big image: pixel counts approach the exact areas (edge error ~ perimeter).
    for name in ("circle", "rectangle", "triangle"):
        mask = shape_mask(name, 100.3, 99.6, 120, 0.4, 0.7, 200)
        assert abs(mask.sum() - shape_area(name, 120, 0.7)) < 0.02 * shape_area(name, 120, 0.7), name


def test_rotation_turns_a_rectangle_but_not_a_circle():
    r0 = shape_mask("rectangle", 32, 32, 40, 0.0, 0.5, 64)
    r90 = shape_mask("rectangle", 32, 32, 40, np.pi / 2, 0.5, 64)
    np.testing.assert_array_equal(r0, r90.T)             # a quarter turn about the centre swaps the axes
    assert r0.any(axis=0).sum() == 40 and r0.any(axis=1).sum() == 20
    np.testing.assert_array_equal(shape_mask("circle", 32, 32, 40, 0.0, 1, 64),
                                  shape_mask("circle", 32, 32, 40, 1.0, 1, 64))


def test_later_objects_occlude_earlier_ones():
    first = shape_mask("rectangle", 30, 30, 30, 0.0, 1.0, 64)
    second = shape_mask("circle", 40, 40, 24, 0.0, 1.0, 64)
    assert (first & second).any()
    masks = visible_masks(np.stack([first, second]))
    np.testing.assert_array_equal(masks[1], second)
    np.testing.assert_array_equal(masks[0], first & ~second)


def test_placement_keeps_every_object_visible_enough():
    for seed in range(40):
        shapes, labels = place_shapes(np.random.default_rng(seed), 64, 6, (8, 40), min_visible=0.5)
        visible = visible_masks(shapes).sum(axis=(1, 2))
        full = shapes.sum(axis=(1, 2))
        assert np.all(visible >= np.maximum(MIN_VISIBLE_PIXELS, 0.5 * full)), (seed, visible, full)
        assert set(labels.tolist()) <= {c["id"] for c in CATEGORIES}


def test_masks_are_exactly_the_painted_pixels():
    # Without noise every visible pixel of object g has g's colour, and no other pixel has it.
    for seed in range(20):
        image, masks, labels = draw_shapes_image(np.random.default_rng(seed), 64, 4, (8, 30), noise=(0, 0))
        assert masks.sum(axis=0).max() <= 1                   # disjoint
        for mask in masks:
            colours = np.unique(image[mask], axis=0)
            assert len(colours) == 1
            assert not np.all(image[~mask] == colours[0], axis=-1).any()


def test_annotations_are_valid_coco_and_match_the_masks(shapes_root):
    from PIL import Image
    coco = COCO(str(shapes_root / "annotations" / "instances_val.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "rectangle", "triangle"]
    assert len(coco.getImgIds()) == 3
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        assert np.asarray(Image.open(shapes_root / "val" / info["file_name"])).shape == (64, 64, 3)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            # bbox = the mask's pixel extent, area = its pixel count
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == mask.sum() >= MIN_VISIBLE_PIXELS
            assert ann["iscrowd"] == 0
            assert mask_util.decode(ann["segmentation"]).shape == (64, 64)


def test_ensure_reuses_a_complete_set_and_never_leaves_a_partial_one(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    ensure_shapes_dataset(root, **SMALL)
    assert is_complete_shapes_dataset(root, **{k: v for k, v in SMALL.items() if k != "progress"})
    stamp = (root / "shapes.json").stat().st_mtime_ns
    ensure_shapes_dataset(root, **SMALL)                       # reused, not regenerated
    assert (root / "shapes.json").stat().st_mtime_ns == stamp

    # Other parameters: regenerated and swapped in.
    ensure_shapes_dataset(root, **{**SMALL, "num_val": 2})
    assert len(list((root / "val").glob("*.png"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]

    # An interrupted generation leaves only the hidden .partial folder, never a set that looks complete.
    import minimaskrcnn.data.shapes as shapes_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(shapes_module, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        make_shapes_dataset(tmp_path / "broken", **SMALL)
    assert not (tmp_path / "broken").exists()
    assert (tmp_path / ".broken.partial").exists()
    monkeypatch.undo()
    make_shapes_dataset(tmp_path / "broken", **SMALL)         # the leftover is cleared
    assert not (tmp_path / ".broken.partial").exists()


def test_ensure_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a generated shapes data set"):
        ensure_shapes_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_regenerating_deletes_only_what_the_generator_wrote(tmp_path):
    root = tmp_path / "shapes"
    ensure_shapes_dataset(root, **SMALL)
    manifest = json.loads((root / "shapes.json").read_text())["files"]
    assert set(manifest) == {f"train/{i:06d}.png" for i in range(6)} | {f"val/{i:06d}.png" for i in range(3)} | {
        "annotations/instances_train.json", "annotations/instances_val.json"}
    # What a user puts there: notes, an extra image, an edited generated image no longer in the new set.
    (root / "notes.txt").write_text("keep me")
    (root / "val" / "mine.png").write_bytes(b"my image")
    (root / "val" / "000002.png").write_bytes(b"edited")
    ensure_shapes_dataset(root, **{**SMALL, "num_val": 2})
    assert (root / "notes.txt").read_text() == "keep me"
    assert (root / "val" / "mine.png").read_bytes() == b"my image"
    assert (root / "val" / "000002.png").read_bytes() == b"edited"
    assert is_complete_shapes_dataset(root, **{**{k: v for k, v in SMALL.items() if k != "progress"}, "num_val": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]

    # A file of the user's where the new set needs one: nothing is touched, and the error names it.
    (root / "val" / "000002.png").write_bytes(b"edited")
    with pytest.raises(FileExistsError, match=r"000002\.png was not written by the generator"):
        ensure_shapes_dataset(root, **{**SMALL, "num_val": 3})
    assert (root / "val" / "000002.png").read_bytes() == b"edited"
    assert (root / "notes.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_an_interrupted_swap_is_finished_by_the_next_run(tmp_path, monkeypatch):
    import minimaskrcnn.data.shapes as shapes_module

    root = tmp_path / "shapes"
    ensure_shapes_dataset(root, **SMALL)
    (root / "notes.txt").write_text("keep me")
    real_replace = shapes_module.os.replace
    moved = []

    def crash_midway(src, dst):
        moved.append(dst)
        if len(moved) == 6:      # the old files gone, two new ones moved in (after 2 renames of the new set, 1 marker)
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(shapes_module.os, "replace", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_dataset(root, **{**SMALL, "seed": 1})
    monkeypatch.undo()
    small = {k: v for k, v in SMALL.items() if k != "progress"}
    assert not is_complete_shapes_dataset(root, **{**small, "seed": 1})
    ensure_shapes_dataset(root, **{**SMALL, "seed": 1})
    assert is_complete_shapes_dataset(root, **{**small, "seed": 1})
    assert (root / "notes.txt").read_text() == "keep me"
    again = make_shapes_dataset(tmp_path / "again", **{**SMALL, "seed": 1})
    for rel in json.loads((again / "shapes.json").read_text())["files"]:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_the_generator_has_a_command(tmp_path, capsys):
    from minimaskrcnn.data.shapes import main

    out = tmp_path / "set"
    assert main(["--out", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "48", "--seed", "3"]) == 0
    assert "generating 2 train + 1 val images of 48 px, seed 3" in capsys.readouterr().out
    assert is_complete_shapes_dataset(out, num_train=2, num_val=1, image_size=48, seed=3)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    assert main(["--out", str(tmp_path / "foreign")]) == 1
    assert "not a generated shapes data set" in capsys.readouterr().err


def test_python_dash_m_runs_the_generator(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "minimaskrcnn.data.shapes", "--out", str(tmp_path / "s"),
                           "--num-train", "1", "--num-val", "1", "--image-size", "32"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s" / "shapes.json").is_file() and (tmp_path / "s" / "train" / "000000.png").is_file()


def test_ensure_says_what_it_does(tmp_path, capsys):
    root = tmp_path / "shapes"
    root.mkdir()                                        # an empty folder is filled
    ensure_shapes_dataset(root, **SMALL, report=print)
    assert "generating 6 train + 3 val images of 64 px, seed 0 into" in capsys.readouterr().out
    ensure_shapes_dataset(root, **SMALL, report=print)
    assert "reusing" in capsys.readouterr().out
    (root / "notes.txt").write_text("keep me")
    ensure_shapes_dataset(root, **{**SMALL, "seed": 2}, report=print)
    said = capsys.readouterr().out
    assert "other parameters; regenerating" in said and "kept 1 files" in said and "notes.txt" in said
