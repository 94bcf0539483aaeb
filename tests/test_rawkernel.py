"""The CUDA kernel files and their CPU emulator: every .cu compiles for a GPU (nvcc / NVRTC where
present); the emulator runs grids like a GPU, refuses what it cannot emulate, caches and rebuilds
compiled kernels, and checks arguments instead of crashing."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from shutil import which

import numpy as np
import pytest

from minimaskrcnn.ops import rawkernel
from minimaskrcnn.ops.rawkernel import (
    CompilerNotFoundError,
    EmulatedKernel,
    KernelCompileError,
    UnsupportedKernelError,
    get_kernel,
)

CU_FILES = sorted(rawkernel.KERNEL_DIR.glob("*.cu"))
HAS_CXX = rawkernel.compiler_available()   # honours $MINIMASKRCNN_CXX and $CXX, as the emulator does
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler for the kernel emulator")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty kernel cache (on disk and in this process)."""
    monkeypatch.setenv("MINIMASKRCNN_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(rawkernel, "_LIBRARIES", {})
    return tmp_path / "kernels"


def kernel_names(path: Path):
    """The extern "C" kernels a file defines, after its per-dtype macros are expanded by hand."""
    text = path.read_text()
    names = re.findall(r'extern "C" __global__ void (\w+?)##SUFFIX', text)
    suffixes = re.findall(r"^\w+_KERNELS\(\w+, (\w+)\)", text, flags=re.M)
    return [n + s for n in names for s in suffixes]


# ------------------------------------------------------------------------------------------------
# The .cu files compile for a GPU

def test_kernel_files_exist():
    assert {p.name for p in CU_FILES} >= {"roi_align.cu", "roi_pool.cu"}


@pytest.mark.skipif(which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_with_nvcc(path, tmp_path):
    ptx = tmp_path / "out.ptx"
    proc = subprocess.run(["nvcc", "--ptx", "-arch=sm_80", str(path), "-o", str(ptx)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    assert entries == set(kernel_names(path)) and len(entries) == 4  # forward/backward x float/double


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_with_nvrtc(path):
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy (NVRTC) not installed")
    prog = nvrtc.createProgram(path.read_text(), path.name, [], [])
    try:
        nvrtc.compileProgram(prog, ["--gpu-architecture=compute_80"])
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for name in kernel_names(path):
        assert name in ptx


# ------------------------------------------------------------------------------------------------
# The emulator runs a grid as a GPU would

GRID_SOURCE = r'''
// Each thread writes its global (x, y) coordinates: out[y, x] = 1000 * y + x, over a 2-D grid.
extern "C" __global__ void coords(const int width, const int height, int* out) {
  int x = blockIdx.x * blockDim.x + threadIdx.x;
  int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x < width && y < height) out[y * width + x] = 1000 * y + x;
}

template <typename T>
__device__ void axpy(const int n, const T a, const T* x, T* y) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    y[i] += a * x[i];
  }
}
#define AXPY(T, SUFFIX) \
  extern "C" __global__ void axpy_##SUFFIX(const int n, const T a, const T* x, T* y) { axpy<T>(n, a, x, y); }
AXPY(float, f32)
AXPY(double, f64)

// Many threads add into one cell: atomicAdd.
extern "C" __global__ void histogram(const int n, const int* __restrict__ bins, float* counts) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(counts + bins[i], 1.0f);
}
'''


@needs_cxx
def test_two_dimensional_grid(cache):
    kernel = EmulatedKernel(GRID_SOURCE, "coords")
    out = np.full((5, 7), -1, dtype=np.int32)
    kernel((3, 2), (3, 4), (np.int32(7), np.int32(5), out))   # 9 x 8 threads cover 7 x 5
    np.testing.assert_array_equal(out, 1000 * np.arange(5)[:, None] + np.arange(7)[None, :])


@needs_cxx
@pytest.mark.parametrize("name, dtype", [("axpy_f32", np.float32), ("axpy_f64", np.float64)])
def test_macro_generated_kernels_and_grid_stride_loop(cache, name, dtype):
    kernel = EmulatedKernel(GRID_SOURCE, name)
    x, y = np.arange(1000, dtype=dtype), np.ones(1000, dtype=dtype)
    kernel((2,), (32,), (np.int32(1000), dtype(3), x, y))  # 64 threads, each loops over ~16 values
    np.testing.assert_array_equal(y, 1 + 3 * np.arange(1000, dtype=dtype))


@needs_cxx
def test_atomic_add(cache):
    bins = np.array([0, 2, 2, 1, 2, 0], dtype=np.int32)
    counts = np.zeros(3, dtype=np.float32)
    EmulatedKernel(GRID_SOURCE, "histogram")((1,), (8,), (np.int32(6), bins, counts))
    np.testing.assert_array_equal(counts, [2, 1, 3])


@needs_cxx
def test_get_kernel_gives_the_emulator_for_numpy():
    kernel = get_kernel("roi_align.cu", "roi_align_forward_f32", np)
    assert isinstance(kernel, EmulatedKernel)
    assert [p.name for p in kernel.params][:3] == ["nthreads", "features", "rois"]
    assert get_kernel("roi_align.cu", "roi_align_forward_f32", np) is kernel


# ------------------------------------------------------------------------------------------------
# What cannot be emulated is refused, with the construct and its line

@pytest.mark.parametrize("line, construct", [
    ("__shared__ float tile[32];", "__shared__"),
    ("__syncthreads();", "__syncthreads"),
    ("v = __shfl_down_sync(0xffffffff, v, 1);", "__shfl_down_sync"),
    ("unsigned m = __ballot_sync(0xffffffff, v > 0);", "__ballot_sync"),
])
def test_refuses_what_needs_threads_together(cache, line, construct):
    source = textwrap.dedent(f"""\
        // A comment may say __shared__ or __syncthreads(): only code counts.
        extern "C" __global__ void bad(float* x) {{
          float v = x[threadIdx.x];
          {line}
          x[threadIdx.x] = v;
        }}
        """)
    with pytest.raises(UnsupportedKernelError, match=rf"bad\.cu:4: '{construct}' cannot be emulated"):
        EmulatedKernel(source, "bad", filename="bad.cu")


def test_comments_and_strings_are_not_code():
    rawkernel.check_emulatable('// __syncthreads()\n/* __shared__\n */ const char* s = "__shfl";\n')


# ------------------------------------------------------------------------------------------------
# Compilation: cache, rebuild, errors

SCALE_SOURCE = 'extern "C" __global__ void scale(const int n, float* x) {{ int i = threadIdx.x; ' \
               'if (i < n) x[i] *= {factor}; }}'


@needs_cxx
def test_cache_is_reused_and_rebuilt_when_the_source_changes(cache, monkeypatch):
    x = np.ones(4, dtype=np.float32)
    EmulatedKernel(SCALE_SOURCE.format(factor="2.0f"), "scale")((1,), (4,), (np.int32(4), x))
    libraries = sorted(cache.glob("*.so"))
    assert len(libraries) == 1 and np.all(x == 2)
    mtime = libraries[0].stat().st_mtime_ns

    monkeypatch.setattr(rawkernel, "_LIBRARIES", {})  # a new process: only the disk cache remains
    EmulatedKernel(SCALE_SOURCE.format(factor="2.0f"), "scale")((1,), (4,), (np.int32(4), x))
    assert sorted(cache.glob("*.so")) == libraries and libraries[0].stat().st_mtime_ns == mtime
    assert np.all(x == 4)

    EmulatedKernel(SCALE_SOURCE.format(factor="3.0f"), "scale")((1,), (4,), (np.int32(4), x))  # edited
    assert len(list(cache.glob("*.so"))) == 2 and np.all(x == 12)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left


@needs_cxx
def test_two_processes_compiling_at_once(cache):
    script = textwrap.dedent(f"""\
        import numpy as np
        from minimaskrcnn.ops.rawkernel import EmulatedKernel
        x = np.ones(4, dtype=np.float32)
        EmulatedKernel({SCALE_SOURCE.format(factor="5.0f")!r}, "scale")((1,), (4,), (np.int32(4), x))
        assert (x == 5).all()
        """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert len(list(cache.glob("*.so"))) == 1


@needs_cxx
def test_compile_error_points_at_the_source_line(cache):
    source = 'extern "C" __global__ void broken(float* x) {\n  x[0] = undefined_name;\n}\n'
    with pytest.raises(KernelCompileError, match=r"broken\.cu:2"):
        EmulatedKernel(source, "broken", filename="broken.cu")


def test_missing_compiler_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setenv("MINIMASKRCNN_CXX", "/nonexistent/g++")
    with pytest.raises(CompilerNotFoundError, match=r"MINIMASKRCNN_CXX.*not an installed program"):
        EmulatedKernel(SCALE_SOURCE.format(factor="2.0f"), "scale")
    monkeypatch.delenv("MINIMASKRCNN_CXX")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(CompilerNotFoundError, match="no C\\+\\+ compiler found.*apt-get install g\\+\\+"):
        EmulatedKernel(SCALE_SOURCE.format(factor="2.0f"), "scale")


@needs_cxx
def test_unknown_kernel_name(cache):
    with pytest.raises(ValueError, match=r"'scal' not found.*\['scale'\]"):
        EmulatedKernel(SCALE_SOURCE.format(factor="2.0f"), "scal")


# ------------------------------------------------------------------------------------------------
# Arguments are checked against the kernel's parameter types

@needs_cxx
@pytest.mark.parametrize("grid, block, args, message", [
    ((1,), (4,), (np.int32(4),), r"takes 2 arguments \(n, x\), got 1"),
    ((1,), (4,), (4, np.ones(4, np.float32)), r"argument 0 n \(const int\): expected a NumPy scalar"),
    ((1,), (4,), (np.int64(4), np.ones(4, np.float32)), "dtype int32"),
    ((1,), (4,), (np.int32(4), np.ones(4, np.float64)), r"argument 1 x \(float\*\): expected dtype float32"),
    ((1,), (4,), (np.int32(4), np.ones((4, 2), np.float32)[:, 0]), "C-contiguous"),
    ((1,), (4,), (np.int32(4), [1.0, 2.0]), "expected a NumPy array"),
    ((0,), (4,), (np.int32(4), np.ones(4, np.float32)), "grid must be"),
    ((1,), (2048,), (np.int32(4), np.ones(4, np.float32)), "at most 1024 threads"),
])
def test_bad_arguments(cache, grid, block, args, message):
    kernel = EmulatedKernel(SCALE_SOURCE.format(factor="2.0f"), "scale")
    with pytest.raises(ValueError, match=message):
        kernel(grid, block, args)


@needs_cxx
def test_read_only_array_for_a_written_pointer(cache):
    x = np.ones(4, dtype=np.float32)
    x.flags.writeable = False
    kernel = EmulatedKernel(SCALE_SOURCE.format(factor="2.0f"), "scale")
    with pytest.raises(ValueError, match="read-only"):
        kernel((1,), (4,), (np.int32(4), x))
