// cuda_emulation.h: just enough of CUDA for g++ to compile a .cu kernel file unchanged, so that
// minimaskrcnn.ops.rawkernel can run the kernel's grid on a CPU, one thread after another.
//
// What a kernel sees on a GPU, and what it sees here:
//   blockIdx, threadIdx, blockDim, gridDim -> plain globals that the generated launcher sets before
//                                            it calls the kernel function for each (block, thread);
//   __global__, __device__, __forceinline__ -> nothing (or `inline`): ordinary C++ functions;
//   atomicAdd                              -> a plain `+=`: threads run one at a time, so no two
//                                            updates can ever overlap;
//   floor, ceil, round, min, max, ...      -> the C++ standard library.
// What cannot be emulated this way (threads of a block that wait for each other: __shared__ memory,
// __syncthreads(), warp shuffles and votes) is refused by rawkernel.py before compiling.
#pragma once

#include <cmath>

// Function qualifiers. rawkernel.py preprocesses the source with MINIMASKRCNN_FIND_KERNELS defined
// to find the kernels after macro expansion; then __global__ must survive as a marker.
#ifdef MINIMASKRCNN_FIND_KERNELS
#define __global__ __global__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

// Thread coordinates. CUDA gives blockIdx/threadIdx the type uint3 and blockDim/gridDim dim3.
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
static uint3 blockIdx = {0, 0, 0};
static uint3 threadIdx = {0, 0, 0};
static dim3 blockDim;
static dim3 gridDim;

// Math: the float and double overloads of std:: (CUDA offers both for device code).
using std::ceil;
using std::exp;
using std::fabs;
using std::floor;
using std::fmax;
using std::fmin;
using std::log;
using std::round;
using std::sqrt;
using std::trunc;

template <typename T>
inline T max(T a, T b) {
  return a > b ? a : b;
}
template <typename T>
inline T min(T a, T b) {
  return a < b ? a : b;
}

// Read-only cache load: on a CPU, just a load.
template <typename T>
inline T __ldg(const T* address) {
  return *address;
}

// Atomics: serial execution makes read-modify-write safe. Like CUDA, they return the old value.
template <typename T>
inline T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
inline T atomicMax(T* address, T value) {
  T old = *address;
  *address = old > value ? old : value;
  return old;
}
template <typename T>
inline T atomicExch(T* address, T value) {
  T old = *address;
  *address = value;
  return old;
}

// Classroom releases (minimaskrcnn/classroom) replace a kernel's solution by NOT_IMPLEMENTED("A7: ...");
// the emulator records the message here and raises Python's NotImplementedError after the launch.
extern "C" {
const char* minimaskrcnn_not_implemented = 0;
}
#define NOT_IMPLEMENTED(msg) (minimaskrcnn_not_implemented = (msg))
