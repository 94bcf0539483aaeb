"""Run a CUDA C kernel file on a GPU (``cupy.RawKernel``) or, unchanged, on a CPU (this emulator).

A GPU launches a kernel as a grid of blocks of threads, each thread running the same function with its
own ``blockIdx``/``threadIdx``. Kernels whose threads never wait for each other (no ``__shared__``
memory, no ``__syncthreads()``, no warp shuffles) give the same result whatever order the threads run
in, so a CPU can run them one after another. That is all this module does:

1. refuse the constructs that need threads to run together, naming the file and line;
2. run the C preprocessor over the source (with ``kernels/cuda_emulation.h``, which defines
   ``blockIdx``, ``atomicAdd``, ...), find every ``extern "C" __global__ void name(params)``;
3. generate, for each kernel, a C++ launcher ``void launch(grid, block, void** args)`` that loops over
   the blocks and threads, sets the index globals and calls the kernel: what ``cudaLaunchKernel``
   does on a GPU with the same ``void** args``;
4. compile source + launchers with the system C++ compiler into a shared library, cached on disk
   (``$MINIMASKRCNN_KERNEL_CACHE``, default ``~/.cache/minimaskrcnn/kernels``) under a hash of the
   source, the shim, the compiler and its flags, and call it through ``ctypes`` on NumPy arrays.

:class:`EmulatedKernel` has ``cupy.RawKernel``'s interface, ``kernel(grid, block, args)``, so the
operators call a kernel the same way with or without a GPU; :func:`get_kernel` picks the right one.
Arguments are checked against the kernel's parameter types (array dtype, contiguity, scalar dtypes)
so that a wrong call raises ``ValueError`` instead of crashing the interpreter.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..backend import is_cupy

KERNEL_DIR = Path(__file__).parent / "kernels"
SHIM = KERNEL_DIR / "cuda_emulation.h"
# -ffp-contract=off: no fused multiply-adds, so float32 arithmetic rounds exactly as NumPy's does.
CXX_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off")
_VERSION = "1"  # bump to invalidate every cached library when the launcher generator changes


class UnsupportedKernelError(ValueError):
    """The source uses a construct that a serial CPU emulation would run wrongly."""


class KernelCompileError(RuntimeError):
    """The C++ compiler (or preprocessor) rejected the source; the message holds its output."""


class CompilerNotFoundError(RuntimeError):
    """No C++ compiler to build the CPU emulation with."""


# Constructs whose meaning depends on threads running together. Serially, a __syncthreads() barrier
# would be passed by each thread before the others even start, and shared memory would hold only
# the last thread's writes: wrong results, silently. So they are refused.
_FORBIDDEN = [
    (r"__shared__", "block-shared memory is written by all threads of a block running together"),
    (r"__syncthreads\w*|__syncwarp|__threadfence\w*", "a barrier makes threads wait for each other"),
    (r"__shfl\w*", "warp shuffles read registers of other threads running at the same time"),
    (r"__ballot\w*|__any_sync|__all_sync|__any|__all|__activemask|__match\w*_sync|__reduce\w*_sync",
     "warp votes and reductions combine threads running at the same time"),
    (r"cooperative_groups|this_grid|this_thread_block", "cooperative groups synchronise threads"),
]

# C parameter types the launcher and the argument checks understand, with their NumPy dtypes.
_DTYPES = {
    "float": np.float32, "double": np.float64,
    "int": np.int32, "unsigned int": np.uint32, "unsigned": np.uint32,
    "long long": np.int64, "long long int": np.int64, "unsigned long long": np.uint64,
    "short": np.int16, "unsigned short": np.uint16,
    "char": np.int8, "signed char": np.int8, "unsigned char": np.uint8, "bool": np.bool_,
}


def cache_dir() -> Path:
    """The folder of compiled kernels: ``$MINIMASKRCNN_KERNEL_CACHE`` or ``~/.cache/minimaskrcnn/kernels``."""
    env = os.environ.get("MINIMASKRCNN_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "minimaskrcnn" / "kernels"


def find_compiler() -> str:
    """The C++ compiler: ``$MINIMASKRCNN_CXX``, else ``$CXX``, else the first of g++, c++, clang++ found."""
    for var in ("MINIMASKRCNN_CXX", "CXX"):
        value = os.environ.get(var)
        if value:
            path = shutil.which(value)
            if path is None:
                raise CompilerNotFoundError(
                    f"${var} is {value!r}, which is not an installed program: point it at a C++ compiler "
                    "(e.g. g++), unset it, or use impl='numpy'.")
            return path
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise CompilerNotFoundError(
        "no C++ compiler found (looked for $MINIMASKRCNN_CXX, $CXX, g++, c++, clang++): the CPU "
        "emulation of the CUDA kernels needs one. Install it (Debian/Ubuntu: apt-get install g++; "
        "macOS: xcode-select --install) or use impl='numpy'.")


def compiler_available() -> bool:
    """Whether :func:`find_compiler` finds a compiler (tests skip the emulator without one)."""
    try:
        find_compiler()
    except CompilerNotFoundError:
        return False
    return True


def kernel_source(filename: str) -> str:
    """The text of ``minimaskrcnn/ops/kernels/<filename>`` (e.g. to show it in a notebook)."""
    return (KERNEL_DIR / filename).read_text()


def check_emulatable(code: str, filename: str = "<string>") -> None:
    """Raise :class:`UnsupportedKernelError` at the first construct that needs threads running together."""
    text = _blank_comments(code)
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, why in _FORBIDDEN:
            m = re.search(rf"\b({pattern})\b", line)
            if m:
                raise UnsupportedKernelError(
                    f"{filename}:{lineno}: '{m.group(1)}' cannot be emulated on a CPU: {why}, but the "
                    "emulator runs threads one after another. Run this kernel with CuPy on a GPU, or "
                    "rewrite it so that threads are independent.")


def _blank_comments(code: str) -> str:
    """The source with comments and string literals replaced by spaces (newlines kept, so that line
    numbers still match)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', blank, code, flags=re.S)


