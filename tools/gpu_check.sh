#!/usr/bin/env bash
# On a machine with CuPy and a CUDA GPU, from the repository root: the GPU-marked tests, the demo with
# --device cuda, and RoIAlign's RawKernel against torchvision's CUDA roi_align (when torch is installed).
# Options: --iters N (demo iterations, default 300), --skip tests,demo,timing. See tools/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" tools/gpu_check.py "$@"
