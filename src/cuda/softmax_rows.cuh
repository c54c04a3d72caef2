// Row softmax on the GPU: the internal launcher behind cuda::softmax_forward,
// also used by the naive attention rung (which wants the row LSE as well).
// Kernels in softmax.cu; the math is docs/01-online-softmax.md.
#pragma once

#include <cuda_runtime.h>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {
namespace cuda {

// Softmax of every row of p.x into p.y on `stream` (p.device/p.stream ignored).
// lse (optional, fp32, one per row, contiguous) receives m + log(l) of each row;
// a row of only -inf gets y = 0 and lse = -inf (the fully masked attention row).
Status launch_softmax_rows(const SoftmaxParams& p, float* lse, cudaStream_t stream);

}  // namespace cuda
}  // namespace flashattn
