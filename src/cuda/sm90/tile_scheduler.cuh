// Persistent tile scheduler: grid = #SMs, CTA i runs tiles i, i + grid, ...
// (TileWalk in kernel_params.cuh; varlen batches number their live tiles there
// instead). A tile is (m_block, head, batch) of BM query rows.
// (A dynamic scheduler -- a global atomic tile counter, the index handed from
// the producer to the consumers through shared memory -- was tried; racecheck
// cannot see the mbarrier ordering of that handoff, and its benefit was never
// measured apart from other changes, so the static order stays.)
//   Non-causal: m_block fastest, so the CTAs running at the same time share the
//   K/V of one or two heads (and of one KV group under GQA): K/V stay in L2.
//   Causal (right window): longest tiles first (m_block descending), in groups of
//   `l2_heads` (batch, head) pairs whose K/V fit in about half the L2: all the
//   group's m_blocks, longest first, heads fastest, then the next group. So the
//   CTAs running at once read the K/V of a few heads, and the short tiles at the
//   end of the last group fill the tail of the grid. (With one group, l2_heads =
//   heads * batch, this is the plain longest-first order; the FA3 paper's
//   scheduler swizzles its LPT order the same way.)
#pragma once

#include <cstdint>

namespace flashattn { namespace cuda { namespace sm90 {

struct TileScheduler {
  int num_m_blocks = 0;
  int heads = 0;
  int batch = 0;
  bool longest_first = false;
  int l2_heads = 1;  // longest_first: (batch, head) pairs per L2 group (>= 1)

  __host__ __device__ int total() const { return num_m_blocks * heads * batch; }

  __device__ __forceinline__ void decode(int t, int& m_block, int& head, int& b) const {
    int bh;
    if (longest_first) {
      const int bh_count = heads * batch;
      const int group_tiles = l2_heads * num_m_blocks;
      const int group = t / group_tiles;
      const int group_first = group * l2_heads;
      const int group_size = min(l2_heads, bh_count - group_first);  // the last group may be short
      const int r = t - group * group_tiles;
      bh = group_first + r % group_size;
      m_block = num_m_blocks - 1 - r / group_size;
    } else {
      m_block = t % num_m_blocks;
      bh = t / num_m_blocks;
    }
    head = bh % heads;
    b = bh / heads;
  }
};

}}}  // namespace flashattn::cuda::sm90