class _Param:
    """One kernel parameter: its C type as written (``const float*``), name, pointer-ness, dtype."""

    def __init__(self, text: str, kernel: str):
        text = re.sub(r"\b(__restrict__|__restrict|restrict|volatile)\b", " ", text).strip()
        m = re.fullmatch(r"(.*?)\b([A-Za-z_]\w*)\s*", text, flags=re.S)
        if not m or not m.group(1).strip():
            raise UnsupportedKernelError(f"kernel {kernel}: cannot read the parameter {text!r}")
        self.ctype = " ".join(m.group(1).replace("*", " * ").split()).replace(" *", "*")
        self.name = m.group(2)
        stars = self.ctype.count("*")
        base = " ".join(t for t in self.ctype.replace("*", " ").split() if t != "const")
        if stars > 1 or base not in _DTYPES or "&" in self.ctype:
            raise UnsupportedKernelError(
                f"kernel {kernel}: parameter '{text}' has a type the emulator does not pass; use a "
                f"pointer to or a value of one of: {', '.join(sorted(_DTYPES))}")
        self.pointer = stars == 1
        # A pointer to const may point at read-only memory; `float* const p` is still writable.
        self.writes = self.pointer and not self.ctype.split("*")[0].split().count("const")
        self.dtype = np.dtype(_DTYPES[base])

    def describe(self) -> str:
        return f"{self.name} ({self.ctype})"


def _find_kernels(preprocessed: str) -> dict[str, list[_Param]]:
    """Every ``extern "C" __global__ void name(params)`` in preprocessed source: name -> parameters."""
    kernels = {}
    pattern = r'extern\s*"C"\s*__global__\s+void\s+([A-Za-z_]\w*)\s*\(([^)]*)\)'
    for name, params in re.findall(pattern, preprocessed):
        params = params.strip()
        if params in ("", "void"):
            kernels[name] = []
        else:
            kernels[name] = [_Param(p, name) for p in params.split(",")]
    return kernels


def _launchers(kernels: dict[str, list[_Param]]) -> str:
    """C++ for one launcher per kernel: what cudaLaunchKernel(kernel, grid, block, args) does, serially."""
    out = ["\n// ---- generated by minimaskrcnn.ops.rawkernel: one serial launcher per kernel ----"]
    for name, params in kernels.items():
        # args[i] points at argument i's value, as with cudaLaunchKernel: cast, then dereference.
        call_args = ",".join(f"\n                  *({p.ctype}*)args[{i}]  /* {p.name} */"
                             for i, p in enumerate(params))
        out.append(f"""
extern "C" void minimaskrcnn_launch_{name}(const unsigned int* launch, void** args) {{
  gridDim = dim3(launch[0], launch[1], launch[2]);
  blockDim = dim3(launch[3], launch[4], launch[5]);
  for (unsigned int bz = 0; bz < gridDim.z; ++bz)
    for (unsigned int by = 0; by < gridDim.y; ++by)
      for (unsigned int bx = 0; bx < gridDim.x; ++bx) {{
        blockIdx = uint3{{bx, by, bz}};
        for (unsigned int tz = 0; tz < blockDim.z; ++tz)
          for (unsigned int ty = 0; ty < blockDim.y; ++ty)
            for (unsigned int tx = 0; tx < blockDim.x; ++tx) {{
              threadIdx = uint3{{tx, ty, tz}};
              {name}({call_args});
            }}
      }}
}}""")
    table = json.dumps({name: [p.name + ":" + p.ctype for p in params] for name, params in kernels.items()})
    escaped = table.replace("\\", "\\\\").replace('"', '\\"')
    out.append(f'\nextern "C" const char* minimaskrcnn_kernel_table() {{ return "{escaped}"; }}\n')
    return "\n".join(out)


