// decode_forward: what the split-KV decode kernels accept (docs/07-inference.md),
// then the head-dim switch. The kernels themselves are in decode_kernel.cuh.
#include <string>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/decode/decode_kernel.cuh"

namespace flashattn {
namespace cuda {
namespace decode {
template <int D> Status run_decode(const FwdParams& p);

}  // namespace decode

Status decode_forward(const FwdParams& p) {
  if (p.dtype == DType::kFloat32)
    return Status::Unsupported("the CUDA decode kernel (KV cache / varlen / split-KV) runs on float16 and bfloat16 "
                               "only (tensor cores); float32 KV-cache attention is supported on the CPU");
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t rows = group * p.seqlen_q;
  if (rows > decode::kTileRows * decode::kMaxRowTiles)
    return Status::Unsupported("the CUDA decode kernel packs (heads_q / heads_kv) x seqlen_q = " +
                               std::to_string(rows) + " query rows per kv head; it handles at most " +
                               std::to_string(decode::kTileRows * decode::kMaxRowTiles) +
                               " (decode / small chunked prefill). Longer varlen prefill goes to FA2 (no paged cache) — a paged one has no CUDA "
                               "kernel yet (run it on the CPU, or densely)");
  if (p.batch > 65535 || p.heads_kv * ((rows + decode::kTileRows - 1) / decode::kTileRows) > 65535)
    return Status::Unsupported("the CUDA decode kernel needs batch <= 65535 and heads_kv * row tiles <= 65535");
  switch (p.head_dim) {
#if FLASHATTN_HAS_HDIM_64
    case 64: return decode::run_decode<64>(p);
#endif
#if FLASHATTN_HAS_HDIM_128
    case 128: return decode::run_decode<128>(p);
#endif
    default: break;
  }
  return Status::Unsupported("the CUDA decode kernel is built for head dims 64 and 128 (those in "
                             "FLASHATTN_HEADDIMS); head_dim " + std::to_string(p.head_dim) + " is not compiled");
}

}  // namespace cuda
}  // namespace flashattn
