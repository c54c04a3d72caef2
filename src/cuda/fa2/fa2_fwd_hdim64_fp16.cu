// FlashAttention-2 forward, head dim 64, fp16 (masked and unmasked variants).
#include "cuda/fa2/fa2_fwd_launch.cuh"

namespace flashattn {
namespace cuda {
template Status run_fa2_fwd<64, __half>(const Fa2FwdArgs& args, cudaStream_t stream);
}  // namespace cuda
}  // namespace flashattn
