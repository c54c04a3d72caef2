// Moving tiles between the caller's strided fp32/fp16/bf16 tensors and the
// fp32 scratch the CPU FlashAttention kernels compute in.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/dtype.h"

namespace flashattn {
namespace cpu {

// dst[r * ld + c] = scale * src[offset + r * row_stride + c] for r < rows, c < cols;
// columns [cols, ld) are zeroed.
inline void load_rows_f32(const void* src, DType dt, int64_t offset, int64_t row_stride, int64_t rows, int64_t cols,
                          float scale, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    float* out = dst + r * ld;
    const int64_t base = offset + r * row_stride;
    switch (dt) {
      case DType::kFloat32: {
        const float* in = static_cast<const float*>(src) + base;
        for (int64_t c = 0; c < cols; ++c) out[c] = scale * in[c];
        break;
      }
      case DType::kFloat16: {
        const uint16_t* in = static_cast<const uint16_t*>(src) + base;
        for (int64_t c = 0; c < cols; ++c) out[c] = scale * fp16_to_float(in[c]);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t* in = static_cast<const uint16_t*>(src) + base;
        for (int64_t c = 0; c < cols; ++c) out[c] = scale * bf16_to_float(in[c]);
        break;
      }
    }
    for (int64_t c = cols; c < ld; ++c) out[c] = 0.0f;
  }
}

// Transposed load: dst[c * ld + r] = src[offset + r * row_stride + c] for r < rows, c < cols;
// entries (c, r) with rows <= r < ld are zeroed.
inline void load_rows_transposed_f32(const void* src, DType dt, int64_t offset, int64_t row_stride, int64_t rows,
                                     int64_t cols, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = offset + r * row_stride;
    if (dt == DType::kFloat32) {
      const float* in = static_cast<const float*>(src) + base;
      for (int64_t c = 0; c < cols; ++c) dst[c * ld + r] = in[c];
    } else {
      for (int64_t c = 0; c < cols; ++c) dst[c * ld + r] = load_as_float(src, dt, base + c);
    }
  }
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = rows; r < ld; ++r) dst[c * ld + r] = 0.0f;
}

// dst[offset + c] = scale * src[c] for c < cols, rounded to dt.
inline void store_row(const float* src, int64_t cols, float scale, void* dst, DType dt, int64_t offset) {
  switch (dt) {
    case DType::kFloat32: {
      float* out = static_cast<float*>(dst) + offset;
      for (int64_t c = 0; c < cols; ++c) out[c] = scale * src[c];
      break;
    }
    case DType::kFloat16: {
      uint16_t* out = static_cast<uint16_t*>(dst) + offset;
      for (int64_t c = 0; c < cols; ++c) out[c] = float_to_fp16(scale * src[c]);
      break;
    }
    case DType::kBFloat16: {
      uint16_t* out = static_cast<uint16_t*>(dst) + offset;
      for (int64_t c = 0; c < cols; ++c) out[c] = float_to_bf16(scale * src[c]);
      break;
    }
  }
}

// Number of threads to use: p.num_threads, 0 = all, never more than the work items.
inline int pick_threads(int requested, int max_threads, int64_t work_items) {
  int64_t n = requested > 0 ? requested : max_threads;
  if (n > work_items) n = work_items;
  return n < 1 ? 1 : static_cast<int>(n);
}

}  // namespace cpu
}  // namespace flashattn
