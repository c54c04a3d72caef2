// The online-softmax statistics and their merge: the one formula every kernel
// in flashattn uses (CPU, CUDA rungs, split-KV combine, ring attention).
// See docs/01-online-softmax.md, equations (3)-(4).
//
// For a block of scores x_1..x_n keep m = max_i x_i and l = sum_i exp(x_i - m).
// Two blocks (m0, l0) and (m1, l1) merge exactly into
//     m = max(m0, m1),   l = l0 * exp(m0 - m) + l1 * exp(m1 - m).          (4)
// An empty / fully masked block is (-inf, 0); merging with it is the identity,
// and the -inf - (-inf) case is guarded so it never produces NaN.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FLASHATTN_HD __host__ __device__ __forceinline__
#else
#define FLASHATTN_HD inline
#endif

namespace flashattn {

struct SoftmaxStats {
  float max = -INFINITY;  // running row max m
  float sum = 0.0f;       // running sum of exp(x - m)
};

// exp(a - b) for b the merged max: returns 0 when a is -inf (empty block).
FLASHATTN_HD float rescale_factor(float block_max, float merged_max) {
  return block_max == -INFINITY ? 0.0f : expf(block_max - merged_max);
}

// Equation (4): merge two partial statistics.
FLASHATTN_HD SoftmaxStats merge(SoftmaxStats a, SoftmaxStats b) {
  SoftmaxStats out;
  out.max = fmaxf(a.max, b.max);
  out.sum = a.sum * rescale_factor(a.max, out.max) + b.sum * rescale_factor(b.max, out.max);
  return out;
}

// Equation (3): fold one more element x into the running statistics.
FLASHATTN_HD SoftmaxStats update(SoftmaxStats s, float x) {
  SoftmaxStats out;
  out.max = fmaxf(s.max, x);
  out.sum = s.sum * rescale_factor(s.max, out.max) + rescale_factor(x, out.max);
  return out;
}

// log-sum-exp of everything folded in: m + log(l); -inf for an empty row.
FLASHATTN_HD float log_sum_exp(SoftmaxStats s) {
  return s.sum == 0.0f ? -INFINITY : s.max + logf(s.sum);
}

}  // namespace flashattn
