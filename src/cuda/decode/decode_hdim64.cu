// Decode kernels for head dim 64 (built when 64 is in FLASHATTN_HEADDIMS).
#include "cuda/decode/decode_launch.cuh"

namespace flashattn {
namespace cuda {
namespace decode {
template Status run_decode<64>(const FwdParams& p);
}  // namespace decode
}  // namespace cuda
}  // namespace flashattn
