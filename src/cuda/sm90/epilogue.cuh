// Epilogue of one consumer warpgroup: finish the row sums across the quad,
// normalize O, store it (bf16x2/half2 per thread, rows past the sequence's end and
// columns past head_dim dropped) and the LSE (natural log; -inf and O = 0 for
// a fully masked row).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/ptx.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

template <class Tr>
__device__ __forceinline__ void epilogue(const KernelParams& p, const TileSeq& seq, float (&o)[Tr::kHeadDim / 2],
                                         const float (&row_max)[2], float (&row_sum)[2], int64_t row0, int head, int b,
                                         int lane) {
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
    if (row < seq.len_q) {
      // Packed (varlen) rows: o_batch_stride is 0 and q_row0 the sequence's first row.
      uint8_t* base = static_cast<uint8_t*>(p.o) + 2 * (b * p.o_batch_stride + (seq.q_row0 + row) * p.o_row_stride +
                                                        head * p.o_head_stride);
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

}}}  // namespace flashattn::cuda::sm90
