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
