// Hopper backward instantiations for head dims up to 64, bf16 (every variant
// of launch_hopper_bwd's flag switch; one file per dtype so they build in parallel).
#include "cuda/sm90/bwd_kernel.cuh"

namespace flashattn { namespace cuda { namespace sm90 { namespace bwd {
template Status launch_hopper_bwd<64, true>(const LaunchArgs&);
}}}}  // namespace flashattn::cuda::sm90::bwd
