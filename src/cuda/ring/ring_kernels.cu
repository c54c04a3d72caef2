// CUDA helpers of ring attention: merge partial (O, LSE) pairs, accumulate
// gradients, convert fp32 accumulators to the storage type. Memory-bound and
// tiny next to the attention kernels, so they stay simple.
#include "cuda/cuda_utils.cuh"
#include "cuda/ring/ring_kernels.h"

namespace flashattn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads < 65535 * 16 ? (n + kThreads - 1) / kThreads : 65535 * 16); }

// One thread per (b, i, h) row: all D outputs use the old acc_lse, then the row's lse is updated.
template <typename T>
__global__ void merge_kernel(float* acc_o, float* acc_lse, const T* part, const float* part_lse,
                             ring::ChunkShape s) {
  const int64_t rows = s.batch * s.chunk_len * s.heads;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e0 = r * s.dim;  // first element of the row in the partial
    const int64_t lse_full = s.full_lse_index(e0);
    const float old_lse = acc_lse[lse_full], p_lse = part_lse[s.part_lse_index(e0)];
    float new_lse = old_lse;
    for (int64_t d = 0; d < s.dim; ++d) {
      const int64_t full = s.full_index(e0 + d);
      acc_o[full] = ring::merge_output(acc_o[full], old_lse, to_float(part[e0 + d]), p_lse, &new_lse);
    }
    acc_lse[lse_full] = new_lse;
  }
}

template <typename T>
__global__ void accumulate_kernel(float* acc, const T* part, ring::ChunkShape s) {
  const int64_t n = s.part_elems();
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    acc[s.full_index(e)] += to_float(part[e]);
}

template <typename T>
__global__ void convert_kernel(T* dst, const float* src, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    dst[e] = from_float<T>(src[e]);
}

__global__ void fill_kernel(float* dst, float value, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    dst[e] = value;
}

// Calls f(T{}) with the CUDA element type of dtype.
template <typename F>
void with_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
  }
}

}  // namespace

Status ring_alloc(void** ptr, size_t bytes) { return cuda_status(cudaMalloc(ptr, bytes), "cudaMalloc (ring buffer)"); }
void ring_free(void* ptr) { cudaFree(ptr); }
int ring_current_device() {
  int device = -1;
  return cudaGetDevice(&device) == cudaSuccess ? device : -1;
}
void ring_free_on(int device, void* ptr) {
  DeviceGuard guard(device);
  cudaFree(ptr);
}
Status ring_copy(void* dst, const void* src, size_t bytes, void* stream) {
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_stream(stream)), "cudaMemcpyAsync (ring)");
}
Status ring_copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t height,
                    void* stream) {
  return cuda_status(
      cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, height, cudaMemcpyDefault, as_stream(stream)),
      "cudaMemcpy2DAsync (ring)");
}
Status ring_fill(void* ptr, float value, size_t count, void* stream) {
  fill_kernel<<<blocks_for(count), kThreads, 0, as_stream(stream)>>>(static_cast<float*>(ptr), value, count);
  return cuda_status(cudaGetLastError(), "ring fill kernel");
}
Status ring_sync(void* stream) { return cuda_status(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize"); }

Status ring_merge(float* acc_o, float* acc_lse, const void* part, const float* part_lse, DType dtype,
                  const ring::ChunkShape& shape, void* stream) {
  const int64_t rows = shape.batch * shape.chunk_len * shape.heads;
  with_type(dtype, [&](auto t) {
    using T = decltype(t);
    merge_kernel<T><<<blocks_for(rows), kThreads, 0, as_stream(stream)>>>(acc_o, acc_lse, static_cast<const T*>(part),
                                                                          part_lse, shape);
  });
  return cuda_status(cudaGetLastError(), "ring merge kernel");
}

Status ring_accumulate(float* acc, const void* part, DType dtype, const ring::ChunkShape& shape, void* stream) {
  with_type(dtype, [&](auto t) {
    using T = decltype(t);
    accumulate_kernel<T><<<blocks_for(shape.part_elems()), kThreads, 0, as_stream(stream)>>>(
        acc, static_cast<const T*>(part), shape);
  });
  return cuda_status(cudaGetLastError(), "ring accumulate kernel");
}

Status ring_convert(void* dst, const float* src, DType dtype, size_t count, void* stream) {
  with_type(dtype, [&](auto t) {
    using T = decltype(t);
    convert_kernel<T><<<blocks_for(count), kThreads, 0, as_stream(stream)>>>(static_cast<T*>(dst), src, count);
  });
  return cuda_status(cudaGetLastError(), "ring convert kernel");
}

}  // namespace cuda
}  // namespace flashattn
