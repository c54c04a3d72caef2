// The oracle: naive 3-pass attention in double (docs/00-attention.md).
//   S = softcap(scale * Q K^T), masked          (1), (2)
//   P = softmax(S) row-wise, LSE = log sum exp S (safe two-pass softmax)
//   O = P V
// Backward (docs/05-backward.md):
//   dV = P^T dO,  dP = dO V^T,  D = rowsum(dO o O),  dS = P o (dP - D),
//   dS_raw = dS * (1 - tanh^2) when soft-capped,  dQ = scale * dS_raw K,  dK = scale * dS_raw^T Q.
// Slow on purpose: every test, CPU or GPU, compares against this.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "common/mask.h"
#include "cpu/cpu_backend.h"

namespace flashattn {
namespace cpu {
namespace {

// Where the rows of each sequence live. Dense: sequence b is batch entry b.
// Varlen (cu_seqlens_q/k): rows are packed, sequence b starts at cu_seqlens[b].
// Paged (block_table): key j of sequence b is row j % page_size of page
// block_table[b * stride + j / page_size]. seqused_k shortens the key range.
// Every accessor below goes through these, so one code path serves all layouts
// (the "logical" key row is also where dK/dV land in the backward).
struct Layout {
  const FwdParams& p;
  explicit Layout(const FwdParams& params) : p(params) {}
  int64_t len_q(int64_t b) const {
    return p.cu_seqlens_q ? p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] : p.seqlen_q;
  }
  int64_t len_k(int64_t b) const {
    if (p.seqused_k) return p.seqused_k[b];
    if (p.cu_seqlens_k) return p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    return p.seqlen_k;
  }
  // Packed row index of query row i of sequence b (in [batch * seqlen_q] or [total_q]).
  int64_t q_row(int64_t b, int64_t i) const { return p.cu_seqlens_q ? p.cu_seqlens_q[b] + i : b * p.seqlen_q + i; }
  int64_t q_off(int64_t b, int64_t i, int64_t stride_b, int64_t stride_r) const {
    return p.cu_seqlens_q ? (p.cu_seqlens_q[b] + i) * stride_r : b * stride_b + i * stride_r;
  }
  // Logical key row: page * page_size + slot (paged), cu_seqlens_k[b] + j (varlen), b * seqlen_k + j (dense).
  int64_t k_row(int64_t b, int64_t j) const {
    if (p.block_table)
      return static_cast<int64_t>(p.block_table[b * p.block_table_batch_stride + j / p.page_size]) * p.page_size +
             j % p.page_size;
    return p.cu_seqlens_k ? p.cu_seqlens_k[b] + j : b * p.seqlen_k + j;
  }
  int64_t k_off(int64_t b, int64_t j, int64_t stride_b, int64_t stride_r) const {
    if (p.block_table) {
      const int64_t page = p.block_table[b * p.block_table_batch_stride + j / p.page_size];
      return page * stride_b + (j % p.page_size) * stride_r;
    }
    return p.cu_seqlens_k ? (p.cu_seqlens_k[b] + j) * stride_r : b * stride_b + j * stride_r;
  }
  // Number of logical key rows (size of dK/dV in the backward).
  int64_t total_k_rows() const {
    if (p.block_table) return p.num_pages * p.page_size;
    return p.cu_seqlens_k ? p.cu_seqlens_k[p.batch] : p.batch * p.seqlen_k;
  }
  int64_t total_q_rows() const { return p.cu_seqlens_q ? p.cu_seqlens_q[p.batch] : p.batch * p.seqlen_q; }
  // The mask of sequence b: bottom-right aligned to its own lengths.
  Mask mask(int64_t b) const {
    Mask m = make_mask(p);
    m.seqlen_q = len_q(b);
    m.seqlen_k = len_k(b);
    return m;
  }
};

struct Ref {
  const FwdParams& p;
  Layout lay;
  double scale;
  double softcap;
  int64_t dv;
  int64_t group;  // query heads per kv head

  explicit Ref(const FwdParams& params)
      : p(params),
        lay(params),
        scale(effective_scale(params)),
        softcap(params.softcap),
        dv(effective_head_dim_v(params)),
        group(params.heads_q / params.heads_kv) {}

