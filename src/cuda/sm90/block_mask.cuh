// Which KV blocks a query tile visits, and which of them need the per-element
// mask (common/mask.h semantics: bottom-right aligned causal / sliding window,
// plus the seqlen_k tail). Blocks wholly outside the mask are never loaded.
#pragma once

#include <cstdint>

#include "common/mask.h"

namespace flashattn { namespace cuda { namespace sm90 {

template <int kBlockM, int kBlockN>
struct BlockMask {
  Mask mask;

  // KV blocks [*begin, *end) of query tile m_block; empty when end <= begin.
  __device__ __forceinline__ void range(int m_block, int* begin, int* end) const {
    const int64_t r0 = static_cast<int64_t>(m_block) * kBlockM;
    int64_t r1 = r0 + kBlockM - 1;
    if (r1 > mask.seqlen_q - 1) r1 = mask.seqlen_q - 1;
    const int64_t kb = mask.key_begin(r0);  // both monotone in the row
    const int64_t ke = mask.key_end(r1);
    if (ke <= kb) {
      *begin = *end = 0;
      return;
    }
    *begin = static_cast<int>(kb / kBlockN);
    *end = static_cast<int>((ke + kBlockN - 1) / kBlockN);
  }

  // True when some (row, key) of the tile x block is invisible (or past seqlen_k),
  // i.e. the block must be masked element by element. Rows past seqlen_q count
  // as rows (conservative: they are never stored).
  __device__ __forceinline__ bool partial(int m_block, int n_block) const {
    const int64_t c0 = static_cast<int64_t>(n_block) * kBlockN;
    const int64_t c1 = c0 + kBlockN;
    if (c1 > mask.seqlen_k) return true;
    if (!mask.has_mask()) return false;
    const int64_t r0 = static_cast<int64_t>(m_block) * kBlockM;
    const int64_t r1 = r0 + kBlockM - 1;
    return !(mask.key_begin(r1) <= c0 && mask.key_end(r0) >= c1);
  }

  __device__ __forceinline__ bool visible(int64_t row, int64_t col) const {
    return col < mask.seqlen_k && mask.visible(row, col);
  }
};

}}}  // namespace flashattn::cuda::sm90
