// The oracle: naive 3-pass attention in double (docs/00-attention.md).
//   S = softcap(scale * Q K^T), masked          (1), (2)
//   P = softmax(S) row-wise, LSE = log sum exp S (safe two-pass softmax)
//   O = P V
// Backward (docs/05-backward.md):
//   dV = P^T dO,  dP = dO V^T,  D = rowsum(dO o O),  dS = P o (dP - D),
//   dS_raw = dS * (1 - tanh^2) when soft-capped,  dQ = scale * dS_raw K,  dK = scale * dS_raw^T Q.
// Slow on purpose: every test, CPU or GPU, compares against this.
#include <cmath>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "common/mask.h"
#include "cpu/cpu_backend.h"

namespace flashattn {
namespace cpu {
namespace {

struct Ref {
  const FwdParams& p;
  Mask mask;
  double scale;
  double softcap;
  int64_t dv;
  int64_t group;  // query heads per kv head

  explicit Ref(const FwdParams& params)
      : p(params),
        mask(make_mask(params)),
        scale(effective_scale(params)),
        softcap(params.softcap),
        dv(effective_head_dim_v(params)),
        group(params.heads_q / params.heads_kv) {}

  double q(int64_t b, int64_t i, int64_t h, int64_t d) const {
    return load_as_float(p.q, p.dtype, b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride + d);
  }
  double k(int64_t b, int64_t j, int64_t h, int64_t d) const {
    return load_as_float(p.k, p.dtype, b * p.k_batch_stride + j * p.k_row_stride + h * p.k_head_stride + d);
  }
  double v(int64_t b, int64_t j, int64_t h, int64_t d) const {
    return load_as_float(p.v, p.dtype, b * p.v_batch_stride + j * p.v_row_stride + h * p.v_head_stride + d);
  }

  // Row i of the scores of (b, h): S[j] for visible j, -inf for masked ones. Also returns
  // the raw tanh argument product needed by the softcap derivative.
  void scores(int64_t b, int64_t h, int64_t i, std::vector<double>& s, std::vector<double>& tanh_val) const {
    const int64_t hk = h / group;
    s.assign(p.seqlen_k, -std::numeric_limits<double>::infinity());
    tanh_val.assign(p.seqlen_k, 0.0);
    for (int64_t j = 0; j < p.seqlen_k; ++j) {
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
  RefForward out;
  out.out.assign(p.batch * p.seqlen_q * p.heads_q * r.dv, 0.0);
  out.lse.assign(p.batch * p.heads_q * p.seqlen_q, 0.0);
  std::vector<double> s, t;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < p.seqlen_q; ++i) {
        r.scores(b, h, i, s, t);
        out.lse[(b * p.heads_q + h) * p.seqlen_q + i] = Ref::softmax_row(s);
        double* o_row = &out.out[((b * p.seqlen_q + i) * p.heads_q + h) * r.dv];
        for (int64_t j = 0; j < p.seqlen_k; ++j) {
          if (s[j] == 0.0) continue;
          for (int64_t d = 0; d < r.dv; ++d) o_row[d] += s[j] * r.v(b, j, h / r.group, d);
        }
      }
  return out;
}

RefBackward reference_backward_f64(const BwdParams& p) {
  Ref r(p);
  RefBackward g;
  const int64_t D = p.head_dim;
  g.dq.assign(p.batch * p.seqlen_q * p.heads_q * D, 0.0);
  g.dk.assign(p.batch * p.seqlen_k * p.heads_kv * D, 0.0);
  g.dv.assign(p.batch * p.seqlen_k * p.heads_kv * r.dv, 0.0);
  std::vector<double> prob, t, dprob;
  std::vector<double> o_row(r.dv);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t hk = h / r.group;
      for (int64_t i = 0; i < p.seqlen_q; ++i) {
        r.scores(b, h, i, prob, t);
        Ref::softmax_row(prob);
        auto dout = [&](int64_t d) {
          return static_cast<double>(load_as_float(
              p.dout, p.dtype, b * p.dout_batch_stride + i * p.dout_row_stride + h * p.dout_head_stride + d));
        };
        // O row recomputed in double, then D = rowsum(dO o O).
        std::fill(o_row.begin(), o_row.end(), 0.0);
        for (int64_t j = 0; j < p.seqlen_k; ++j)
          if (prob[j] != 0.0)
            for (int64_t d = 0; d < r.dv; ++d) o_row[d] += prob[j] * r.v(b, j, hk, d);
        double delta = 0.0;
        for (int64_t d = 0; d < r.dv; ++d) delta += dout(d) * o_row[d];
        dprob.assign(p.seqlen_k, 0.0);
        for (int64_t j = 0; j < p.seqlen_k; ++j) {
          if (prob[j] == 0.0) continue;
          double dp = 0.0;
          for (int64_t d = 0; d < r.dv; ++d) {
            const double dod = dout(d);
            dp += dod * r.v(b, j, hk, d);
            g.dv[((b * p.seqlen_k + j) * p.heads_kv + hk) * r.dv + d] += prob[j] * dod;
          }
          double ds = prob[j] * (dp - delta);
          if (r.softcap > 0.0) ds *= 1.0 - t[j] * t[j];
          ds *= r.scale;
          for (int64_t d = 0; d < D; ++d) {
            g.dq[((b * p.seqlen_q + i) * p.heads_q + h) * D + d] += ds * r.k(b, j, hk, d);
            g.dk[((b * p.seqlen_k + j) * p.heads_kv + hk) * D + d] += ds * r.q(b, i, h, d);
          }
        }
      }
    }
  return g;
}

namespace {
// Write a contiguous double [batch, seqlen, heads, dim] tensor into a strided typed one.
void store_bshd(const std::vector<double>& src, void* dst, DType dt, int64_t batch, int64_t seqlen, int64_t heads,
                int64_t dim, int64_t bs, int64_t rs, int64_t hs) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < seqlen; ++i)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t d = 0; d < dim; ++d)
          store_from_float(dst, dt, b * bs + i * rs + h * hs + d,
                           static_cast<float>(src[((b * seqlen + i) * heads + h) * dim + d]));
}
}  // namespace

Status reference_forward(const FwdParams& p) {
  RefForward r = reference_forward_f64(p);
  store_bshd(r.out, p.o, p.dtype, p.batch, p.seqlen_q, p.heads_q, effective_head_dim_v(p), p.o_batch_stride,
             p.o_row_stride, p.o_head_stride);
  if (p.lse)
    for (size_t i = 0; i < r.lse.size(); ++i) p.lse[i] = static_cast<float>(r.lse[i]);
  return Status::Ok();
}

Status reference_backward(const BwdParams& p) {
  RefBackward g = reference_backward_f64(p);
  const int64_t dv = effective_head_dim_v(p);
  store_bshd(g.dq, p.dq, p.dtype, p.batch, p.seqlen_q, p.heads_q, p.head_dim, p.dq_batch_stride, p.dq_row_stride,
             p.dq_head_stride);
  store_bshd(g.dk, p.dk, p.dtype, p.batch, p.seqlen_k, p.heads_kv, p.head_dim, p.dk_batch_stride, p.dk_row_stride,
             p.dk_head_stride);
  store_bshd(g.dv, p.dv, p.dtype, p.batch, p.seqlen_k, p.heads_kv, dv, p.dv_batch_stride, p.dv_row_stride,
             p.dv_head_stride);
  return Status::Ok();
}

}  // namespace cpu
}  // namespace flashattn