  double q(int64_t b, int64_t i, int64_t h, int64_t d) const {
    return load_as_float(p.q, p.dtype, lay.q_off(b, i, p.q_batch_stride, p.q_row_stride) + h * p.q_head_stride + d);
  }
  double k(int64_t b, int64_t j, int64_t h, int64_t d) const {
    return load_as_float(p.k, p.dtype, lay.k_off(b, j, p.k_batch_stride, p.k_row_stride) + h * p.k_head_stride + d);
  }
  double v(int64_t b, int64_t j, int64_t h, int64_t d) const {
    return load_as_float(p.v, p.dtype, lay.k_off(b, j, p.v_batch_stride, p.v_row_stride) + h * p.v_head_stride + d);
  }

  // Row i of the scores of (b, h): S[j] for visible j < len_k(b), -inf for masked ones. Also returns
  // the raw tanh argument product needed by the softcap derivative.
  void scores(int64_t b, int64_t h, int64_t i, std::vector<double>& s, std::vector<double>& tanh_val) const {
    const int64_t hk = h / group;
    const int64_t nk = lay.len_k(b);
    const Mask mask = lay.mask(b);
    s.assign(nk, -std::numeric_limits<double>::infinity());
    tanh_val.assign(nk, 0.0);
    for (int64_t j = 0; j < nk; ++j) {
      if (!mask.visible(i, j)) continue;
      double dot = 0.0;
      for (int64_t d = 0; d < p.head_dim; ++d) dot += q(b, i, h, d) * k(b, j, hk, d);
      double x = dot * scale;
      if (softcap > 0.0) {
        tanh_val[j] = std::tanh(x / softcap);
        x = softcap * tanh_val[j];
      }
      s[j] = x;
    }
  }

  // Safe softmax of one row in place; returns its LSE (-inf when fully masked, P = 0 then).
  static double softmax_row(std::vector<double>& s) {
    double row_max = -std::numeric_limits<double>::infinity();
    for (double x : s) row_max = std::max(row_max, x);
    if (row_max == -std::numeric_limits<double>::infinity()) {
      for (double& x : s) x = 0.0;
      return row_max;
    }
    double row_sum = 0.0;
    for (double& x : s) {
      x = std::exp(x - row_max);
      row_sum += x;
    }
    for (double& x : s) x /= row_sum;
    return row_max + std::log(row_sum);
  }
};

}  // namespace

RefForward reference_forward_f64(const FwdParams& p) {
  Ref r(p);
  const Layout& lay = r.lay;
  RefForward out;
  // Rows past a sequence's end keep O = 0 and LSE = -inf.
  out.out.assign(lay.total_q_rows() * p.heads_q * r.dv, 0.0);
  out.lse.assign(p.batch * p.heads_q * p.seqlen_q, -std::numeric_limits<double>::infinity());
  std::vector<double> s, t;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < lay.len_q(b); ++i) {
        r.scores(b, h, i, s, t);
        out.lse[(b * p.heads_q + h) * p.seqlen_q + i] = Ref::softmax_row(s);
        double* o_row = &out.out[(lay.q_row(b, i) * p.heads_q + h) * r.dv];
        for (size_t j = 0; j < s.size(); ++j) {
          if (s[j] == 0.0) continue;
          for (int64_t d = 0; d < r.dv; ++d) o_row[d] += s[j] * r.v(b, static_cast<int64_t>(j), h / r.group, d);
        }
      }
  return out;
}

