"""The model's input transform vs torchvision's GeneralizedRCNNTransform (committed fixtures), padding,
batching; the loader's flips and batches."""
from pathlib import Path

import numpy as np
import pytest

from minimaskrcnn.data.transforms import BatchSampler, DataLoader, hflip, random_hflip
from minimaskrcnn.model.transform import postprocess_boxes, preprocess_batch, resize_target, resized_size

FIXTURES = Path(__file__).parent / "fixtures" / "transforms.npz"


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURES, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _cases(fx):
    return sorted({int(k.split("_")[0][1:]) for k in fx if k.startswith("c")})


@pytest.mark.torch_fixture
def test_resize_normalise_matches_torchvision_bit_for_bit(fx):
    for k in _cases(fx):
        image, min_size, max_size = fx[f"c{k}_image"], int(fx[f"c{k}_min_size"]), int(fx[f"c{k}_max_size"])
        batch, sizes, original = preprocess_batch([image], min_size, max_size)
        h, w = fx[f"c{k}_out_size"]
        assert tuple(sizes[0]) == (h, w) == resized_size(*image.shape[:2], min_size, max_size), k
        assert tuple(original[0]) == image.shape[:2]
        ours = batch[0, :, :h, :w]
        if f"c{k}_out_image" in fx:
            np.testing.assert_array_equal(ours, fx[f"c{k}_out_image"], err_msg=f"case {k}")
        else:
            np.testing.assert_array_equal(ours.reshape(-1)[fx[f"c{k}_sample_idx"]], fx[f"c{k}_sample_val"],
                                          err_msg=f"case {k}")


@pytest.mark.torch_fixture
def test_targets_and_postprocess_match_torchvision(fx):
    for k in _cases(fx):
        target = {"boxes": fx[f"c{k}_boxes"], "masks": fx[f"c{k}_masks"], "labels": np.arange(3)}
        original, new = fx[f"c{k}_image"].shape[:2], tuple(fx[f"c{k}_out_size"])
        resized = resize_target(target, original, new)
        np.testing.assert_array_equal(resized["boxes"], fx[f"c{k}_out_boxes"], err_msg=f"case {k}")
        np.testing.assert_array_equal(resized["masks"], fx[f"c{k}_out_masks"], err_msg=f"case {k}")
        np.testing.assert_array_equal(resized["labels"], np.arange(3))
        back = postprocess_boxes(resized["boxes"], new, original)
        np.testing.assert_array_equal(back, fx[f"c{k}_back_boxes"])


@pytest.mark.torch_fixture
def test_batch_is_padded_like_torchvision(fx):
    images = [fx[f"c{k}_image"] for k in fx["batch_cases"]]
    batch, sizes, _ = preprocess_batch(images, 128, 1333)
    assert batch.shape == tuple(fx["batch_shape"]) and batch.dtype == np.float32
    np.testing.assert_array_equal(np.array(sizes), fx["batch_image_sizes"])
    np.testing.assert_allclose(batch.astype(np.float64).sum(), fx["batch_sum"], rtol=1e-9)  # summation order


def test_padding_is_zero_and_a_multiple_of_the_stride():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 70), (65, 33)]]
    batch, sizes, _ = preprocess_batch(images, 64, 1000, size_divisible=32)
    assert batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
    assert batch.shape[2:] == (128, 128)                # 64 x 112 and 126 x 64, rounded up
    for i, (h, w) in enumerate(sizes):
        assert not batch[i, :, h:].any() and not batch[i, :, :, w:].any()
        assert batch[i, :, :h, :w].std() > 0.5


def test_resized_size_rule():
    assert resized_size(128, 128, 128, 1333) == (128, 128)
    assert resized_size(100, 200, 800, 1333) == (666, 1333)     # longer side capped: scale 1333 / 200
    assert resized_size(480, 640, 800, 1333) == (800, 1066)     # floor(640 * 5 / 3)


def test_hflip_moves_boxes_with_the_masks():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 3:9, 2:11] = 1
    masks[1, 10:18, 21:30] = 1
    boxes = np.array([[2, 3, 11, 9], [21, 10, 30, 18]], np.float32)   # the masks' pixel extents
    flipped, target = hflip(image, {"boxes": boxes, "masks": masks, "labels": np.array([1, 2])})
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    for box, mask in zip(target["boxes"], target["masks"], strict=True):
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_array_equal(target["labels"], [1, 2])
    again, back = hflip(flipped, target)
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(back["boxes"], boxes)
    np.testing.assert_array_equal(boxes[0], [2, 3, 11, 9])            # the input is not modified


def test_random_hflip_uses_one_draw():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    flips = [random_hflip(image, None, a)[0][0, 0, 0] != image[0, 0, 0] for _ in range(200)]
    assert np.array_equal(flips, b.random(200) < 0.5)
    assert np.array_equal(random_hflip(image, None, a, p=0.0)[0], image)
    assert np.array_equal(random_hflip(image, None, a, p=1.0)[0], image[:, ::-1])


def test_batch_sampler_covers_every_image_each_epoch():
    sampler = BatchSampler(10, 4, seed=3)
    assert sampler.batches_per_epoch() == 3
    epochs = [np.concatenate([next(sampler)[0] for _ in range(3)]) for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert not np.array_equal(epochs[0], epochs[1])
    dropping = BatchSampler(10, 4, seed=3, drop_last=True)
    assert [len(next(dropping)[0]) for _ in range(4)] == [4, 4, 4, 4]
    assert not np.array_equal(BatchSampler(10, 4, seed=4).epoch_order(0), sampler.epoch_order(0))


def test_batch_sampler_resumes_exactly():
    straight = BatchSampler(7, 3, seed=11)
    reference = [(idx, [g.random() for g in rngs]) for idx, rngs in (next(straight) for _ in range(8))]
    first = BatchSampler(7, 3, seed=11)
    for _ in range(4):
        next(first)
    state = first.state_dict()                                # mid-way through epoch 1
    resumed = BatchSampler(7, 3, seed=11)
    resumed.load_state_dict(state)
    for (idx, draws), (idx2, rngs2) in zip(reference[4:], (next(resumed) for _ in range(4)), strict=True):
        np.testing.assert_array_equal(idx, idx2)
        assert draws == [g.random() for g in rngs2]
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(7, 3, seed=12).load_state_dict(state)


def test_data_loader_resumes_with_the_same_flips():
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8),
             {"boxes": np.array([[0, 0, 2, 3]], np.float32), "masks": np.zeros((1, 4, 6), np.uint8)})
            for _ in range(5)]
    loader = DataLoader(data, batch_size=2, seed=1)
    batches = [next(loader) for _ in range(6)]
    resumed = DataLoader(data, batch_size=2, seed=1)
    warm = DataLoader(data, batch_size=2, seed=1)
    for _ in range(2):
        next(warm)
    resumed.load_state_dict(warm.state_dict())
    flipped = 0
    for images, targets in batches[2:]:
        images2, targets2 = next(resumed)
        for a, b, ta, tb in zip(images, images2, targets, targets2, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
            flipped += ta["boxes"][0, 0] != 0
    assert 0 < flipped < 8                                    # some flipped, some not


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="image must be"):
        preprocess_batch([np.zeros((4, 4), np.uint8)], 8, 16)
    with pytest.raises(ValueError, match="non-empty"):
        preprocess_batch([], 8, 16)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(5, 0)