def _run(cmd: list[str], what: str, filename: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelCompileError(f"{what} of {filename} failed ({' '.join(cmd[:1])}):\n{proc.stderr.strip()}")
    return proc.stdout


_LIBRARIES: dict[str, tuple[ctypes.CDLL, dict]] = {}  # cache key -> (library, kernel table)
_COMPILER_IDS: dict[str, str] = {}


def _compiler_id(cxx: str) -> str:
    if cxx not in _COMPILER_IDS:
        proc = subprocess.run([cxx, "--version"], capture_output=True, text=True)
        _COMPILER_IDS[cxx] = cxx + "\n" + proc.stdout.split("\n")[0]
    return _COMPILER_IDS[cxx]


def _load_library(code: str, filename: str) -> tuple[ctypes.CDLL, dict]:
    """Compile (or fetch from the cache) the emulation library of one source; return it and its
    kernel table ``{name: ["param:ctype", ...]}``."""
    check_emulatable(code, filename)
    cxx = find_compiler()
    shim = SHIM.read_text()
    key = hashlib.sha256("\0".join([_VERSION, _compiler_id(cxx), " ".join(CXX_FLAGS), shim, filename,
                                    code]).encode()).hexdigest()[:24]
    if key in _LIBRARIES:
        return _LIBRARIES[key]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"\W", "_", Path(filename).stem) or "kernel"
    target = folder / f"{stem}-{key}.so"
    if not target.exists():
        _build(code, filename, cxx, folder, target)
    lib = ctypes.CDLL(str(target))
    lib.minimaskrcnn_kernel_table.restype = ctypes.c_char_p
    table = json.loads(lib.minimaskrcnn_kernel_table().decode())
    _LIBRARIES[key] = (lib, table)
    return lib, table


def _translation_unit(code: str, filename: str, cxx: str, folder: Path) -> str:
    """The C++ file g++ compiles: the shim, the kernel source, and the generated launchers."""
    source = folder / "kernel.cu.cpp"
    # #line keeps compiler errors pointing at the .cu file, not at this generated one.
    text = f'#include "{SHIM}"\n#line 1 "{filename}"\n{code}\n'
    source.write_text(text)
    expanded = _run([cxx, "-std=c++17", "-E", "-P", "-DMINIMASKRCNN_FIND_KERNELS", str(source)],
                    "preprocessing", filename)
    return text + _launchers(_find_kernels(expanded))


def emulation_source(code: str, filename: str = "<string>") -> str:
    """What the emulator hands to the C++ compiler for ``code``: ``#include "cuda_emulation.h"``, the
    kernel source unchanged, then one generated serial launcher per ``extern "C" __global__`` kernel."""
    check_emulatable(code, filename)
    with tempfile.TemporaryDirectory() as tmp:
        return _translation_unit(code, filename, find_compiler(), Path(tmp))


