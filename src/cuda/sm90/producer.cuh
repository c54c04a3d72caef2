// The load pipeline (producer warp): one thread issues every TMA copy.
// Q once per tile (after the consumers released the previous Q), then K and V of
// each visited KV block into a ring of kStages buffers guarded by full/empty
// mbarriers. The copies' byte counts complete the full barriers (expect_tx).
#pragma once

#include "cuda/sm90/block_mask.cuh"
#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/ptx.cuh"
#include "cuda/sm90/traits.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

template <class Tr>
__device__ __forceinline__ void producer_loop(SharedStorage<Tr>& s, const KernelParams& p, const void* tm_q,
                                              const void* tm_k, const void* tm_v) {
  const BlockMask<Tr::kBlockM, Tr::kBlockN> bm{p.mask};
  int stage = 0;
  uint32_t phase = 0;
  uint32_t tile_iter = 0;
  for (int t = blockIdx.x; t < p.sched.total(); t += gridDim.x, ++tile_iter) {
    int m_block, head, b;
    p.sched.decode(t, m_block, head, b);
    int n_begin, n_end;
    bm.range(m_block, &n_begin, &n_end);
    const int head_kv = head / p.group;
    // Q of this tile (always loaded, so the q barriers advance once per tile).
    mbar_wait(&s.q_empty, (tile_iter & 1) ^ 1);
    mbar_arrive_expect_tx(&s.q_full, Tr::kQBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.q + c * Tr::kBlockM * 128, tm_q, &s.q_full, c * 64, m_block * Tr::kBlockM, head, b);
    for (int n = n_begin; n < n_end; ++n) {
      mbar_wait(&s.kv_empty[stage], phase ^ 1);
      mbar_arrive_expect_tx(&s.k_full[stage], Tr::kKBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(s.k[stage] + c * Tr::kBlockN * 128, tm_k, &s.k_full[stage], c * 64, n * Tr::kBlockN, head_kv, b);
      mbar_arrive_expect_tx(&s.v_full[stage], Tr::kVBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(s.v[stage] + c * Tr::kBlockN * 128, tm_v, &s.v_full[stage], c * 64, n * Tr::kBlockN, head_kv, b);
      if (++stage == Tr::kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  }
}

}}}  // namespace flashattn::cuda::sm90
