// RoIAlign and RoIWarp (Mask R-CNN, He et al. 2017, Section 3 and Table 2c): forward and backward.
//
// The one source of truth for minimaskrcnn's kernels: CuPy compiles this file with NVRTC
// (cupy.RawKernel) on a GPU, and minimaskrcnn.ops.rawkernel compiles the very same text with g++
// against cuda_emulation.h to run it on a CPU. So it includes no headers and uses only what both
// offer: templates, int/float/double arithmetic, floor/ceil/round, min/max and atomicAdd.
//
// Geometry follows torchvision.ops.roi_align exactly (its CUDA kernel, roi_align_kernel.cu):
//   * a RoI (x1, y1, x2, y2) in image pixels becomes x1 * spatial_scale ... in feature-map cells,
//     minus 0.5 when `aligned` (so that pixel centres, not corners, line up);
//   * it is split into pooled_height x pooled_width bins; each bin holds a regular grid of
//     sampling_ratio x sampling_ratio points (sampling_ratio <= 0: ceil(bin size) points per axis);
//   * each point is read by bilinear interpolation of its four neighbouring cells;
//   * "avg" mode averages a bin's points, "max" mode keeps the largest (Table 2c compares both).
// RoIWarp (the `quantize` flag) is the same, except that the RoI corners are first rounded to whole
// cells, as RoIPool rounds them: that single round() is what RoIAlign removes.
//
// Launch: one thread per output value, out[k, c, ph, pw] (or per output gradient in backward),
// in a grid-stride loop so any grid size covers all `nthreads` values.

// Where a sample at (y, x) reads the feature map: its four neighbours (y_low/high, x_low/high) and
// bilinear weights w1..w4 (top-left, top-right, bottom-left, bottom-right).
// Returns false for a point more than one cell outside the map: it contributes zero.
template <typename T>
__device__ __forceinline__ bool bilinear_neighbours(T y, T x, int height, int width,
                                                    int& y_low, int& y_high, int& x_low, int& x_high,
                                                    T& w1, T& w2, T& w3, T& w4) {
  if (y < (T)-1.0 || y > (T)height || x < (T)-1.0 || x > (T)width) {
    return false;
  }
  // Points in the one-cell margin are clamped onto the border (torchvision's rule).
  if (y <= (T)0) y = (T)0;
  if (x <= (T)0) x = (T)0;
  y_low = (int)y;
  x_low = (int)x;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = (T)y_low;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = (T)x_low;
  } else {
    x_high = x_low + 1;
  }
  T ly = y - (T)y_low;  // distance from the top neighbour, in [0, 1)
  T lx = x - (T)x_low;
  T hy = (T)1.0 - ly;
  T hx = (T)1.0 - lx;
  w1 = hy * hx;
  w2 = hy * lx;
  w3 = ly * hx;
  w4 = ly * lx;
  return true;
}

// The RoI of row `roi` = (batch_index, x1, y1, x2, y2) in feature-map cells: its top-left corner,
// bin size and sampling grid. Shared by forward and backward so they can never disagree.
template <typename T>
struct RoIGeometry {
  int batch;
  T start_y, start_x;        // top-left corner of the RoI
  T bin_h, bin_w;            // size of one bin
  int grid_h, grid_w;        // sample points per bin along y and x
  T count;                   // points per bin (at least 1, so that empty bins divide safely)
};

template <typename T>
__device__ __forceinline__ RoIGeometry<T> roi_geometry(const T* roi, T spatial_scale, int pooled_height,
                                                       int pooled_width, int sampling_ratio, int aligned,
                                                       int quantize) {
  RoIGeometry<T> g;
  g.batch = (int)roi[0];
  T x1 = roi[1] * spatial_scale;
  T y1 = roi[2] * spatial_scale;
  T x2 = roi[3] * spatial_scale;
  T y2 = roi[4] * spatial_scale;
  if (quantize) {  // RoIWarp: snap the corners to whole cells, as RoIPool does
    x1 = round(x1);
    y1 = round(y1);
    x2 = round(x2);
    y2 = round(y2);
  }
  T offset = aligned ? (T)0.5 : (T)0.0;
  g.start_x = x1 - offset;
  g.start_y = y1 - offset;
  T roi_w = x2 - offset - g.start_x;
  T roi_h = y2 - offset - g.start_y;
  if (!aligned) {  // legacy behaviour: force malformed RoIs to be at least 1x1
    roi_w = max(roi_w, (T)1.0);
    roi_h = max(roi_h, (T)1.0);
  }
  g.bin_h = roi_h / (T)pooled_height;
  g.bin_w = roi_w / (T)pooled_width;
  // Adaptive sampling: about one point per cell. A negative size (aligned, x2 < x1) gives no points.
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : max((int)ceil(roi_h / (T)pooled_height), 0);
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : max((int)ceil(roi_w / (T)pooled_width), 0);
  g.count = (T)max(g.grid_h * g.grid_w, 1);
  return g;
}

// Coordinate of sample `i` of bin `p` along one axis.
template <typename T>
__device__ __forceinline__ T sample_coordinate(T start, int p, T bin, int i, int grid) {
  return start + (T)p * bin + (T)(i + 0.5f) * bin / (T)grid;
}

