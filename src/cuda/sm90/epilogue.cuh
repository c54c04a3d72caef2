// Epilogue of one consumer warpgroup: finish the row sums across the quad,
// normalize O, store it (bf16x2/half2 per thread, rows past seqlen_q and
// columns past head_dim dropped) and the LSE (natural log; -inf and O = 0 for
// a fully masked row).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/ptx.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

template <class Tr>
__device__ __forceinline__ void epilogue(const KernelParams& p, float (&o)[Tr::kHeadDim / 2], const float (&row_max)[2],
                                         float (&row_sum)[2], int64_t row0, int head, int b, int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  const int t = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + 8 * r;
    const float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
    if (row < p.seqlen_q) {
      uint8_t* base = static_cast<uint8_t*>(p.o) +
                      2 * (b * p.o_batch_stride + row * p.o_row_stride + head * p.o_head_stride);
#pragma unroll
      for (int j = 0; j < Tr::kHeadDim / 8; ++j) {
        const int col = 8 * j + 2 * t;
        if (col < p.head_dim) {
          const uint32_t v = pack2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv, Tr::kBF16);
          *reinterpret_cast<uint32_t*>(base + 2 * col) = v;
        }
      }
      if (p.lse != nullptr && t == 0) {
        const float lse = row_sum[r] > 0.0f ? row_max[r] * p.score_scale + logf(row_sum[r]) : -INFINITY;
        p.lse[(static_cast<int64_t>(b) * (p.sched.heads) + head) * p.seqlen_q + row] = lse;
      }
    }
  }
}

// The TMA-store epilogue (p.tma_store, head dims <= 128): O goes, normalized and
// rounded, into this warpgroup's 64 rows of the tile's Q buffer (free: the last
// S GEMM has completed) in the 128B-swizzled layout, then one thread stores it
// with cp.async.bulk.tensor (coalesced 128-byte lines; TMA clips rows past
// seqlen_q and columns past head_dim). The Q buffer is released only once the
// store has read it. LSE as above.
template <class Tr>
__device__ __forceinline__ void epilogue_tma(const KernelParams& p, const void* tm_o, uint8_t* qbuf, uint64_t* q_empty,
                                             float (&o)[Tr::kHeadDim / 2], const float (&row_max)[2],
                                             float (&row_sum)[2], int m_block, int wg, int warp_in_wg, int lane,
                                             int head, int b) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  const int t = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row_in_tile = wg * 64 + warp_in_wg * 16 + lane / 4 + 8 * r;
    const float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
    uint8_t* row_base = qbuf + row_in_tile * 128;
    const uint32_t swz = static_cast<uint32_t>(row_in_tile % 8) << 4;
#pragma unroll
    for (int j = 0; j < Tr::kHeadDim / 8; ++j) {
      const int col = 8 * j + 2 * t;
      const uint32_t v = pack2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv, Tr::kBF16);
      *reinterpret_cast<uint32_t*>(row_base + (col / 64) * Tr::kBlockM * 128 + ((((col % 64) * 2)) ^ swz)) = v;
    }
    const int64_t row = static_cast<int64_t>(m_block) * Tr::kBlockM + row_in_tile;
    if (p.lse != nullptr && t == 0 && row < p.seqlen_q) {
      const float lse = row_sum[r] > 0.0f ? row_max[r] * p.score_scale + logf(row_sum[r]) : -INFINITY;
      p.lse[(static_cast<int64_t>(b) * (p.sched.heads) + head) * p.seqlen_q + row] = lse;
    }
  }
  fence_proxy_async();            // generic-proxy writes -> visible to the TMA engine
  named_bar_sync(3 + wg, 128);    // the warpgroup's 64 rows are written
  if (warp_in_wg == 0 && lane == 0) {
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_store_4d(tm_o, qbuf + c * Tr::kBlockM * 128 + wg * 64 * 128, c * 64, m_block * Tr::kBlockM + wg * 64,
                   head, b);
    bulk_commit();
    bulk_wait_read();
  }
  __syncwarp();
  if (lane == 0) mbar_arrive(q_empty);
}

}}}  // namespace flashattn::cuda::sm90
