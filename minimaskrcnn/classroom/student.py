"""STUDENT.md: what a release asks of the student, where, how to test it and what "done" looks like."""
from __future__ import annotations

REWARD = {
    "A1": "Your im2col and col2im run every strided convolution of the ResNet, the max pool, and the mask head's "
          "2x2 transposed convolution (its backward pass); stride-1 convolutions take the library's row-shift "
          "path, which must give your numbers (tests/test_layers.py compares the two): "
          "`python -m minimaskrcnn demo --iters 300` trains the whole Mask R-CNN through your code.",
    "A2": "Your batch norm is the one every ResNet block of the detector uses (frozen BN in the backbone, "
          "trainable BN where a config asks for it): `python -m minimaskrcnn demo --iters 300` trains the whole "
          "Mask R-CNN through your code.",
    "A3": "Your FPN builds P2-P6 for the RPN and the RoI heads, and carries their gradients back into the "
          "ResNet: `python -m minimaskrcnn demo --iters 300` trains the whole detector on it.",
    "A4": "Your anchors and box coder are what the RPN classifies and regresses, and what turns the box head's "
          "deltas into boxes: `python -m minimaskrcnn demo --iters 300` trains and detects with them.",
    "A5": "Your loss is what the RPN learns from: its gradient reaches the RPN head, the FPN and the ResNet. "
          "`python -m minimaskrcnn demo --iters 300` trains the whole Mask R-CNN on it (loss_objectness and "
          "loss_rpn_box_reg in the printed losses are yours).",
    "A6": "Your RoIAlign can run the whole detector. The model uses the fast NumPy path by default "
          "(`roi_impl=\"numpy\"`); switch it to yours by setting `roi_impl: str = \"simple\"` in "
          "`minimaskrcnn/config.py` (or `configs.tiny(num_classes, roi_impl=\"simple\")` in Python), then "
          "`python -m minimaskrcnn demo --iters 300` trains Mask R-CNN with every RoI feature and every mask "
          "target read by your code. Your RoIPool runs it with `roi_op: str = \"pool\"`: Table 2c's comparison, "
          "on your own operators.",
    "A7": "Your kernel is the one CuPy runs on a GPU for RoIAlign's backward pass (`--device cuda`), and on a "
          "CPU the emulator runs the very same file: notebook 04 and `pytest tests/test_roi_ops.py` exercise it.",
    "A8": "Your targets and loss train the mask head: `python -m minimaskrcnn demo --iters 300` trains the whole "
          "Mask R-CNN with them (loss_mask in the printed losses is yours) and draws the masks it learnt "
          "(runs/demo).",
    "A9": "Your optimiser and schedule drive every training run: `python -m minimaskrcnn demo --iters 300` "
          "trains the whole Mask R-CNN with them (watch the warm-up in the loss curve, runs/demo/losses.png).",
    "A10": "Your AP is the number the paper's tables report: run it on the demo's results "
           "(runs/demo/*.json) and compare it with pycocotools' printout.",
}


def test_command(a) -> str:
    files = " ".join(a.tests)
    return f".venv/bin/python -m pytest -m \"assignment(id='{a.id}')\" {files}"


def student_md(a) -> str:
    parts = "\n".join(f"- `{p.split('::')[1]}` in `{p.split('::')[0]}`" for p in a.parts)
    goals = "\n".join(f"- {g}" for g in a.goals)
    prereq = "\n".join(f"- {p}" for p in a.prerequisites)
    return f"""# {a.id}: {a.title}

This copy of minimaskrcnn is the whole Mask R-CNN except the part you write. Chapter: notebook
`notebooks/{a.chapter}`; paper: {a.paper}. Estimated time: about {a.minutes} minutes ({a.difficulty}).

## What to implement
{parts}

Each of them ends in `# YOUR CODE HERE` (`// YOUR CODE HERE` in CUDA C) and raises
`NotImplementedError("{a.id}: ...")` until you replace the stub. The signature and docstring say what the
function takes and returns; keep them. Do not change other files: the grader uses its own copy of the tests.

## What you will learn
{goals}

Before you start:
{prereq}

## Set up and run the tests
From this folder (Python >= 3.10 and a C++ compiler, as in README.md):

```bash
python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt
{test_command(a)}
```

The second command runs the visible tests of {a.id}. Before you start they all fail with
`NotImplementedError: {a.id}: ...`; other parts' tests keep passing. Add `-x` to stop at the first
failure; each failing assertion says what was expected and what your code gave.

## What "done" looks like
Every test of the command above passes. The grader also runs hidden tests of the same functions (other
shapes, edge cases), so a solution written for the visible cases only will lose points: check your
functions on your own inputs too (for gradients, `minimaskrcnn.nn.gradcheck.check_gradient`).

Then the reward: {REWARD.get(a.id, "the whole detector runs on your code.")}

Hand in this folder (as your teacher asks); keep `.classroom.json`, which tells the grader what it is.
"""
