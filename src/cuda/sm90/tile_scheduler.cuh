// Persistent tile scheduler: grid = #SMs, CTA i runs tiles i, i + grid, ...
// (TileWalk in kernel_params.cuh; varlen batches number their live tiles there
// instead). A tile is (m_block, head, batch) of BM query rows.
// (A dynamic scheduler -- a global atomic tile counter, the index handed from
// the producer to the consumers through shared memory -- was tried; racecheck
// cannot see the mbarrier ordering of that handoff, and its benefit was never
// measured apart from other changes, so the static order stays.)
//   Non-causal: m_block fastest, so the CTAs running at the same time share the
//   K/V of one or two heads (and of one KV group under GQA): K/V stay in L2.
//   Causal (right window): longest tiles first (m_block descending), heads of one
//   batch adjacent, so the short tiles at the end fill the tail of the grid.
#pragma once

#include <cstdint>

namespace flashattn { namespace cuda { namespace sm90 {

struct TileScheduler {
  int num_m_blocks = 0;
  int heads = 0;
  int batch = 0;
  bool longest_first = false;

  __host__ __device__ int total() const { return num_m_blocks * heads * batch; }

  __device__ __forceinline__ void decode(int t, int& m_block, int& head, int& b) const {
    int bh;
    if (longest_first) {
      const int bh_count = heads * batch;
      bh = t % bh_count;
      m_block = num_m_blocks - 1 - t / bh_count;
    } else {
      m_block = t % num_m_blocks;
      bh = t / num_m_blocks;
    }
    head = bh % heads;
    b = bh / heads;
  }
};

}}}  // namespace flashattn::cuda::sm90
