#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "common/mask.h"

namespace flashattn {
namespace testing {

void HostTensor::fill_normal(std::mt19937_64& rng, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  for (int64_t i = 0; i < numel; ++i) set(i, dist(rng));
}
void HostTensor::fill(float v) {
  for (int64_t i = 0; i < numel; ++i) set(i, v);
}
std::vector<double> HostTensor::to_double() const {
  std::vector<double> out(numel);
  for (int64_t i = 0; i < numel; ++i) out[i] = get(i);
  return out;
}

std::string Shape::name() const {
  std::ostringstream os;
  os << "b" << batch << "_q" << seqlen_q << "_k" << seqlen_k << "_h" << heads_q << "x" << heads_kv << "_d"
     << head_dim << (causal ? "_causal" : "") << "_w" << window_left << "," << window_right;
  if (softcap > 0) os << "_cap" << softcap;
  os << "_" << dtype_name(dtype);
  return os.str();
}

Problem::Problem(const Shape& s, uint64_t seed) : shape(s) {
  std::mt19937_64 rng(seed);
  const int64_t nq = s.batch * s.seqlen_q * s.heads_q * s.head_dim;
  const int64_t nk = s.batch * s.seqlen_k * s.heads_kv * s.head_dim;
  q = HostTensor(s.dtype, nq);
  k = HostTensor(s.dtype, nk);
  v = HostTensor(s.dtype, nk);
  o = HostTensor(s.dtype, nq);
  dout = HostTensor(s.dtype, nq);
  dq = HostTensor(s.dtype, nq);
  dk = HostTensor(s.dtype, nk);
  dv = HostTensor(s.dtype, nk);
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  dout.fill_normal(rng);
  // Poison outputs so unwritten elements are caught.
  o.fill(std::numeric_limits<float>::quiet_NaN());
  dq.fill(std::numeric_limits<float>::quiet_NaN());
  dk.fill(std::numeric_limits<float>::quiet_NaN());
  dv.fill(std::numeric_limits<float>::quiet_NaN());
  lse.assign(s.batch * s.heads_q * s.seqlen_q, std::numeric_limits<float>::quiet_NaN());

  BwdParams& p = params;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = o.data();
  p.lse = lse.data();
  p.dout = dout.data();
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  p.batch = s.batch;
  p.seqlen_q = s.seqlen_q;
  p.seqlen_k = s.seqlen_k;
  p.heads_q = s.heads_q;
  p.heads_kv = s.heads_kv;
  p.head_dim = s.head_dim;
  p.dtype = s.dtype;
  p.causal = s.causal;
  p.window_left = s.window_left;
  p.window_right = s.window_right;
  p.softcap = s.softcap;
  set_contiguous_strides(p);
}

namespace {
float load_bshd(const void* base, DType dt, int64_t bs, int64_t rs, int64_t hs, int64_t b, int64_t i, int64_t h,
                int64_t d) {
  return load_as_float(base, dt, b * bs + i * rs + h * hs + d);
}
}  // namespace

// Rows of P (rounded to dtype) for one (b, h, i), plus lse; shared by both lowprec passes.
static float lowprec_probs(const FwdParams& p, const Mask& mask, float scale, int64_t b, int64_t h, int64_t i,
                           std::vector<float>& prob, std::vector<float>& tanh_val) {
  const int64_t hk = h / (p.heads_q / p.heads_kv);
  prob.assign(p.seqlen_k, -INFINITY);
  tanh_val.assign(p.seqlen_k, 0.0f);
  float row_max = -INFINITY;
  for (int64_t j = 0; j < p.seqlen_k; ++j) {
    if (!mask.visible(i, j)) continue;
    float dot = 0.0f;
    for (int64_t d = 0; d < p.head_dim; ++d)
      dot += load_bshd(p.q, p.dtype, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, i, h, d) *
             load_bshd(p.k, p.dtype, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, j, hk, d);
    float x = round_to(p.dtype, dot * scale);
    if (p.softcap > 0.0f) {
      tanh_val[j] = std::tanh(x / p.softcap);
      x = round_to(p.dtype, p.softcap * tanh_val[j]);
    }
    prob[j] = x;
    row_max = std::max(row_max, x);
  }
  if (row_max == -INFINITY) {
    std::fill(prob.begin(), prob.end(), 0.0f);
    return -INFINITY;
  }
  float row_sum = 0.0f;
  for (float& x : prob) {
    x = std::exp(x - row_max);
    row_sum += x;
  }
  for (float& x : prob) x = round_to(p.dtype, x / row_sum);
  return row_max + std::log(row_sum);
}

LowPrecForward lowprec_forward(const FwdParams& p) {
  const Mask mask = make_mask(p);
  const float scale = effective_scale(p);
  const int64_t dv = effective_head_dim_v(p), group = p.heads_q / p.heads_kv;
  LowPrecForward r;
  r.out.assign(p.batch * p.seqlen_q * p.heads_q * dv, 0.0f);
  r.lse.assign(p.batch * p.heads_q * p.seqlen_q, 0.0f);
  std::vector<float> prob, t, acc(dv);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < p.seqlen_q; ++i) {
        r.lse[(b * p.heads_q + h) * p.seqlen_q + i] = lowprec_probs(p, mask, scale, b, h, i, prob, t);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < p.seqlen_k; ++j)
          for (int64_t d = 0; d < dv; ++d)
            acc[d] += prob[j] * load_bshd(p.v, p.dtype, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, j,
                                          h / group, d);
        for (int64_t d = 0; d < dv; ++d)
          r.out[((b * p.seqlen_q + i) * p.heads_q + h) * dv + d] = round_to(p.dtype, acc[d]);
      }
  return r;
}