template <typename T>
__device__ void roi_align_forward(const int nthreads, const T* features, const T* rois, const int channels,
                                  const int height, const int width, const int pooled_height,
                                  const int pooled_width, const T spatial_scale, const int sampling_ratio,
                                  const int aligned, const int quantize, const int use_max, T* out,
                                  int* argmax) {
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < nthreads;
       index += blockDim.x * gridDim.x) {
    // index -> (k, c, ph, pw), the position of this thread's value in out (K, C, PH, PW).
    int pw = index % pooled_width;
    int ph = (index / pooled_width) % pooled_height;
    int c = (index / pooled_width / pooled_height) % channels;
    int k = index / pooled_width / pooled_height / channels;

    RoIGeometry<T> g = roi_geometry(rois + k * 5, spatial_scale, pooled_height, pooled_width,
                                    sampling_ratio, aligned, quantize);
    const T* plane = features + (g.batch * channels + c) * height * width;

    T sum = (T)0.0;
    T best = (T)0.0;   // max mode: the largest sample so far
    int best_i = -1;   // ... and its index iy * grid_w + ix (-1: the bin has no samples)
    for (int iy = 0; iy < g.grid_h; iy++) {
      T y = sample_coordinate(g.start_y, ph, g.bin_h, iy, g.grid_h);
      for (int ix = 0; ix < g.grid_w; ix++) {
        T x = sample_coordinate(g.start_x, pw, g.bin_w, ix, g.grid_w);
        int y0, y1, x0, x1;
        T w1, w2, w3, w4;
        T value = (T)0.0;  // a point outside the map reads zero
        if (bilinear_neighbours(y, x, height, width, y0, y1, x0, x1, w1, w2, w3, w4)) {
          value = w1 * plane[y0 * width + x0] + w2 * plane[y0 * width + x1] +
                  w3 * plane[y1 * width + x0] + w4 * plane[y1 * width + x1];
        }
        sum += value;
        if (best_i < 0 || value > best) {  // strict '>': ties keep the first point
          best = value;
          best_i = iy * g.grid_w + ix;
        }
      }
    }
    if (use_max) {
      out[index] = best;  // 0 for an empty bin
      argmax[index] = best_i;
    } else {
      out[index] = sum / g.count;
    }
  }
}

// Backward: each output gradient flows back to the four neighbours of every point that made the
// output (avg: weight w / count each; max: only the winning point). Many threads can hit the same
// cell, hence atomicAdd.
template <typename T>
__device__ void roi_align_backward(const int nthreads, const T* dout, const T* rois, const int* argmax,
                                   const int channels, const int height, const int width,
                                   const int pooled_height, const int pooled_width, const T spatial_scale,
                                   const int sampling_ratio, const int aligned, const int quantize,
                                   const int use_max, T* dfeatures) {
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < nthreads;
       index += blockDim.x * gridDim.x) {
    int pw = index % pooled_width;
    int ph = (index / pooled_width) % pooled_height;
    int c = (index / pooled_width / pooled_height) % channels;
    int k = index / pooled_width / pooled_height / channels;

    RoIGeometry<T> g = roi_geometry(rois + k * 5, spatial_scale, pooled_height, pooled_width,
                                    sampling_ratio, aligned, quantize);
    T* plane = dfeatures + (g.batch * channels + c) * height * width;

    // ### BEGIN SOLUTION
    // The points to visit: all of them (avg), or just the argmax (max).
    int first = 0;
    int last = g.grid_h * g.grid_w;  // exclusive
    T grad = dout[index];
    T divisor = g.count;
    if (use_max) {
      first = argmax[index];
      last = first + 1;
      divisor = (T)1.0;
      if (first < 0) continue;  // empty bin: nothing to route
    }
    for (int i = first; i < last; i++) {
      int iy = i / g.grid_w;
      int ix = i % g.grid_w;
      T y = sample_coordinate(g.start_y, ph, g.bin_h, iy, g.grid_h);
      T x = sample_coordinate(g.start_x, pw, g.bin_w, ix, g.grid_w);
      int y0, y1, x0, x1;
      T w1, w2, w3, w4;
      if (bilinear_neighbours(y, x, height, width, y0, y1, x0, x1, w1, w2, w3, w4)) {
        atomicAdd(plane + y0 * width + x0, grad * w1 / divisor);
        atomicAdd(plane + y0 * width + x1, grad * w2 / divisor);
        atomicAdd(plane + y1 * width + x0, grad * w3 / divisor);
        atomicAdd(plane + y1 * width + x1, grad * w4 / divisor);
      }
    }
    // ### END SOLUTION
  }
}

// RawKernel looks kernels up by name, and C++ templates have mangled names: so each element type
// gets a plain extern "C" entry point, roi_align_forward_f32, roi_align_forward_f64, ...
#define ROI_ALIGN_KERNELS(T, SUFFIX)                                                                    \
  extern "C" __global__ void roi_align_forward_##SUFFIX(                                                \
      const int nthreads, const T* features, const T* rois, const int channels, const int height,     \
      const int width, const int pooled_height, const int pooled_width, const T spatial_scale,         \
      const int sampling_ratio, const int aligned, const int quantize, const int use_max, T* out,      \
      int* argmax) {                                                                                    \
    roi_align_forward<T>(nthreads, features, rois, channels, height, width, pooled_height,            \
                         pooled_width, spatial_scale, sampling_ratio, aligned, quantize, use_max, out, \
                         argmax);                                                                       \
  }                                                                                                     \
  extern "C" __global__ void roi_align_backward_##SUFFIX(                                               \
      const int nthreads, const T* dout, const T* rois, const int* argmax, const int channels,         \
      const int height, const int width, const int pooled_height, const int pooled_width,              \
      const T spatial_scale, const int sampling_ratio, const int aligned, const int quantize,          \
      const int use_max, T* dfeatures) {                                                                \
    roi_align_backward<T>(nthreads, dout, rois, argmax, channels, height, width, pooled_height,       \
                          pooled_width, spatial_scale, sampling_ratio, aligned, quantize, use_max,     \
                          dfeatures);                                                                   \
  }

ROI_ALIGN_KERNELS(float, f32)
ROI_ALIGN_KERNELS(double, f64)
