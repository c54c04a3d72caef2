// Row softmax on the GPU: the internal launcher behind cuda::softmax_forward,
// also used by the naive attention rung (which wants the row LSE as well).
// Kernels in softmax.cu; the math is docs/01-online-softmax.md.
#pragma once

#include <cuda_runtime.h>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {
namespace cuda {

// Which kernel rows that do not fit one block take. kAuto is what softmax() does:
// single pass where a row's chunks can all be co-resident, two pass otherwise.
// A pinned path is used for EVERY row length (tests reach it with small shapes,
// the bench compares the two); a pinned kSinglePass that cannot run returns Unsupported.
enum class LongRowPath { kAuto, kSinglePass, kTwoPass };

// Softmax of every row of p.x into p.y on `stream` (p.device/p.stream ignored).
// lse (optional, fp32, one per row, contiguous) receives m + log(l) of each row;
// a row of only -inf gets y = 0 and lse = -inf (the fully masked attention row).
Status launch_softmax_rows(const SoftmaxParams& p, float* lse, cudaStream_t stream,
                           LongRowPath path = LongRowPath::kAuto);

}  // namespace cuda
}  // namespace flashattn
