// Host launcher of the FlashAttention-2 forward for one (head dim, dtype):
// picks the tile from fa2_fwd_tile and the masked / unmasked kernel variant.
// Included only by the per-instantiation files fa2_fwd_hdimNNN_<dtype>.cu.
#pragma once

#include <string>

#include "cuda/cuda_utils.cuh"
#include "cuda/fa2/fa2_fwd.h"
#include "cuda/fa2/fa2_fwd_kernel.cuh"

namespace flashattn {
namespace cuda {

namespace fa2 {
template <class Tr, bool kIsLocal, bool kHasSoftcap>
auto fwd_kernel_for(bool varlen) {
  return varlen ? fwd_kernel<Tr, kIsLocal, kHasSoftcap, true> : fwd_kernel<Tr, kIsLocal, kHasSoftcap, false>;
}
}  // namespace fa2

template <int kHeadDim, typename Element>
Status run_fa2_fwd(const Fa2FwdArgs& args, cudaStream_t stream) {
  constexpr Fa2FwdTile kTile = fa2_fwd_tile(kHeadDim);
  using Tr = fa2::FwdTraits<kHeadDim, kTile.block_m, kTile.block_n, kTile.warps, Element, kTile.min_blocks>;
  // Causal and sliding-window masks change the loop bounds and the per-block
  // mask test; without them only the seqlen_k tail block is masked. Softcap is
  // a template flag too: as a runtime branch it pushed hdim 128 into spills. So is
  // varlen (cu_seqlens / seqused_k), for the same reason.
  const bool local = args.window_left >= 0 || args.window_right >= 0;
  const bool softcap = args.softcap_pre != 0.0f;
  const bool varlen = args.cu_seqlens_q || args.cu_seqlens_k || args.seqused_k;
  auto kernel = local ? (softcap ? fa2::fwd_kernel_for<Tr, true, true>(varlen) : fa2::fwd_kernel_for<Tr, true, false>(varlen))
                      : (softcap ? fa2::fwd_kernel_for<Tr, false, true>(varlen)
                                 : fa2::fwd_kernel_for<Tr, false, false>(varlen));
  int device = 0, smem_optin = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (smem_optin < Tr::kSmemBytes)  // e.g. head dim 192/256 (~100 KB) on sm_86/sm_89 (99 KB)
    return Status::Unsupported("fa2 forward head dim " + std::to_string(kHeadDim) + " needs " +
                               std::to_string(Tr::kSmemBytes) + " bytes of shared memory per block; this GPU has " +
                               std::to_string(smem_optin));
  FA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  const dim3 grid((args.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM, args.heads_q, args.batch);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(args);
  FA_CUDA_CHECK_LAUNCH("fa2_forward");
  return Status::Ok();
}

}  // namespace cuda
}  // namespace flashattn
