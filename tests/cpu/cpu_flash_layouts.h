// Non-contiguous layouts for the CPU FlashAttention tests: rebind a Problem's
// q/k/v/o (and dout/dq/dk/dv) to strided copies inside poisoned arenas.
//   kPackedQKV: q, k, v (and dq, dk, dv) are head slices of one [b, s, hq + 2 hkv, d]
//               buffer (needs seqlen_q == seqlen_k); o and dout head-major.
//   kHeadMajor: every tensor [b, h, s, d] (head stride s * d, row stride d), with a
//               gap of 8 poisoned elements between heads.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "test_util.h"

namespace flashattn {
namespace testing {

enum class Layout { kContiguous, kPackedQKV, kHeadMajor };

inline const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kContiguous: return "contiguous";
    case Layout::kPackedQKV: return "packed_qkv";
    case Layout::kHeadMajor: return "head_major";
  }
  return "?";
}

struct View {
  HostTensor* arena = nullptr;
  int64_t offset = 0, bs = 0, rs = 0, hs = 0;
  int64_t batch = 0, seqlen = 0, heads = 0, dim = 0;
  void* ptr() const { return static_cast<uint8_t*>(arena->data()) + offset * dtype_size(arena->dtype); }
  int64_t index(int64_t b, int64_t i, int64_t h, int64_t d) const { return offset + b * bs + i * rs + h * hs + d; }
  // Copy a contiguous [b, s, h, d] tensor into the view.
  void put(const HostTensor& src) const {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < seqlen; ++i)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t d = 0; d < dim; ++d)
            arena->set(index(b, i, h, d), src.get(((b * seqlen + i) * heads + h) * dim + d));
  }
  // The view as a contiguous [b, s, h, d] float vector.
  std::vector<float> get() const {
    std::vector<float> out(batch * seqlen * heads * dim);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < seqlen; ++i)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t d = 0; d < dim; ++d) out[((b * seqlen + i) * heads + h) * dim + d] = arena->get(index(b, i, h, d));
    return out;
  }
};

// Owns the arenas; after bind(), params point into them.
struct StridedProblem {
  HostTensor in_arena, out_arena, grad_arena, dout_arena;
  View q, k, v, o, dout, dq, dk, dv;

  // Head-major view [b, h, s, d] with a gap of `gap` elements after every head.
  static View head_major(HostTensor* arena, int64_t offset, int64_t batch, int64_t seqlen, int64_t heads,
                         int64_t dim, int64_t gap) {
    View w;
    w.arena = arena;
    w.offset = offset;
    w.batch = batch, w.seqlen = seqlen, w.heads = heads, w.dim = dim;
    w.rs = dim;
    w.hs = seqlen * dim + gap;
    w.bs = heads * w.hs;
    return w;
  }

  void bind(Problem& pb, Layout layout) {
    const Shape& s = pb.shape;
    const DType dt = s.dtype;
    const int64_t D = s.head_dim;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    auto make_arena = [&](HostTensor& a, int64_t n) {
      a = HostTensor(dt, n);
      a.fill(nan);
    };
    if (layout == Layout::kPackedQKV) {
      const int64_t H = s.heads_q + 2 * s.heads_kv, rs = H * D;
      make_arena(in_arena, s.batch * s.seqlen_q * rs);
      make_arena(grad_arena, s.batch * s.seqlen_q * rs);
      auto slice = [&](HostTensor* a, int64_t head0, int64_t heads) {
        View w;
        w.arena = a;
        w.offset = head0 * D;
        w.batch = s.batch, w.seqlen = s.seqlen_q, w.heads = heads, w.dim = D;
        w.rs = rs, w.hs = D, w.bs = s.seqlen_q * rs;
        return w;
      };
      q = slice(&in_arena, 0, s.heads_q);
      k = slice(&in_arena, s.heads_q, s.heads_kv);
      v = slice(&in_arena, s.heads_q + s.heads_kv, s.heads_kv);
      dq = slice(&grad_arena, 0, s.heads_q);
      dk = slice(&grad_arena, s.heads_q, s.heads_kv);
      dv = slice(&grad_arena, s.heads_q + s.heads_kv, s.heads_kv);
    } else {
      const int64_t gap = 8;
      const int64_t nq = s.batch * s.heads_q * (s.seqlen_q * D + gap);
      const int64_t nk = s.batch * s.heads_kv * (s.seqlen_k * D + gap);
      make_arena(in_arena, nq + 2 * nk);
      make_arena(grad_arena, nq + 2 * nk);
      q = head_major(&in_arena, 0, s.batch, s.seqlen_q, s.heads_q, D, gap);
      k = head_major(&in_arena, nq, s.batch, s.seqlen_k, s.heads_kv, D, gap);
      v = head_major(&in_arena, nq + nk, s.batch, s.seqlen_k, s.heads_kv, D, gap);
      dq = head_major(&grad_arena, 0, s.batch, s.seqlen_q, s.heads_q, D, gap);
      dk = head_major(&grad_arena, nq, s.batch, s.seqlen_k, s.heads_kv, D, gap);
      dv = head_major(&grad_arena, nq + nk, s.batch, s.seqlen_k, s.heads_kv, D, gap);
    }
    const int64_t no = s.batch * s.heads_q * (s.seqlen_q * D + 8);
    make_arena(out_arena, no);
    make_arena(dout_arena, no);
    o = head_major(&out_arena, 0, s.batch, s.seqlen_q, s.heads_q, D, 8);
    dout = head_major(&dout_arena, 0, s.batch, s.seqlen_q, s.heads_q, D, 8);
    q.put(pb.q);
    k.put(pb.k);
    v.put(pb.v);
    dout.put(pb.dout);

    BwdParams& p = pb.params;
    auto set = [](const View& w, int64_t& bs, int64_t& rs, int64_t& hs) {
      bs = w.bs;
      rs = w.rs;
      hs = w.hs;
    };
    p.q = q.ptr(), p.k = k.ptr(), p.v = v.ptr(), p.o = o.ptr(), p.dout = dout.ptr();
    p.dq = dq.ptr(), p.dk = dk.ptr(), p.dv = dv.ptr();
    set(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
    set(k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    set(v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    set(o, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
    set(dout, p.dout_batch_stride, p.dout_row_stride, p.dout_head_stride);
    set(dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
    set(dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
    set(dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  }

  // Every arena element outside the views is still poisoned (nothing wrote past its rows).
  static bool gaps_untouched(const HostTensor& arena, const std::vector<const View*>& views) {
    std::vector<char> inside(arena.numel, 0);
    for (const View* w : views)
      for (int64_t b = 0; b < w->batch; ++b)
        for (int64_t i = 0; i < w->seqlen; ++i)
          for (int64_t h = 0; h < w->heads; ++h)
            for (int64_t d = 0; d < w->dim; ++d) inside[w->index(b, i, h, d)] = 1;
    for (int64_t e = 0; e < arena.numel; ++e)
      if (!inside[e] && !std::isnan(arena.get(e))) return false;
    return true;
  }
};

}  // namespace testing
}  // namespace flashattn
