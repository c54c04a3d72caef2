// KV-cache append on CUDA (include/flashattn/kvcache.h): one CTA per (new row t,
// sequence b), threads over (head, rotary pair or 8-element chunk). Rows that
// would land past the capacity or on an out-of-range page are skipped: the index
// arrays live on the device and are the caller's contract (docs/07-inference.md).
#include <cuda_runtime.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace flashattn {
namespace cuda {
namespace {

// Offset of cache row pos of sequence b, or -1 when it does not exist.
__device__ __forceinline__ int64_t cache_row(const KvAppendParams& p, int b, int64_t pos, int64_t bs, int64_t rs) {
  if (pos < 0 || pos >= p.capacity) return -1;
  if (!p.block_table) return static_cast<int64_t>(b) * bs + pos * rs;
  const int page = p.block_table[b * p.block_table_batch_stride + pos / p.page_size];
  if (page < 0 || page >= p.num_pages) return -1;
  return static_cast<int64_t>(page) * bs + (pos % p.page_size) * rs;
}

// Rotate (in registers) the pair (x1, x2) of dim index i at position pos.
__device__ __forceinline__ void rotate(const KvAppendParams& p, int64_t pos, int i, float& x1, float& x2) {
  const int64_t half = p.rotary_dim / 2;
  const float c = p.rotary_cos[pos * half + i], s = p.rotary_sin[pos * half + i];
  const float a = x1, b = x2;
  x1 = a * c - b * s;
  x2 = a * s + b * c;
}

// Copy (and rotate) one head row of `dim` elements: src -> dst (dst may equal src).
template <typename T>
__device__ void copy_row(const KvAppendParams& p, const T* src, T* dst, int dim, bool rot, int64_t pos, int lane,
                         int nthreads) {
  const int half = static_cast<int>(p.rotary_dim / 2);
  if (rot) {
    for (int i = lane; i < half; i += nthreads) {
      const int i1 = p.rotary_interleaved ? 2 * i : i;
      const int i2 = p.rotary_interleaved ? 2 * i + 1 : i + half;
      float x1 = to_float(src[i1]), x2 = to_float(src[i2]);
      rotate(p, pos, i, x1, x2);
      dst[i1] = from_float<T>(x1);
      dst[i2] = from_float<T>(x2);
    }
    for (int d = static_cast<int>(p.rotary_dim) + lane; d < dim; d += nthreads) dst[d] = src[d];
  } else if (src != dst) {
    constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte load
    for (int d = lane * kVec; d < dim; d += nthreads * kVec)
      *reinterpret_cast<uint4*>(dst + d) = *reinterpret_cast<const uint4*>(src + d);
  }
}

template <typename T>
__global__ void append_kv_kernel(const KvAppendParams p) {
  const int t = blockIdx.x, b = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int64_t pos = static_cast<int64_t>(p.cache_seqlens[b]) + t;
  const bool rot = p.rotary_dim > 0 && pos >= 0 && pos < p.rotary_max_pos;
  const int dv = static_cast<int>(p.head_dim_v ? p.head_dim_v : p.head_dim);
  const int64_t ko = cache_row(p, b, pos, p.k_cache_batch_stride, p.k_cache_row_stride);
  const int64_t vo = cache_row(p, b, pos, p.v_cache_batch_stride, p.v_cache_row_stride);
  for (int h = warp; h < p.heads_kv; h += nwarps) {
    if (ko >= 0) {
      const T* src = static_cast<const T*>(p.k_new) + b * p.k_new_batch_stride + t * p.k_new_row_stride +
                     h * p.k_new_head_stride;
      T* dst = static_cast<T*>(p.k_cache) + ko + h * p.k_cache_head_stride;
      copy_row<T>(p, src, dst, static_cast<int>(p.head_dim), rot, pos, lane, 32);
    }
    if (vo >= 0) {
      const T* src = static_cast<const T*>(p.v_new) + b * p.v_new_batch_stride + t * p.v_new_row_stride +
                     h * p.v_new_head_stride;
      T* dst = static_cast<T*>(p.v_cache) + vo + h * p.v_cache_head_stride;
      copy_row<T>(p, src, dst, dv, false, pos, lane, 32);
    }
  }
  if (p.q && rot)
    for (int h = warp; h < p.heads_q; h += nwarps) {
      T* row = static_cast<T*>(p.q) + b * p.q_batch_stride + t * p.q_row_stride + h * p.q_head_stride;
      copy_row<T>(p, row, row, static_cast<int>(p.head_dim), true, pos, lane, 32);
    }
}

Status check_ptr(const char* name, const void* ptr) {
  if (!ptr) return Status::Ok();
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return Status::Invalid(std::string("append_kv: ") + name + " is not a CUDA pointer, but device is CUDA");
  }
  if (attr.type == cudaMemoryTypeHost || attr.type == cudaMemoryTypeUnregistered)
    return Status::Invalid(std::string("append_kv: ") + name + " points to host memory, but device is CUDA");
  return Status::Ok();
}

}  // namespace

Status append_kv(const KvAppendParams& p) {
  for (auto [name, ptr] : {std::pair<const char*, const void*>{"k_new", p.k_new}, {"v_new", p.v_new},
                           {"k_cache", p.k_cache}, {"v_cache", p.v_cache}, {"cache_seqlens", p.cache_seqlens},
                           {"block_table", p.block_table}, {"rotary_cos", p.rotary_cos},
                           {"rotary_sin", p.rotary_sin}, {"q", p.q}}) {
    Status st = check_ptr(name, ptr);
    if (!st.ok()) return st;
  }
  if (p.seqlen_new > 65535 || p.batch > 65535)
    return Status::Unsupported("append_kv on CUDA: seqlen_new and batch must be <= 65535");
  DeviceGuard guard(p.device_index);
  const dim3 grid(static_cast<unsigned>(p.seqlen_new), static_cast<unsigned>(p.batch));
  const cudaStream_t stream = as_stream(p.stream);
  switch (p.dtype) {
    case DType::kFloat16: append_kv_kernel<__half><<<grid, 256, 0, stream>>>(p); break;
    case DType::kBFloat16: append_kv_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p); break;
    case DType::kFloat32: append_kv_kernel<float><<<grid, 256, 0, stream>>>(p); break;
  }
  FA_CUDA_CHECK_LAUNCH("append_kv_kernel");
  return Status::Ok();
}

}  // namespace cuda
}  // namespace flashattn
