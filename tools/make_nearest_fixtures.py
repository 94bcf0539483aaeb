"""Write tests/fixtures/nearest.npz: which input row PyTorch's ``F.interpolate(mode="nearest")`` copies into
each output row, for many (input size, output size) pairs.

Run with a Python that has torch (never needed by the tests themselves):

    /work/torchvenv/bin/python tools/make_nearest_fixtures.py

ATen computes the source index in float32, ``min(floor(float32(dst) * float32(in / out)), in - 1)``, with
two exceptions (``out == in``: copy; ``out == 2 * in``: ``dst >> 1``); a float64 ``floor(dst * in / out)``
differs for 92 of the 6,164 size pairs below (1.5%; ~3% of the pairs up to 200 x 400). The rows are read
off torch's own output: the input holds its row number, so each output row says where it came from.

Stored (sizes int64, source rows uint16 to keep the file small):
- ``size_pairs`` (P, 2): ``(in, out)`` for ``F.interpolate(size=...)``: every pair with 1 <= in <= 48 and
  1 <= out <= 128, plus pairs of the sizes the FPN and the input transform meet (odd maps, 2x, images
  resized to 800 or 1333);
- ``size_src``: their source rows, concatenated (pair p's ``out`` rows after those of pairs < p);
- ``scale_cases`` (S, 3): ``(in, out, k)`` for ``F.interpolate(scale_factor=scales[k])``
  (``recompute_scale_factor`` unset, so ATen uses ``1 / scale``), and ``scale_src`` likewise.
Inputs are float32 (N, C, H, W) with C = 2, the layout of the FPN's maps and of the transform's masks.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCALES = [0.3, 0.5, 0.7, 0.999, 1.001, 1.1, 1.3, 1.5, 1.7, 2.0, 2.2, 2.5, 3.0, 1 / 3]
# sizes seen in practice: FPN maps of odd-sized inputs (13 -> 25, 25 -> 50), images resized to 800 / 1333
EXTRA_PAIRS = [(13, 25), (25, 50), (19, 38), (38, 75), (75, 150), (100, 199), (480, 800), (375, 800),
               (427, 800), (640, 1067), (500, 1333), (333, 800), (800, 480), (1333, 750), (97, 128),
               (131, 200), (300, 1333), (23, 64), (61, 100), (45, 74)]


def source_rows(in_size: int, out_size: int | None, scale: float | None = None) -> np.ndarray:
    """The input row torch copies into each output row (rows numbered through the values)."""
    x = torch.arange(in_size, dtype=torch.float32)[None, None, :, None].expand(1, 2, in_size, 3).contiguous()
    if scale is None:
        y = F.interpolate(x, size=(out_size, 3), mode="nearest")
    else:
        y = F.interpolate(x, scale_factor=(scale, 1.0), mode="nearest")
    assert torch.equal(y[:, :, :, :1].expand_as(y), y) and torch.equal(y[:, :1].expand_as(y), y)
    return y[0, 0, :, 0].to(torch.int64).numpy()


def main():
    torch.set_num_threads(1)
    pairs = [(i, o) for i in range(1, 49) for o in range(1, 129)] + EXTRA_PAIRS
    size_src = np.concatenate([source_rows(i, o) for i, o in pairs])
    cases, scale_src = [], []
    for i in range(1, 100):
        for k, s in enumerate(SCALES):
            o = int(np.floor(i * s))   # what F.interpolate (and ATen) make of it
            if o < 1:
                continue
            src = source_rows(i, None, s)
            assert len(src) == o, (i, s, len(src), o)
            cases.append((i, o, k))
            scale_src.append(src)
    out = {"torch_version": np.array(torch.__version__),
           "size_pairs": np.array(pairs, np.int64), "size_src": size_src.astype(np.uint16),
           "scales": np.array(SCALES, np.float64),
           "scale_cases": np.array(cases, np.int64), "scale_src": np.concatenate(scale_src).astype(np.uint16)}
    path = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nearest.npz"
    np.savez_compressed(path, **out)
    float64_rule = np.concatenate([np.minimum(np.floor(np.arange(o) * (i / o)).astype(np.int64), i - 1)
                                   for i, o in pairs])
    bounds = np.cumsum([o for _, o in pairs])[:-1]
    differ = sum(not np.array_equal(a, b) for a, b in zip(np.split(size_src, bounds),
                                                            np.split(float64_rule, bounds), strict=True))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB); {differ} of {len(pairs)} size pairs differ "
          f"from the float64 rule")


if __name__ == "__main__":
    main()
