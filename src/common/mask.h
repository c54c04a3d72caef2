// Which keys a query row may see: the causal / sliding-window mask, aligned to
// the bottom-right corner when seqlen_q != seqlen_k (flash-attn >= 2.1).
// docs/00-attention.md, equation (2). Shared by every CPU and CUDA kernel.
#pragma once

#include <cstdint>

#include "flashattn/online_softmax.h"  // FLASHATTN_HD
#include "flashattn/params.h"

namespace flashattn {

struct Mask {
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;
  int64_t window_left = -1;   // -1 = unbounded
  int64_t window_right = -1;  // -1 = unbounded; causal is window_right = 0

  // First key query row i may see (inclusive). May exceed seqlen_k - 1.
  FLASHATTN_HD int64_t key_begin(int64_t i) const {
    if (window_left < 0) return 0;
    const int64_t b = i + seqlen_k - seqlen_q - window_left;
    return b < 0 ? 0 : b;
  }
  // One past the last key query row i may see. May be <= key_begin (row fully masked).
  FLASHATTN_HD int64_t key_end(int64_t i) const {
    if (window_right < 0) return seqlen_k;
    const int64_t e = i + seqlen_k - seqlen_q + window_right + 1;
    return e > seqlen_k ? seqlen_k : e;
  }
  FLASHATTN_HD bool visible(int64_t i, int64_t j) const { return j >= key_begin(i) && j < key_end(i); }
  FLASHATTN_HD bool has_mask() const { return window_left >= 0 || window_right >= 0; }
};

// The mask a params struct asks for (causal folded into window_right = 0).
inline Mask make_mask(const FwdParams& p) {
  Mask m;
  m.seqlen_q = p.seqlen_q;
  m.seqlen_k = p.seqlen_k;
  m.window_left = p.window_left;
  m.window_right = p.causal ? 0 : p.window_right;
  if (p.causal && p.window_right > 0) m.window_right = 0;
  return m;
}

// 1/sqrt(head_dim) unless the caller set a scale.
inline float effective_scale(const FwdParams& p) {
  return p.softmax_scale != 0.0f ? p.softmax_scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));
}

inline int64_t effective_head_dim_v(const FwdParams& p) { return p.head_dim_v ? p.head_dim_v : p.head_dim; }

}  // namespace flashattn
