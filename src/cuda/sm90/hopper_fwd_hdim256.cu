// Hopper forward instantiations for head dims up to 256 (fp16 and bf16).
#include "cuda/sm90/kernel.cuh"

namespace flashattn { namespace cuda { namespace sm90 {
template Status launch_hopper_fwd<256, false>(const LaunchArgs&);
template Status launch_hopper_fwd<256, true>(const LaunchArgs&);
}}}  // namespace flashattn::cuda::sm90