def _build(code: str, filename: str, cxx: str, folder: Path, target: Path) -> None:
    """Generate, compile into a temporary file and rename it into place: a rename is atomic, so a
    process compiling the same kernel at the same time never sees half a file."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        source = Path(tmp) / "emulation.cpp"
        source.write_text(_translation_unit(code, filename, cxx, Path(tmp)))
        fd, partial = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".so")
        os.close(fd)
        try:
            _run([cxx, *CXX_FLAGS, "-o", partial, str(source)], "compilation", filename)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


def _dim3(v, what: str) -> tuple[int, int, int]:
    """A CUDA grid or block size (int or tuple of up to 3 ints) as (x, y, z)."""
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if t is None or not 1 <= len(t) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in t):
        raise ValueError(f"{what} must be a positive int or a tuple of 1 to 3 positive ints, got {v!r}")
    return tuple(int(d) for d in t) + (1,) * (3 - len(t))


class EmulatedKernel:
    """A CUDA kernel compiled for the CPU, called like ``cupy.RawKernel``: ``kernel(grid, block, args)``.

    Args:
        code: CUDA C source holding ``extern "C" __global__ void <name>(...)``.
        name: the kernel to call.
        filename: shown in error messages (and in compiler errors, through ``#line``).

    ``args`` is a tuple with one entry per kernel parameter: a C-contiguous NumPy array of the right
    dtype for a pointer parameter (``float*`` <-> float32, ``int*`` <-> int32, ...), a NumPy scalar of
    the right dtype for a value parameter (``np.int32(5)``, ``np.float32(0.25)``): as with CuPy,
    Python ints and floats are refused, because their C type would be a guess.
    """

    def __init__(self, code: str, name: str, filename: str = "<string>"):
        lib, table = _load_library(code, filename)
        if name not in table:
            raise ValueError(f"kernel {name!r} not found in {filename}; it has {sorted(table)} "
                             '(a kernel must be declared extern "C" __global__ to be found by name)')
        self.name, self.filename = name, filename
        self.params = [_Param(p.split(":", 1)[1] + " " + p.split(":", 1)[0], name) for p in table[name]]
        self._launch = getattr(lib, f"minimaskrcnn_launch_{name}")
        self._not_implemented = ctypes.c_char_p.in_dll(lib, "minimaskrcnn_not_implemented")
        self._launch.restype = None
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p)]

    def __repr__(self):
        return f"EmulatedKernel({self.name}({', '.join(p.ctype for p in self.params)}) from {self.filename})"

    def __call__(self, grid, block, args, shared_mem: int = 0):
        grid3, block3 = _dim3(grid, "grid"), _dim3(block, "block")
        if block3[0] * block3[1] * block3[2] > 1024:
            raise ValueError(f"block {block3} has {block3[0] * block3[1] * block3[2]} threads; CUDA allows "
                             "at most 1024 threads per block")
        if shared_mem:
            raise UnsupportedKernelError("dynamic shared memory cannot be emulated (threads run one by one)")
        if not isinstance(args, (tuple, list)) or len(args) != len(self.params):
            n = len(args) if isinstance(args, (tuple, list)) else type(args).__name__
            raise ValueError(f"kernel {self.name} takes {len(self.params)} arguments "
                             f"({', '.join(p.name for p in self.params)}), got {n}")
        holders = [self._convert(i, p, a) for i, (p, a) in enumerate(zip(self.params, args, strict=True))]
        pointers = (ctypes.c_void_p * max(len(holders), 1))(*[ctypes.addressof(h) for h in holders])
        launch = (ctypes.c_uint * 6)(*grid3, *block3)
        self._launch(launch, pointers)
        if self._not_implemented.value:  # a classroom release's stub ran (see cuda_emulation.h)
            message = self._not_implemented.value.decode()
            self._not_implemented.value = None
            raise NotImplementedError(message)

    def _convert(self, i: int, p: _Param, a):
        """The ctypes object holding argument ``a`` for parameter ``p``, after checking that it fits."""
        where = f"kernel {self.name}, argument {i} {p.describe()}"
        if p.pointer:
            if not isinstance(a, np.ndarray):
                kind = "a CuPy array: the emulator runs on host memory" if is_cupy(a) else type(a).__name__
                raise ValueError(f"{where}: expected a NumPy array, got {kind}")
            if a.dtype != p.dtype:
                raise ValueError(f"{where}: expected dtype {p.dtype}, got {a.dtype} (shape {a.shape})")
            if not a.flags.c_contiguous:
                raise ValueError(f"{where}: the array must be C-contiguous (the kernel indexes it as one "
                                 "flat buffer); pass np.ascontiguousarray(x)")
            if p.writes and not a.flags.writeable:
                raise ValueError(f"{where}: the kernel writes through this pointer; the array is read-only")
            return ctypes.c_void_p(a.ctypes.data)
        if not isinstance(a, np.generic) or a.dtype != p.dtype:
            got = f"{type(a).__name__} {a!r}" if not isinstance(a, np.generic) else f"{a.dtype} scalar"
            raise ValueError(f"{where}: expected a NumPy scalar of dtype {p.dtype}, e.g. "
                             f"np.{p.dtype.name}({a!r}), got {got}")
        return np.ctypeslib.as_ctypes_type(p.dtype)(a.item())


_KERNELS: dict[tuple, object] = {}


def get_kernel(filename: str, name: str, xp):
    """Kernel ``name`` of ``minimaskrcnn/ops/kernels/<filename>`` for arrays of module ``xp``:
    a ``cupy.RawKernel`` when ``xp`` is CuPy, an :class:`EmulatedKernel` when it is NumPy."""
    key = (filename, name, xp.__name__)
    if key not in _KERNELS:
        code = kernel_source(filename)
        if xp is np:
            _KERNELS[key] = EmulatedKernel(code, name, filename=str(KERNEL_DIR / filename))
        else:
            _KERNELS[key] = xp.RawKernel(code, name)
    return _KERNELS[key]


def launch_1d(kernel, n: int, args, threads: int = 256, max_blocks: int = 4096) -> None:
    """Launch ``kernel`` over ``n`` values, one per thread, with a grid-stride loop in the kernel."""
    if n > 0:
        kernel((min(max_blocks, -(-n // threads)),), (threads,), tuple(args))


__all__ = ["EmulatedKernel", "get_kernel", "launch_1d", "kernel_source", "emulation_source",
           "check_emulatable", "find_compiler", "cache_dir", "UnsupportedKernelError", "KernelCompileError",
           "CompilerNotFoundError"]
