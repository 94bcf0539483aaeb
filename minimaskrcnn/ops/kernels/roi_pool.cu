// RoIPool (Fast R-CNN, Girshick 2015; the baseline of Mask R-CNN Table 2c/2d): forward and backward.
//
// Compiled by CuPy (NVRTC) on a GPU and by minimaskrcnn.ops.rawkernel (g++ + cuda_emulation.h) on a
// CPU, from this same text; see roi_align.cu for the ground rules.
//
// Follows torchvision.ops.roi_pool exactly. RoIPool quantizes twice, which is what Mask R-CNN's
// RoIAlign removes:
//   1. the RoI corners are rounded to whole cells: round(x1 * spatial_scale), C's round (halves
//      away from zero), and the RoI covers cells start..end inclusive;
//   2. each bin is widened to whole cells: rows floor(ph * bin_h) .. ceil((ph + 1) * bin_h) - 1.
// Each output is the max over its bin's cells; an empty bin (clipped away by the map border) is 0.
//
// Launch: one thread per output value out[k, c, ph, pw], grid-stride loop.

template <typename T>
__device__ void roi_pool_forward(const int nthreads, const T* features, const T* rois, const int channels,
                                 const int height, const int width, const int pooled_height,
                                 const int pooled_width, const T spatial_scale, T* out, int* argmax) {
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < nthreads;
       index += blockDim.x * gridDim.x) {
    int pw = index % pooled_width;
    int ph = (index / pooled_width) % pooled_height;
    int c = (index / pooled_width / pooled_height) % channels;
    int k = index / pooled_width / pooled_height / channels;

    const T* roi = rois + k * 5;
    int batch = (int)roi[0];
    int roi_start_w = (int)round(roi[1] * spatial_scale);  // quantization 1: the RoI
    int roi_start_h = (int)round(roi[2] * spatial_scale);
    int roi_end_w = (int)round(roi[3] * spatial_scale);
    int roi_end_h = (int)round(roi[4] * spatial_scale);
    int roi_width = max(roi_end_w - roi_start_w + 1, 1);  // malformed RoIs become 1x1
    int roi_height = max(roi_end_h - roi_start_h + 1, 1);
    T bin_h = (T)roi_height / (T)pooled_height;
    T bin_w = (T)roi_width / (T)pooled_width;

    // Quantization 2: the bin [ph * bin_h, (ph + 1) * bin_h) widened to whole cells, then clipped.
    int hstart = (int)floor((T)ph * bin_h);
    int wstart = (int)floor((T)pw * bin_w);
    int hend = (int)ceil((T)(ph + 1) * bin_h);
    int wend = (int)ceil((T)(pw + 1) * bin_w);
    hstart = min(max(hstart + roi_start_h, 0), height);
    hend = min(max(hend + roi_start_h, 0), height);
    wstart = min(max(wstart + roi_start_w, 0), width);
    wend = min(max(wend + roi_start_w, 0), width);

    const T* plane = features + (batch * channels + c) * height * width;
    T best = (T)0.0;  // an empty bin outputs 0 ...
    int best_i = -1;  // ... and routes no gradient
    for (int h = hstart; h < hend; h++) {
      for (int w = wstart; w < wend; w++) {
        int i = h * width + w;
        if (best_i < 0 || plane[i] > best) {  // strict '>': ties keep the first cell (row-major)
          best = plane[i];
          best_i = i;
        }
      }
    }
    out[index] = best;
    argmax[index] = best_i;  // position h * width + w inside the channel plane
  }
}

// Backward: each output gradient goes to the one cell that won the max. Bins of a RoI may share a
// cell (quantization 2 makes neighbouring bins overlap by one row or column), hence atomicAdd.
template <typename T>
__device__ void roi_pool_backward(const int nthreads, const T* dout, const T* rois, const int* argmax,
                                  const int channels, const int height, const int width,
                                  const int pooled_height, const int pooled_width, T* dfeatures) {
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < nthreads;
       index += blockDim.x * gridDim.x) {
    int c = (index / pooled_width / pooled_height) % channels;
    int k = index / pooled_width / pooled_height / channels;
    int batch = (int)rois[k * 5];
    if (argmax[index] >= 0) {
      atomicAdd(dfeatures + (batch * channels + c) * height * width + argmax[index], dout[index]);
    }
  }
}

#define ROI_POOL_KERNELS(T, SUFFIX)                                                                     \
  extern "C" __global__ void roi_pool_forward_##SUFFIX(                                                 \
      const int nthreads, const T* features, const T* rois, const int channels, const int height,     \
      const int width, const int pooled_height, const int pooled_width, const T spatial_scale, T* out, \
      int* argmax) {                                                                                    \
    roi_pool_forward<T>(nthreads, features, rois, channels, height, width, pooled_height, pooled_width, \
                        spatial_scale, out, argmax);                                                    \
  }                                                                                                     \
  extern "C" __global__ void roi_pool_backward_##SUFFIX(                                                \
      const int nthreads, const T* dout, const T* rois, const int* argmax, const int channels,         \
      const int height, const int width, const int pooled_height, const int pooled_width,              \
      T* dfeatures) {                                                                                   \
    roi_pool_backward<T>(nthreads, dout, rois, argmax, channels, height, width, pooled_height,         \
                         pooled_width, dfeatures);                                                      \
  }

ROI_POOL_KERNELS(float, f32)
ROI_POOL_KERNELS(double, f64)
