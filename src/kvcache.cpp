// KV-cache append (include/flashattn/kvcache.h, docs/07-inference.md):
// validation, the CPU implementation, and the hand-off to CUDA.
#include "flashattn/kvcache.h"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "flashattn/flashattn.h"
#if FLASHATTN_WITH_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace flashattn {
namespace {

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

Status check_strides(const char* name, int64_t bs, int64_t rs, int64_t hs, int64_t align_elems) {
  for (int64_t s : {bs, rs, hs}) {
    if (s < 0) return Status::Invalid(cat(name, " strides must be >= 0"));
    if (s % align_elems != 0)
      return Status::Invalid(cat(name, " strides must be multiples of ", align_elems, " elements (16 bytes on CUDA)"));
  }
  return Status::Ok();
}

// Element offset of cache row `pos` of sequence b (-1 when the page entry is out of range).
int64_t cache_row_offset(const KvAppendParams& p, int64_t b, int64_t pos, int64_t bs, int64_t rs) {
  if (!p.block_table) return b * bs + pos * rs;
  const int64_t page = p.block_table[b * p.block_table_batch_stride + pos / p.page_size];
  if (page < 0 || page >= p.num_pages) return -1;
  return page * bs + (pos % p.page_size) * rs;
}

// Rotate one row of `dim` floats in place at position pos (kvcache.h has the formula).
void rotate_row(const KvAppendParams& p, float* x, int64_t pos) {
  const int64_t half = p.rotary_dim / 2;
  const float* c = p.rotary_cos + pos * half;
  const float* s = p.rotary_sin + pos * half;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t i1 = p.rotary_interleaved ? 2 * i : i;
    const int64_t i2 = p.rotary_interleaved ? 2 * i + 1 : i + half;
    const float x1 = x[i1], x2 = x[i2];
    x[i1] = x1 * c[i] - x2 * s[i];
    x[i2] = x1 * s[i] + x2 * c[i];
  }
}

Status append_kv_cpu(const KvAppendParams& p) {
  const int64_t dv = p.head_dim_v ? p.head_dim_v : p.head_dim;
  std::vector<float> row(static_cast<size_t>(std::max(p.head_dim, dv)));
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t t = 0; t < p.seqlen_new; ++t) {
      const int64_t pos = p.cache_seqlens[b] + t;
      const int64_t ko = cache_row_offset(p, b, pos, p.k_cache_batch_stride, p.k_cache_row_stride);
      const int64_t vo = cache_row_offset(p, b, pos, p.v_cache_batch_stride, p.v_cache_row_stride);
      for (int64_t h = 0; h < p.heads_kv; ++h) {
        const int64_t kin = b * p.k_new_batch_stride + t * p.k_new_row_stride + h * p.k_new_head_stride;
        for (int64_t d = 0; d < p.head_dim; ++d) row[d] = load_as_float(p.k_new, p.dtype, kin + d);
        if (p.rotary_dim > 0) rotate_row(p, row.data(), pos);
        for (int64_t d = 0; d < p.head_dim; ++d)
          store_from_float(p.k_cache, p.dtype, ko + h * p.k_cache_head_stride + d, row[d]);
        const int64_t vin = b * p.v_new_batch_stride + t * p.v_new_row_stride + h * p.v_new_head_stride;
        for (int64_t d = 0; d < dv; ++d)
          store_from_float(p.v_cache, p.dtype, vo + h * p.v_cache_head_stride + d,
                           load_as_float(p.v_new, p.dtype, vin + d));
      }
      if (p.q && p.rotary_dim > 0)
        for (int64_t h = 0; h < p.heads_q; ++h) {
          const int64_t qo = b * p.q_batch_stride + t * p.q_row_stride + h * p.q_head_stride;
          for (int64_t d = 0; d < p.head_dim; ++d) row[d] = load_as_float(p.q, p.dtype, qo + d);
          rotate_row(p, row.data(), pos);
          for (int64_t d = 0; d < p.head_dim; ++d) store_from_float(p.q, p.dtype, qo + d, row[d]);
        }
    }
  return Status::Ok();
}

}  // namespace

