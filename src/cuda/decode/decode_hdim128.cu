// Decode kernels for head dim 128 (built when 128 is in FLASHATTN_HEADDIMS).
#include "cuda/decode/decode_launch.cuh"

namespace flashattn {
namespace cuda {
namespace decode {
template Status run_decode<128>(const FwdParams& p);
}  // namespace decode
}  // namespace cuda
}  // namespace flashattn
