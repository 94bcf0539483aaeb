"""The COCO-format reader: every segmentation encoding, crowds, empty images, label mapping, user errors."""
import copy
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from minimaskrcnn.data.coco import CocoDataset, DatasetError, _compressed_rle_runs, read_rgb_image

H, W = 24, 32


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths down the columns, starting with a run of 0s."""
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [H, W], "counts": counts}


def _box_mask(x1, y1, x2, y2):
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    return mask


RLE_MASK = _box_mask(3, 4, 9, 12) | _box_mask(20, 2, 25, 6)          # two parts, one instance
UNCOMPRESSED_MASK = _box_mask(0, 10, 7, 24)                           # starts in the first column
CROWD_MASK = _box_mask(15, 12, 30, 22)


def _base():
    """Three images (RGB, grey, RGBA), categories with non-contiguous ids, all segmentation kinds."""
    return {
        "images": [{"id": 10, "file_name": "a.png", "height": H, "width": W},
                   {"id": 11, "file_name": "b.png", "height": H, "width": W},
                   {"id": 12, "file_name": "c.png", "height": H, "width": W}],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}, {"id": 5, "name": "five"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 10, 10, 8], "iscrowd": 0,
             "segmentation": [[10, 10, 20, 10, 20, 18, 10, 18]]},
            {"id": 2, "image_id": 10, "category_id": 9, "bbox": [3, 2, 22, 10], "iscrowd": 0,
             "segmentation": _rle(RLE_MASK)},
            {"id": 3, "image_id": 11, "category_id": 2, "bbox": [0, 10, 7, 14],
             "segmentation": _uncompressed_rle(UNCOMPRESSED_MASK)},                  # iscrowd omitted: 0
            {"id": 4, "image_id": 11, "category_id": 2, "bbox": [15, 12, 15, 10], "iscrowd": 1,
             "segmentation": _uncompressed_rle(CROWD_MASK)},
            {"id": 5, "image_id": 10, "category_id": 2, "bbox": [5, 5, 0, 4], "iscrowd": 0,  # zero width
             "segmentation": [[5, 5, 6, 5, 6, 9]]},
            {"id": 6, "image_id": 11, "category_id": 9, "bbox": [1, 1, 3, 3], "iscrowd": 0,  # empty mask
             "segmentation": _rle(np.zeros((H, W), bool))},
            {"id": 7, "image_id": 11, "category_id": 5, "bbox": [28, 20, 10, 10], "iscrowd": 0,  # clipped
             "segmentation": _rle(_box_mask(28, 20, 32, 24))},
        ],
    }


def _write(root, data, split="train"):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / split / "a.png")
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8), mode="L").save(root / split / "b.png")
    Image.fromarray(rng.integers(0, 256, (H, W, 4), dtype=np.uint8), mode="RGBA").save(root / split / "c.png")
    text = data if isinstance(data, str) else json.dumps(data)
    (root / "annotations" / f"instances_{split}.json").write_text(text)
    return root


@pytest.fixture
def dataset(tmp_path):
    _write(tmp_path, _base())
    with pytest.warns(UserWarning, match="1 empty mask, 1 zero-area box"):
        return CocoDataset(tmp_path, "train", include_crowd=True)


def test_category_ids_map_to_contiguous_labels_and_back(dataset):
    assert dataset.cat_id_to_label == {2: 1, 5: 2, 9: 3}
    assert dataset.class_names == ["__background__", "two", "five", "nine"]
    for cat_id, label in dataset.cat_id_to_label.items():
        assert dataset.label_to_cat_id[label] == cat_id


def test_polygon_compressed_and_uncompressed_rle_decode(dataset):
    image, target = dataset[0]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert target["image_id"] == 10
    np.testing.assert_array_equal(target["labels"], [2, 3])          # category 5 -> 2, 9 -> 3
    polygon, rle = target["masks"]
    assert target["masks"].dtype == np.uint8
    # The polygon's square [10, 20] x [10, 18] covers at least its interior pixels and nothing outside.
    assert polygon[11:17, 11:19].all() and not polygon[_box_mask(10, 10, 21, 19) == 0].any()
    np.testing.assert_array_equal(rle, RLE_MASK)
    np.testing.assert_array_equal(target["boxes"], [[10, 10, 20, 18], [3, 2, 25, 12]])
    assert target["boxes"].dtype == np.float32

    _, target = dataset[1]
    np.testing.assert_array_equal(target["masks"][0], UNCOMPRESSED_MASK)
    np.testing.assert_array_equal(target["labels"], [1, 2])
    np.testing.assert_array_equal(target["boxes"][1], [28, 20, 32, 24])  # clipped to the 32 x 24 image


def test_crowds_are_not_targets_but_can_be_returned(dataset, tmp_path):
    _, target = dataset[1]
    assert len(target["boxes"]) == 2                                  # instances 3 and 7; crowd 4 apart
    np.testing.assert_array_equal(target["crowd_boxes"], [[15, 12, 30, 22]])
    np.testing.assert_array_equal(target["crowd_masks"][0], CROWD_MASK)
    with pytest.warns(UserWarning):
        plain = CocoDataset(tmp_path, "train")
    assert "crowd_boxes" not in plain[1][1]
    assert plain.coco.anns[4]["iscrowd"] == 1                          # the evaluator still sees it


def test_degenerate_annotations_are_counted(dataset):
    assert dataset.skipped == {"zero-area box": 1, "empty mask": 1}
    assert "4 instances, 1 crowd regions" in dataset.summary()


def test_images_without_annotations_and_image_modes(dataset, tmp_path):
    image, target = dataset[2]                     # the RGBA image, no annotations
    assert image.shape == (H, W, 3)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W)
    grey, _ = dataset[1]
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    rgba = np.asarray(Image.open(tmp_path / "train" / "c.png"))
    np.testing.assert_array_equal(image, rgba[..., :3])               # alpha dropped
    with pytest.warns(UserWarning):
        assert len(CocoDataset(tmp_path, "train", skip_empty_images=True)) == 2
    with pytest.raises(IndexError):
        dataset[3]


def _mutate(path, value):
    """A copy of the base data with data[path[0]][path[1]]... = value (value None: delete the key)."""
    def apply(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return data
    return apply


BAD_FILES = [
    ("truncated", lambda d: json.dumps(d)[:-10], "not valid JSON"),
    ("top-level list", lambda d: [d], "top level must be a JSON object"),
    ("no images", _mutate(["images"], None), "missing top-level key 'images'"),
    ("images not a list", _mutate(["images"], {"id": 1}), "'images' must be a list"),
    ("no file_name", _mutate(["images", 0, "file_name"], None), "images[0] has no 'file_name'"),
    ("height text", _mutate(["images", 1, "height"], "24"), "images[1] 'height' must be a positive integer"),
    ("duplicate image", _mutate(["images", 1, "id"], 10), "duplicate id 10"),
    ("category name", _mutate(["categories", 0, "name"], 3), "categories[0] 'name' must be a string"),
    ("bbox of 3", _mutate(["annotations", 0, "bbox"], [1, 2, 3]), "'bbox' must be a list of 4 numbers"),
    ("bbox nan", _mutate(["annotations", 0, "bbox"], [1, 2, 3, float("nan")]), "'bbox' must be a list of 4"),
    ("unknown image", _mutate(["annotations", 1, "image_id"], 99), "image_id 99 is not in 'images'"),
    ("unknown category", _mutate(["annotations", 1, "category_id"], 7),
     "category_id 7 is not in 'categories'"),
    ("odd polygon", _mutate(["annotations", 0, "segmentation"], [[1, 2, 3, 4, 5, 6, 7]]),
     "flat list of x, y"),
    ("rle size", _mutate(["annotations", 1, "segmentation", "size"], [W, H]), "differs from the image's"),
    ("rle counts sum", _mutate(["annotations", 2, "segmentation", "counts"], [3, 4]), "summing to"),
    ("segmentation text", _mutate(["annotations", 2, "segmentation"], "x"), "'segmentation' must be"),
    # A compressed RLE whose runs cover another image's pixels (copied from a 24 x 40 mask): pycocotools
    # only fails when the mask is decoded, in the middle of training.
    ("compressed rle too long", _mutate(["annotations", 1, "segmentation", "counts"],
                                        mask_util.encode(np.asfortranarray(np.ones((H, W + 8), np.uint8)))[
                                            "counts"].decode("ascii")), "do not decode to runs covering"),
    ("compressed rle cut", _mutate(["annotations", 1, "segmentation", "counts"], _rle(RLE_MASK)["counts"][:3]),
     "do not decode to runs covering"),
    ("iscrowd 2", _mutate(["annotations", 0, "iscrowd"], 2), "'iscrowd' must be 0 or 1"),
]


@pytest.mark.parametrize("name,change,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_annotation_files_give_one_clear_line(tmp_path, name, change, message):
    _write(tmp_path, change(copy.deepcopy(_base())))
    with pytest.raises(DatasetError) as info:
        CocoDataset(tmp_path, "train")
    text = str(info.value)
    assert message in text
    assert str(tmp_path / "annotations" / "instances_train.json") in text
    assert "\n" not in text
    assert isinstance(info.value, ValueError)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DatasetError, match="annotation file not found"):
        CocoDataset(tmp_path, "val")
    _write(tmp_path, _base())
    (tmp_path / "train" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b\.png: image file not found"):
        CocoDataset(tmp_path, "train")
    with pytest.warns(UserWarning):
        lazy = CocoDataset(tmp_path, "train", check_files=False)
    with pytest.raises(DatasetError, match=r"b\.png: image file not found"):
        lazy[1]
    (tmp_path / "train" / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"b\.png: cannot read the image"):
        lazy[1]
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "train" / "b.png")
    with pytest.raises(DatasetError, match=r"image is 25x32 \(HxW\) but .* says 24x32"):
        lazy[1]


def test_compressed_rle_runs_are_pycocotools_runs():
    """Our reading of the compressed string (used to check it at load) gives pycocotools' own runs."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 60, size=2)
        mask = rng.random((h, w)) < rng.random()
        if rng.random() < 0.5:                       # long runs too (multi-char and negative differences)
            mask = np.zeros((h, w), bool)
            mask[rng.integers(0, h):, rng.integers(0, w):] = True
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = _compressed_rle_runs(rle["counts"])
        assert runs == _uncompressed_rle_of(mask)


def _uncompressed_rle_of(mask):
    flat = mask.astype(np.uint8).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0] + counts if flat[0] == 1 else counts


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_images_are_scaled_not_clipped(tmp_path, mode):
    """A 16-bit grey PNG (0..65535) reads as 0..255, as a viewer shows it, not as pure white."""
    ramp = np.linspace(0, 65535, H * W).reshape(H, W)
    path = tmp_path / ("x.png" if mode == "I;16" else "x.tiff")        # PIL writes 32-bit grey as TIFF only
    Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.int32)).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    image = read_rgb_image(path)
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    expected = np.rint(ramp.astype(np.uint16) / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(image[..., 0], expected)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert image.min() == 0 and image.max() == 255


def test_palette_grey_alpha_and_float_images(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        np.testing.assert_array_equal(read_rgb_image(tmp_path / "p.png"), np.asarray(im.convert("RGB")))
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(np.stack([grey, grey], -1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "la.png"), np.repeat(grey[..., None], 3, 2))
    unit = rng.random((H, W)).astype(np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "f.tiff")
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "f.tiff")[..., 1], np.rint(unit * 255.0))
