// Persistent tile scheduler: grid = #SMs; CTA i starts with tile i and then
// takes the next unclaimed tile from a global counter when it is done (dynamic:
// causal tiles differ in length, and a fixed i, i + grid, ... order left some
// CTAs ~10 % more work than others), or i + grid, ... without a counter.
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

  __host__ __device__ int total() const { return num_m_blocks * heads * batch; }

  // The tile after `t` for this CTA, or -1 when all are claimed. Called by one
  // producer thread per CTA; the last CTA to run out resets the counters to 0.
  __device__ __forceinline__ int next(int t, int* counter) const {
    int n;
    if (counter == nullptr) {
      n = t + static_cast<int>(gridDim.x);
    } else {
      n = static_cast<int>(gridDim.x) + atomicAdd(&counter[0], 1);
    }
    if (n < total()) return n;
    if (counter != nullptr) {
      __threadfence();  // this CTA's claims precede its "finished" count
      if (atomicAdd(&counter[1], 1) == static_cast<int>(gridDim.x) - 1) {
        counter[0] = 0;  // every CTA has stopped claiming: leave the counters zeroed
        counter[1] = 0;
      }
    }
    return -1;
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
