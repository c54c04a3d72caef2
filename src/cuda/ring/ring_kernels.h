// CUDA helpers of ring attention (src/ring_attention.cpp), callable from C++.
#pragma once

#include <cstddef>

#include "common/ring_ops.h"
#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {
namespace cuda {

Status ring_alloc(void** ptr, size_t bytes);
void ring_free(void* ptr);
int ring_current_device();
// Frees a buffer of `device` (made current for the call, then restored).
void ring_free_on(int device, void* ptr);
Status ring_copy(void* dst, const void* src, size_t bytes, void* stream);
// Strided 2D copy: height rows of width bytes.
Status ring_copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t height,
                    void* stream);
Status ring_fill(void* ptr, float value, size_t count, void* stream);
Status ring_sync(void* stream);
// acc_o/acc_lse <- merge with one partial (see ring::merge_output). Rows of all heads of a
// (b, i) are merged by one thread group; lse is updated after its row's outputs.
Status ring_merge(float* acc_o, float* acc_lse, const void* part, const float* part_lse, DType dtype,
                  const ring::ChunkShape& shape, void* stream);
// acc[full rows] += part
Status ring_accumulate(float* acc, const void* part, DType dtype, const ring::ChunkShape& shape, void* stream);
// dst (contiguous, dtype) <- src (fp32)
Status ring_convert(void* dst, const float* src, DType dtype, size_t count, void* stream);

}  // namespace cuda
}  // namespace flashattn
