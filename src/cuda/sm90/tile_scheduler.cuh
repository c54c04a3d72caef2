// Persistent tile scheduler: grid = #SMs, CTA i runs one tile per round (see next()).
// A tile is (m_block, head, batch) of 128 query rows.
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
  bool snake = true;

  __host__ __device__ int total() const { return num_m_blocks * heads * batch; }

  // Round r of the grid runs tiles [r * grid, (r + 1) * grid), CTA i taking
  // tile i in even rounds and grid - 1 - i in odd ones ("snake"): with tiles
  // sorted longest first, no CTA gets the longest tile of every round.
  __device__ __forceinline__ int first() const { return blockIdx.x; }
  __device__ __forceinline__ int next(int t) const {
    const int g = gridDim.x;
    if (!snake) return t + g;
    const int r = t / g + 1;
    return r * g + ((r & 1) ? g - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x));
  }

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
