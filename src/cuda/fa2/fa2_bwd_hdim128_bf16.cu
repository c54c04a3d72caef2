// FlashAttention-2 backward, head dim 128, bf16.
#include "cuda/fa2/fa2_bwd_kernel.cuh"

namespace flashattn {
namespace cuda {
namespace fa2bwd {
template Status launch<__nv_bfloat16, 128>(const KernelParams& p, cudaStream_t stream);
}  // namespace fa2bwd
}  // namespace cuda
}  // namespace flashattn