Status validate(const KvAppendParams& p) {
  if (p.device != Device::kCPU && p.device != Device::kCUDA)
    return Status::Invalid("append_kv: device must be CPU or CUDA");
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::Invalid("append_kv: dtype must be float32, float16 or bfloat16");
  if (p.batch < 1 || p.seqlen_new < 1 || p.heads_kv < 1 || p.capacity < 1)
    return Status::Invalid(cat("append_kv: batch, seqlen_new, heads_kv and capacity must be >= 1 (got ", p.batch, ", ",
                               p.seqlen_new, ", ", p.heads_kv, ", ", p.capacity, ")"));
  if (p.batch > (1 << 30) || p.seqlen_new > (1 << 30) || p.capacity > (int64_t{1} << 31) - 1 || p.heads_kv > 65535)
    return Status::Invalid("append_kv: sizes exceed the 32-bit index range");
  const int64_t dv = p.head_dim_v ? p.head_dim_v : p.head_dim;
  if (p.head_dim < 8 || p.head_dim % 8 != 0 || p.head_dim > 256 || dv % 8 != 0 || dv > 256)
    return Status::Invalid(cat("append_kv: head_dim (", p.head_dim, ") and head_dim_v (", dv,
                               ") must be multiples of 8 up to 256"));
  if (!p.k_new || !p.v_new || !p.k_cache || !p.v_cache) return Status::Invalid("append_kv: k_new, v_new, k_cache and v_cache are required");
  if (!p.cache_seqlens) return Status::Invalid("append_kv: cache_seqlens is required (the current length of each sequence)");
  const int64_t align_elems = p.device == Device::kCUDA ? 16 / dtype_size(p.dtype) : 1;
  for (const void* ptr : {p.k_new, p.v_new, static_cast<const void*>(p.k_cache), static_cast<const void*>(p.v_cache)})
    if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(align_elems * dtype_size(p.dtype)) != 0)
      return Status::Invalid("append_kv: k/v pointers must be aligned to 16 bytes on CUDA (the element size on CPU)");
  Status st;
  if (!(st = check_strides("k_new", p.k_new_batch_stride, p.k_new_row_stride, p.k_new_head_stride, align_elems)).ok()) return st;
  if (!(st = check_strides("v_new", p.v_new_batch_stride, p.v_new_row_stride, p.v_new_head_stride, align_elems)).ok()) return st;
  if (!(st = check_strides("k_cache", p.k_cache_batch_stride, p.k_cache_row_stride, p.k_cache_head_stride, align_elems)).ok()) return st;
  if (!(st = check_strides("v_cache", p.v_cache_batch_stride, p.v_cache_row_stride, p.v_cache_head_stride, align_elems)).ok()) return st;
  if (p.block_table) {
    if (p.page_size < 1 || p.num_pages < 1)
      return Status::Invalid(cat("append_kv: a paged cache needs page_size >= 1 and num_pages >= 1 (got ", p.page_size,
                                 ", ", p.num_pages, ")"));
    if (p.batch > 1 && p.block_table_batch_stride < (p.capacity + p.page_size - 1) / p.page_size)
      return Status::Invalid("append_kv: block_table_batch_stride < ceil(capacity / page_size)");
  }
  if (p.rotary_dim != 0) {
    if (p.rotary_dim < 0 || p.rotary_dim % 2 != 0 || p.rotary_dim > p.head_dim)
      return Status::Invalid(cat("append_kv: rotary_dim ", p.rotary_dim, " must be even and <= head_dim ", p.head_dim));
    if (!p.rotary_cos || !p.rotary_sin || p.rotary_max_pos < 1)
      return Status::Invalid("append_kv: rotary_dim > 0 needs rotary_cos, rotary_sin and rotary_max_pos >= 1");
  }
  if (p.q) {
    if (p.rotary_dim == 0) return Status::Invalid("append_kv: q is only rotated; pass q together with rotary tables");
    if (p.heads_q < 1 || p.heads_q % p.heads_kv != 0)
      return Status::Invalid("append_kv: heads_q must be a positive multiple of heads_kv");
    if (!(st = check_strides("q", p.q_batch_stride, p.q_row_stride, p.q_head_stride, align_elems)).ok()) return st;
  }
  if (p.device == Device::kCUDA) {
    if (!cuda_compiled()) return Status::NotCompiled("append_kv: device is CUDA but flashattn was built without CUDA");
    return Status::Ok();  // index arrays live on the device: the caller's contract (the kernel skips bad rows)
  }
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t len = p.cache_seqlens[b];
    if (len < 0 || len + p.seqlen_new > p.capacity)
      return Status::Invalid(cat("append_kv: cache too small: sequence ", b, " holds ", len, " keys, appending ",
                                 p.seqlen_new, " needs ", len + p.seqlen_new, " > capacity ", p.capacity));
    if (p.rotary_dim > 0 && len + p.seqlen_new > p.rotary_max_pos)
      return Status::Invalid(cat("append_kv: position ", len + p.seqlen_new - 1, " of sequence ", b,
                                 " is past the rotary tables (rotary_max_pos ", p.rotary_max_pos, ")"));
    if (p.block_table)
      for (int64_t j = len / p.page_size; j <= (len + p.seqlen_new - 1) / p.page_size; ++j) {
        const int64_t page = p.block_table[b * p.block_table_batch_stride + j];
        if (page < 0 || page >= p.num_pages)
          return Status::Invalid(cat("append_kv: block_table[", b, ", ", j, "] = ", page,
                                     " is out of range: pages are 0..", p.num_pages - 1));
      }
  }
  return Status::Ok();
}

Status append_kv(const KvAppendParams& p) {
  Status st = validate(p);
  if (!st.ok()) return st;
  if (p.device == Device::kCUDA) {
#if FLASHATTN_WITH_CUDA
    return cuda::append_kv(p);
#endif
  }
  return append_kv_cpu(p);
}

}  // namespace flashattn
