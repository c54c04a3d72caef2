// Tile order of the persistent Hopper forward: grid = #SMs, CTA i starts with
// tile i and then claims the next unclaimed tile from a global counter (a
// dynamic schedule, see producer.cuh; the `static_sched` experiment runs the
// round robin i, i + grid, ... instead). TileWalk (kernel_params.cuh) turns a
// tile index into coordinates; varlen batches number their live tiles there.
// A tile is (m_block, head, batch) of BM query rows.
//   Non-causal: m_block fastest, so the CTAs running at the same time share the
//   K/V of one or two heads (and of one KV group under GQA): K/V stay in L2.
//   Causal (right window): longest tiles first (m_block descending), in groups of
//   `l2_heads` (batch, head) pairs whose K/V fit in about half the L2: all the
//   group's m_blocks, longest first, heads fastest, then the next group. So the
//   CTAs running at once read the K/V of a few heads. The short group (when
//   l2_heads does not divide heads * batch) comes FIRST: the long tiles of the
//   last group must start early enough for the rest of the grid to finish with
//   them (with a short last group, its longest tiles started near the end and
//   set the launch's length). (With one group, l2_heads = heads * batch, this is
//   the plain longest-first order; the FA3 paper's scheduler swizzles its LPT
//   order the same way.)
// Why dynamic: a fixed round robin over this order hands each CTA a sawtooth of
// lengths; simulated for N = 8k, d128, causal (scripts/tile_balance.py) the
// busiest CTA has 1.25x the mean work (1.20x with the short group last; the
// launch ends with it), while greedy claiming in the order above gives 1.00x.
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
      const int short_size = bh_count % l2_heads;  // the short group, first (0: none)
      int group_first, group_size, r;
      if (t < short_size * num_m_blocks) {
        group_first = 0, group_size = short_size, r = t;
      } else {
        const int u = t - short_size * num_m_blocks;
        const int group = u / (l2_heads * num_m_blocks);
        group_first = short_size + group * l2_heads, group_size = l2_heads;
        r = u - group * l2_heads * num_m_blocks;
      }
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