RefBackward reference_backward_f64(const BwdParams& p) {
  Ref r(p);
  const Layout& lay = r.lay;
  RefBackward g;
  const int64_t D = p.head_dim;
  g.dq.assign(lay.total_q_rows() * p.heads_q * D, 0.0);
  g.dk.assign(lay.total_k_rows() * p.heads_kv * D, 0.0);
  g.dv.assign(lay.total_k_rows() * p.heads_kv * r.dv, 0.0);
  std::vector<double> prob, t, dprob;
  std::vector<double> o_row(r.dv);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t hk = h / r.group;
      for (int64_t i = 0; i < lay.len_q(b); ++i) {
        r.scores(b, h, i, prob, t);
        Ref::softmax_row(prob);
        const int64_t nk = static_cast<int64_t>(prob.size());
        const int64_t dout_base = lay.q_off(b, i, p.dout_batch_stride, p.dout_row_stride) + h * p.dout_head_stride;
        auto dout = [&](int64_t d) { return static_cast<double>(load_as_float(p.dout, p.dtype, dout_base + d)); };
        // O row recomputed in double, then D = rowsum(dO o O).
        std::fill(o_row.begin(), o_row.end(), 0.0);
        for (int64_t j = 0; j < nk; ++j)
          if (prob[j] != 0.0)
            for (int64_t d = 0; d < r.dv; ++d) o_row[d] += prob[j] * r.v(b, j, hk, d);
        double delta = 0.0;
        for (int64_t d = 0; d < r.dv; ++d) delta += dout(d) * o_row[d];
        const int64_t qr = lay.q_row(b, i);
        for (int64_t j = 0; j < nk; ++j) {
          if (prob[j] == 0.0) continue;
          const int64_t kr = lay.k_row(b, j);
          double dp = 0.0;
          for (int64_t d = 0; d < r.dv; ++d) {
            const double dod = dout(d);
            dp += dod * r.v(b, j, hk, d);
            g.dv[(kr * p.heads_kv + hk) * r.dv + d] += prob[j] * dod;
          }
          double ds = prob[j] * (dp - delta);
          if (r.softcap > 0.0) ds *= 1.0 - t[j] * t[j];
          ds *= r.scale;
          for (int64_t d = 0; d < D; ++d) {
            g.dq[(qr * p.heads_q + h) * D + d] += ds * r.k(b, j, hk, d);
            g.dk[(kr * p.heads_kv + hk) * D + d] += ds * r.q(b, i, h, d);
          }
        }
      }
    }
  return g;
}

namespace {
// Write a contiguous double [rows, heads, dim] tensor into a strided typed one.
// Dense tensors are rows = batch * seqlen (batch entry b = rows b*seqlen ..);
// packed varlen tensors and page pools address rows by row stride (or page stride).
void store_rows(const std::vector<double>& src, void* dst, DType dt, int64_t rows, int64_t rows_per_batch,
                int64_t heads, int64_t dim, int64_t bs, int64_t rs, int64_t hs) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < dim; ++d)
        store_from_float(dst, dt, (r / rows_per_batch) * bs + (r % rows_per_batch) * rs + h * hs + d,
                         static_cast<float>(src[(r * heads + h) * dim + d]));
}
}  // namespace

Status reference_forward(const FwdParams& p) {
  RefForward r = reference_forward_f64(p);
  const Layout lay(p);
  // Varlen q: packed rows (one "batch" of total_q rows, batch stride unused).
  const int64_t q_rows_per_batch = p.cu_seqlens_q ? lay.total_q_rows() + 1 : p.seqlen_q;
  store_rows(r.out, p.o, p.dtype, lay.total_q_rows(), q_rows_per_batch, p.heads_q, effective_head_dim_v(p),
             p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  if (p.lse)
    for (size_t i = 0; i < r.lse.size(); ++i) p.lse[i] = static_cast<float>(r.lse[i]);
  return Status::Ok();
}

Status reference_backward(const BwdParams& p) {
  RefBackward g = reference_backward_f64(p);
  const Layout lay(p);
  const int64_t dv = effective_head_dim_v(p);
  const int64_t q_rows_per_batch = p.cu_seqlens_q ? lay.total_q_rows() + 1 : p.seqlen_q;
  // Keys: pages of page_size rows (page stride = batch stride), packed rows, or dense batches.
  const int64_t k_rows_per_batch =
      p.block_table ? p.page_size : (p.cu_seqlens_k ? lay.total_k_rows() + 1 : p.seqlen_k);
  store_rows(g.dq, p.dq, p.dtype, lay.total_q_rows(), q_rows_per_batch, p.heads_q, p.head_dim, p.dq_batch_stride,
             p.dq_row_stride, p.dq_head_stride);
  store_rows(g.dk, p.dk, p.dtype, lay.total_k_rows(), k_rows_per_batch, p.heads_kv, p.head_dim, p.dk_batch_stride,
             p.dk_row_stride, p.dk_head_stride);
  store_rows(g.dv, p.dv, p.dtype, lay.total_k_rows(), k_rows_per_batch, p.heads_kv, dv, p.dv_batch_stride,
             p.dv_row_stride, p.dv_head_stride);
  return Status::Ok();
}

}  // namespace cpu
}  // namespace flashattn
