// TMA tensor maps over [batch, seqlen, heads, dim] tensors for the Hopper
// rungs: the caller's real strides, 128B swizzle, boxes of 64 columns (128 B,
// the swizzle width) x box_rows rows; elements outside the tensor (rows past
// seqlen, columns past dim) are zero-filled by the copy.
#pragma once

#include <cuda.h>  // CUtensorMap (header only: the driver is reached via cudaGetDriverEntryPoint)

#include <cstdint>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn { namespace cuda { namespace sm90 {

// kUnsupported (with the reason) for strides TMA can't take (zero/broadcast,
// not a multiple of 16 bytes) or when the driver refuses the map.
Status make_tma_map(CUtensorMap* map, const char* name, const void* ptr, DType dtype, int64_t dim, int64_t seqlen,
                    int64_t heads, int64_t batch, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                    int box_rows);

}}}  // namespace flashattn::cuda::sm90
