// Element-wise steps of ring attention, shared by the CPU loops and the CUDA
// kernels (src/cuda/ring/ring_kernels.cu) so both do exactly the same math.
// Layouts: accumulators are contiguous fp32, acc_o [B, L, H, D] and
// acc_lse [B, H, L]; a partial result covers rows [row0, row0 + c) of the shard:
// part [B, c, H, D] (storage type T), part_lse [B, H, c] fp32.
#pragma once

#include <cstdint>

#include "flashattn/online_softmax.h"

namespace flashattn {
namespace ring {

struct ChunkShape {
  int64_t batch, local_len, chunk_len, row0, heads, dim;
  FLASHATTN_HD int64_t part_elems() const { return batch * chunk_len * heads * dim; }
  // Element e of a partial [B, c, H, D] -> its index in the full [B, L, H, D].
  FLASHATTN_HD int64_t full_index(int64_t e) const {
    const int64_t d = e % dim, h = (e / dim) % heads, i = (e / (dim * heads)) % chunk_len,
                  b = e / (dim * heads * chunk_len);
    return ((b * local_len + row0 + i) * heads + h) * dim + d;
  }
  // Element e of a partial -> index of its row's lse in [B, H, L] and in [B, H, c].
  FLASHATTN_HD int64_t full_lse_index(int64_t e) const {
    const int64_t h = (e / dim) % heads, i = (e / (dim * heads)) % chunk_len, b = e / (dim * heads * chunk_len);
    return (b * heads + h) * local_len + row0 + i;
  }
  FLASHATTN_HD int64_t part_lse_index(int64_t e) const {
    const int64_t h = (e / dim) % heads, i = (e / (dim * heads)) % chunk_len, b = e / (dim * heads * chunk_len);
    return (b * heads + h) * chunk_len + i;
  }
};

// Equation (4) with per-partial stats (lse, 1): the merged output is the
// softmax-weighted mix of the two partial outputs. Returns the new acc_o value.
FLASHATTN_HD float merge_output(float acc_o, float acc_lse, float part_o, float part_lse, float* new_lse) {
  const SoftmaxStats merged = merge(SoftmaxStats{acc_lse, 1.0f}, SoftmaxStats{part_lse, 1.0f});
  *new_lse = log_sum_exp(merged);
  if (merged.sum == 0.0f) return 0.0f;  // both partials empty: fully masked so far
  return (acc_o * rescale_factor(acc_lse, merged.max) + part_o * rescale_factor(part_lse, merged.max)) / merged.sum;
}

}  // namespace ring
}  // namespace flashattn
