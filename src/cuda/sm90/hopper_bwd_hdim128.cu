// Hopper backward instantiations for head dims up to 128 (fp16 and bf16).
#include "cuda/sm90/bwd_kernel.cuh"

namespace flashattn { namespace cuda { namespace sm90 { namespace bwd {
template Status launch_hopper_bwd<128, false>(const LaunchArgs&);
template Status launch_hopper_bwd<128, true>(const LaunchArgs&);
}}}}  // namespace flashattn::cuda::sm90::bwd