LowPrecBackward lowprec_backward(const BwdParams& p) {
  const Mask mask = make_mask(p);
  const float scale = effective_scale(p);
  const int64_t dv = effective_head_dim_v(p), D = p.head_dim, group = p.heads_q / p.heads_kv;
  LowPrecBackward g;
  g.dq.assign(p.batch * p.seqlen_q * p.heads_q * D, 0.0f);
  g.dk.assign(p.batch * p.seqlen_k * p.heads_kv * D, 0.0f);
  g.dv.assign(p.batch * p.seqlen_k * p.heads_kv * dv, 0.0f);
  std::vector<float> prob, t, o_row(dv);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t hk = h / group;
      for (int64_t i = 0; i < p.seqlen_q; ++i) {
        lowprec_probs(p, mask, scale, b, h, i, prob, t);
        auto dout = [&](int64_t d) {
          return load_bshd(p.dout, p.dtype, p.dout_batch_stride, p.dout_row_stride, p.dout_head_stride, b, i, h, d);
        };
        auto vv = [&](int64_t j, int64_t d) {
          return load_bshd(p.v, p.dtype, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, j, hk, d);
        };
        std::fill(o_row.begin(), o_row.end(), 0.0f);
        for (int64_t j = 0; j < p.seqlen_k; ++j)
          for (int64_t d = 0; d < dv; ++d) o_row[d] += prob[j] * vv(j, d);
        float delta = 0.0f;
        for (int64_t d = 0; d < dv; ++d) delta += dout(d) * round_to(p.dtype, o_row[d]);
        for (int64_t j = 0; j < p.seqlen_k; ++j) {
          if (prob[j] == 0.0f) continue;
          float dp = 0.0f;
          for (int64_t d = 0; d < dv; ++d) {
            dp += dout(d) * vv(j, d);
            g.dv[((b * p.seqlen_k + j) * p.heads_kv + hk) * dv + d] += prob[j] * dout(d);
          }
          float ds = prob[j] * (dp - delta);
          if (p.softcap > 0.0f) ds *= 1.0f - t[j] * t[j];
          ds = round_to(p.dtype, ds * scale);
          for (int64_t d = 0; d < D; ++d) {
            g.dq[((b * p.seqlen_q + i) * p.heads_q + h) * D + d] +=
                ds * load_bshd(p.k, p.dtype, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, j, hk, d);
            g.dk[((b * p.seqlen_k + j) * p.heads_kv + hk) * D + d] +=
                ds * load_bshd(p.q, p.dtype, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, i, h, d);
          }
        }
      }
    }
  for (auto* v : {&g.dq, &g.dk, &g.dv})
    for (float& x : *v) x = round_to(p.dtype, x);
  return g;
}

double max_abs_diff(const std::vector<double>& ref, const HostTensor& got) {
  double m = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(ref[i] - static_cast<double>(got.get(static_cast<int64_t>(i))));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

double max_abs_diff(const std::vector<double>& ref, const std::vector<float>& got) {
  double m = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(ref[i] - static_cast<double>(got[i]));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

double max_abs_diff_lse(const std::vector<double>& ref, const std::vector<float>& got) {
  double m = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const bool ref_inf = std::isinf(ref[i]), got_inf = std::isinf(got[i]);
    if (ref_inf || got_inf) {
      if (!(ref_inf && got_inf && (ref[i] < 0) == (got[i] < 0))) return INFINITY;
      continue;
    }
    const double d = std::fabs(ref[i] - static_cast<double>(got[i]));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

double tolerance_floor(DType dt) {
  switch (dt) {
    case DType::kFloat32: return 2e-5;
    case DType::kFloat16: return 2e-4;
    case DType::kBFloat16: return 2e-3;
  }
  return 1e-3;
}

bool gpu_available() { return cuda_device_count() > 0; }

}  // namespace testing
}  // namespace flashattn
