// Variable-length batches, KV caches (seqused_k, paged) and append_kv on the CPU
// (docs/07-inference.md). The oracle for varlen / paged requests is checked
// against the plain dense oracle run per sequence, so the layouts and the
// per-sequence mask alignment are what is tested here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "flashattn/kvcache.h"
#include "test_util.h"

namespace flashattn {
namespace {

using testing::HostTensor;

struct Opts {
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  int64_t heads_q = 4, heads_kv = 2, dim = 16;
  DType dtype = DType::kFloat32;
};

void apply(const Opts& o, FwdParams& p) {
  p.causal = o.causal;
  p.window_left = o.window_left;
  p.window_right = o.window_right;
  p.softcap = o.softcap;
  p.heads_q = o.heads_q;
  p.heads_kv = o.heads_kv;
  p.head_dim = o.dim;
  p.dtype = o.dtype;
}

// Dense oracle of one sequence whose rows start at the given pointers (row/head strides of the parent).
cpu::RefForward dense_one(const Opts& o, const void* q, const void* k, const void* v, int64_t len_q, int64_t len_k,
                          int64_t q_rs, int64_t k_rs) {
  FwdParams p;
  apply(o, p);
  p.q = q;
  p.k = k;
  p.v = v;
  p.batch = 1;
  p.seqlen_q = len_q;
  p.seqlen_k = len_k;
  p.q_row_stride = q_rs;
  p.q_head_stride = o.dim;
  p.k_row_stride = p.v_row_stride = k_rs;
  p.k_head_stride = p.v_head_stride = o.dim;
  return cpu::reference_forward_f64(p);
}

const void* at(const HostTensor& t, int64_t elem) { return t.bytes.data() + elem * dtype_size(t.dtype); }

class VarlenForward : public ::testing::TestWithParam<int> {};

// Packed varlen forward == the dense oracle run on each sequence alone.
TEST_P(VarlenForward, MatchesPerSequenceDense) {
  Opts o;
  switch (GetParam()) {
    case 0: break;
    case 1: o.causal = true; break;
    case 2: o.window_left = 2; o.window_right = 1; break;
    case 3: o.causal = true; o.softcap = 5.0f; o.heads_q = 8; o.heads_kv = 1; break;
    case 4: o.causal = true; o.dtype = DType::kBFloat16; o.heads_q = 2; o.heads_kv = 2; break;
  }
  const std::vector<int32_t> len_q = {3, 0, 1, 5, 2, 4};
  const std::vector<int32_t> len_k = {4, 2, 1, 7, 0, 9};
  const int64_t B = static_cast<int64_t>(len_q.size());
  std::vector<int32_t> cu_q(B + 1, 0), cu_k(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    cu_q[b + 1] = cu_q[b] + len_q[b];
    cu_k[b + 1] = cu_k[b] + len_k[b];
  }
  const int64_t max_q = *std::max_element(len_q.begin(), len_q.end());
  const int64_t max_k = *std::max_element(len_k.begin(), len_k.end());
  std::mt19937_64 rng(1234 + GetParam());
  HostTensor q(o.dtype, cu_q[B] * o.heads_q * o.dim), k(o.dtype, cu_k[B] * o.heads_kv * o.dim),
      v(o.dtype, cu_k[B] * o.heads_kv * o.dim), out(o.dtype, cu_q[B] * o.heads_q * o.dim);
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  out.fill(std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(B * o.heads_q * max_q, std::numeric_limits<float>::quiet_NaN());

  FwdParams p;
  apply(o, p);
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = out.data();
  p.lse = lse.data();
  p.batch = B;
  p.seqlen_q = max_q;
  p.seqlen_k = max_k;
  p.cu_seqlens_q = cu_q.data();
  p.cu_seqlens_k = cu_k.data();
  p.q_row_stride = p.o_row_stride = o.heads_q * o.dim;
  p.q_head_stride = p.o_head_stride = o.dim;
  p.k_row_stride = p.v_row_stride = o.heads_kv * o.dim;
  p.k_head_stride = p.v_head_stride = o.dim;
  Status st = forward(p);
  ASSERT_TRUE(st.ok()) << st.message;

  const double tol = o.dtype == DType::kFloat32 ? 1e-6 : 1e-2;  // rounding of O into the dtype
  for (int64_t b = 0; b < B; ++b) {
    if (len_q[b] == 0) continue;
    const int64_t qrow = cu_q[b], krow = cu_k[b];
    std::vector<double> ref_out, ref_lse;
    if (len_k[b] == 0) {  // no keys: O = 0, LSE = -inf
      ref_out.assign(len_q[b] * o.heads_q * o.dim, 0.0);
      ref_lse.assign(o.heads_q * len_q[b], -INFINITY);
    } else {
      cpu::RefForward r = dense_one(o, at(q, qrow * o.heads_q * o.dim), at(k, krow * o.heads_kv * o.dim),
                                    at(v, krow * o.heads_kv * o.dim), len_q[b], len_k[b], o.heads_q * o.dim,
                                    o.heads_kv * o.dim);
      ref_out = r.out;
      ref_lse = r.lse;
    }
    for (int64_t e = 0; e < len_q[b] * o.heads_q * o.dim; ++e)
      ASSERT_NEAR(out.get(qrow * o.heads_q * o.dim + e), ref_out[e], tol) << "sequence " << b << " element " << e;
    for (int64_t h = 0; h < o.heads_q; ++h)
      for (int64_t i = 0; i < max_q; ++i) {
        const float got = lse[(b * o.heads_q + h) * max_q + i];
        if (i >= len_q[b] || std::isinf(ref_lse[h * len_q[b] + i])) {
          EXPECT_TRUE(std::isinf(got) && got < 0) << "b " << b << " h " << h << " i " << i << " lse " << got;
        } else {
          EXPECT_NEAR(got, ref_lse[h * len_q[b] + i], 1e-5) << "b " << b << " h " << h << " i " << i;
        }
      }
  }
}
INSTANTIATE_TEST_SUITE_P(Masks, VarlenForward, ::testing::Range(0, 5));

// The varlen reference backward == the dense reference backward per sequence.
TEST(VarlenBackward, MatchesPerSequenceDense) {
  Opts o;
  o.causal = true;
  const std::vector<int32_t> len_q = {2, 3, 1}, len_k = {5, 3, 2};
  std::vector<int32_t> cu_q = {0, 2, 5, 6}, cu_k = {0, 5, 8, 10};
  std::mt19937_64 rng(7);
  HostTensor q(o.dtype, 6 * o.heads_q * o.dim), k(o.dtype, 10 * o.heads_kv * o.dim), v(o.dtype, 10 * o.heads_kv * o.dim),
      dout(o.dtype, 6 * o.heads_q * o.dim);
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  dout.fill_normal(rng);
  BwdParams p;
  apply(o, p);
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.dout = dout.data();
  p.batch = 3;
  p.seqlen_q = 3;
  p.seqlen_k = 5;
  p.cu_seqlens_q = cu_q.data();
  p.cu_seqlens_k = cu_k.data();
  p.q_row_stride = p.dout_row_stride = o.heads_q * o.dim;
  p.q_head_stride = p.dout_head_stride = o.dim;
  p.k_row_stride = p.v_row_stride = o.heads_kv * o.dim;
  p.k_head_stride = p.v_head_stride = o.dim;
  cpu::RefBackward g = cpu::reference_backward_f64(p);
  for (int b = 0; b < 3; ++b) {
    BwdParams d = p;
    d.cu_seqlens_q = d.cu_seqlens_k = nullptr;
    d.batch = 1;
    d.seqlen_q = len_q[b];
    d.seqlen_k = len_k[b];
    d.q = at(q, cu_q[b] * o.heads_q * o.dim);
    d.dout = at(dout, cu_q[b] * o.heads_q * o.dim);
    d.k = at(k, cu_k[b] * o.heads_kv * o.dim);
    d.v = at(v, cu_k[b] * o.heads_kv * o.dim);
    cpu::RefBackward r = cpu::reference_backward_f64(d);
    for (size_t e = 0; e < r.dq.size(); ++e) ASSERT_NEAR(g.dq[cu_q[b] * o.heads_q * o.dim + e], r.dq[e], 1e-12);
    for (size_t e = 0; e < r.dk.size(); ++e) ASSERT_NEAR(g.dk[cu_k[b] * o.heads_kv * o.dim + e], r.dk[e], 1e-12);
    for (size_t e = 0; e < r.dv.size(); ++e) ASSERT_NEAR(g.dv[cu_k[b] * o.heads_kv * o.dim + e], r.dv[e], 1e-12);
  }
}

// A contiguous KV cache [batch, capacity, heads_kv, dim] and the same keys in a
// shuffled page pool.
struct Cache {
  int64_t batch, capacity, heads_kv, dim, page_size = 0, pages_per_seq = 0, num_pages = 0;
  DType dtype;
  HostTensor k, v, k_pool, v_pool;
  std::vector<int32_t> block_table;

  Cache(DType dt, int64_t b, int64_t cap, int64_t hkv, int64_t d, std::mt19937_64& rng)
      : batch(b), capacity(cap), heads_kv(hkv), dim(d), dtype(dt), k(dt, b * cap * hkv * d), v(dt, b * cap * hkv * d) {
    k.fill_normal(rng);
    v.fill_normal(rng);
  }
  void make_pages(int64_t ps, std::mt19937_64& rng) {
    page_size = ps;
    pages_per_seq = (capacity + ps - 1) / ps;
    num_pages = batch * pages_per_seq + 3;  // a few pages no sequence owns
    std::vector<int32_t> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    block_table.assign(batch * pages_per_seq, 0);
    for (int64_t i = 0; i < batch * pages_per_seq; ++i) block_table[i] = perm[i];
    k_pool = HostTensor(dtype, num_pages * ps * heads_kv * dim);
    v_pool = HostTensor(dtype, num_pages * ps * heads_kv * dim);
    k_pool.fill(777.0f);  // rows no sequence owns must never be read
    v_pool.fill(777.0f);
    sync_to_pages();
  }
  void sync_to_pages() {
    const int64_t row = heads_kv * dim;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < capacity; ++j) {
        const int64_t dst = (block_table[b * pages_per_seq + j / page_size] * page_size + j % page_size) * row;
        const int64_t src = (b * capacity + j) * row;
        for (int64_t e = 0; e < row; ++e) {
          k_pool.set(dst + e, k.get(src + e));
          v_pool.set(dst + e, v.get(src + e));
        }
      }
  }
  void set_dense(FwdParams& p) const {
    p.k = k.data();
    p.v = v.data();
    p.seqlen_k = capacity;
    p.k_row_stride = p.v_row_stride = heads_kv * dim;
    p.k_head_stride = p.v_head_stride = dim;
    p.k_batch_stride = p.v_batch_stride = capacity * heads_kv * dim;
    p.block_table = nullptr;
    p.page_size = p.num_pages = 0;
  }
  void set_paged(FwdParams& p) const {
    set_dense(p);
    p.k = k_pool.data();
    p.v = v_pool.data();
    p.k_batch_stride = p.v_batch_stride = page_size * heads_kv * dim;
    p.block_table = block_table.data();
    p.block_table_batch_stride = pages_per_seq;
    p.page_size = page_size;
    p.num_pages = num_pages;
  }
};

struct QOut {
  HostTensor q, o;
  std::vector<float> lse;
  QOut(DType dt, int64_t b, int64_t sq, int64_t hq, int64_t d, std::mt19937_64& rng)
      : q(dt, b * sq * hq * d), o(dt, b * sq * hq * d), lse(b * hq * sq) {
    q.fill_normal(rng);
  }
  void set(FwdParams& p, int64_t b, int64_t sq, int64_t hq, int64_t d) {
    o.fill(std::numeric_limits<float>::quiet_NaN());
    std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
    p.q = q.data();
    p.o = o.data();
    p.lse = lse.data();
    p.batch = b;
    p.seqlen_q = sq;
    p.heads_q = hq;
    p.head_dim = d;
    p.q_row_stride = p.o_row_stride = hq * d;
    p.q_head_stride = p.o_head_stride = d;
    p.q_batch_stride = p.o_batch_stride = sq * hq * d;
  }
};

class PagedCache : public ::testing::TestWithParam<int64_t> {};

// Paged == contiguous (same oracle, bit for bit) for ragged cache lengths,
// including 0, 1, page boundaries and a full cache; and contiguous with
// seqused_k == the dense oracle on the trimmed cache.
TEST_P(PagedCache, EqualsContiguousAndTrimmedDense) {
  const int64_t ps = GetParam();
  const int64_t cap = ps >= 256 ? 300 : 5 * ps + 2;
  std::vector<int32_t> used = {static_cast<int32_t>(cap), 0, 1, static_cast<int32_t>(ps),
                               static_cast<int32_t>(std::min<int64_t>(2 * ps, cap)), static_cast<int32_t>(std::min<int64_t>(ps + 1, cap)),
                               static_cast<int32_t>(cap - 1)};
  const int64_t B = static_cast<int64_t>(used.size()), hq = 4, hkv = 2, d = 16, sq = 3;
  std::mt19937_64 rng(99 + ps);
  Cache c(DType::kFloat32, B, cap, hkv, d, rng);
  c.make_pages(ps, rng);
  for (bool causal : {false, true}) {
    QOut a(DType::kFloat32, B, sq, hq, d, rng), bq(DType::kFloat32, B, sq, hq, d, rng);
    bq.q = a.q;
    FwdParams pd, pp;
    pd.heads_kv = pp.heads_kv = hkv;
    pd.causal = pp.causal = causal;
    a.set(pd, B, sq, hq, d);
    bq.set(pp, B, sq, hq, d);
    c.set_dense(pd);
    c.set_paged(pp);
    pd.seqused_k = pp.seqused_k = used.data();
    Status st = forward(pd);
    ASSERT_TRUE(st.ok()) << st.message;
    st = forward(pp);
    ASSERT_TRUE(st.ok()) << st.message;
    for (int64_t e = 0; e < a.o.numel; ++e) ASSERT_EQ(a.o.get(e), bq.o.get(e)) << "element " << e;
    for (size_t e = 0; e < a.lse.size(); ++e)
      ASSERT_TRUE(a.lse[e] == bq.lse[e] || (std::isinf(a.lse[e]) && std::isinf(bq.lse[e]))) << e;

    // Trimmed dense per sequence (its own bottom-right aligned mask).
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t e = 0; e < sq * hq * d && used[b] == 0; ++e) ASSERT_EQ(a.o.get(b * sq * hq * d + e), 0.0f);
      if (used[b] == 0) {
        for (int64_t e = 0; e < hq * sq; ++e) ASSERT_TRUE(std::isinf(a.lse[b * hq * sq + e]));
        continue;
      }
      Opts o;
      o.causal = causal;
      o.heads_q = hq;
      o.heads_kv = hkv;
      o.dim = d;
      cpu::RefForward r = dense_one(o, at(a.q, b * sq * hq * d), at(c.k, b * cap * hkv * d),
                                    at(c.v, b * cap * hkv * d), sq, used[b], hq * d, hkv * d);
      for (int64_t e = 0; e < sq * hq * d; ++e) ASSERT_NEAR(a.o.get(b * sq * hq * d + e), r.out[e], 1e-6);
      for (int64_t e = 0; e < hq * sq; ++e) {
        if (std::isinf(r.lse[e])) {
          ASSERT_TRUE(std::isinf(a.lse[b * hq * sq + e]));
        } else {
          ASSERT_NEAR(a.lse[b * hq * sq + e], r.lse[e], 1e-5);
        }
      }
    }
  }
}
INSTANTIATE_TEST_SUITE_P(PageSizes, PagedCache, ::testing::Values(1, 3, 16, 256));

std::vector<float> rotary_table(int64_t max_pos, int64_t rd, bool sine) {
  std::vector<float> t(max_pos * rd / 2);
  for (int64_t pos = 0; pos < max_pos; ++pos)
    for (int64_t i = 0; i < rd / 2; ++i) {
      const double theta = pos * std::pow(10000.0, -2.0 * i / rd);
      t[pos * rd / 2 + i] = static_cast<float>(sine ? std::sin(theta) : std::cos(theta));
    }
  return t;
}

// The direct formula: the pair (x1, x2) as the complex number x1 + i x2, times e^{i theta}.
void rotate_direct(std::vector<double>& x, int64_t pos, int64_t rd, bool interleaved) {
  for (int64_t i = 0; i < rd / 2; ++i) {
    const int64_t i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + rd / 2;
    const double theta = pos * std::pow(10000.0, -2.0 * i / rd);
    const std::complex<double> z = std::complex<double>(x[i1], x[i2]) * std::polar(1.0, theta);
    x[i1] = z.real();
    x[i2] = z.imag();
  }
}

class AppendKv : public ::testing::TestWithParam<std::tuple<int64_t, int>> {};

// append_kv then attend == attend over the concatenation (old cache ++ new rows),
// with rotary (none, non-interleaved, interleaved) checked against the direct formula.
TEST_P(AppendKv, ThenAttendEqualsConcatenation) {
  const int64_t ps = std::get<0>(GetParam());  // 0 = contiguous
  const int rot_mode = std::get<1>(GetParam());
  const int64_t B = 4, hq = 4, hkv = 2, d = 16, T = 3, cap = 24, rd = rot_mode ? 8 : 0;
  std::vector<int32_t> lens = {0, 5, 16, static_cast<int32_t>(cap - T)};
  std::mt19937_64 rng(5 + ps * 3 + rot_mode);
  Cache c(DType::kFloat32, B, cap, hkv, d, rng);
  if (ps) c.make_pages(ps, rng);
  HostTensor knew(DType::kFloat32, B * T * hkv * d), vnew(DType::kFloat32, B * T * hkv * d);
  knew.fill_normal(rng);
  vnew.fill_normal(rng);
  QOut qo(DType::kFloat32, B, T, hq, d, rng);
  const HostTensor q_orig = qo.q;
  const std::vector<float> cos_t = rotary_table(64, rd ? rd : 2, false), sin_t = rotary_table(64, rd ? rd : 2, true);

  KvAppendParams a;
  a.k_new = knew.data();
  a.v_new = vnew.data();
  a.k_new_row_stride = a.v_new_row_stride = hkv * d;
  a.k_new_head_stride = a.v_new_head_stride = d;
  a.k_new_batch_stride = a.v_new_batch_stride = T * hkv * d;
  a.k_cache = ps ? c.k_pool.data() : c.k.data();
  a.v_cache = ps ? c.v_pool.data() : c.v.data();
  a.k_cache_row_stride = a.v_cache_row_stride = hkv * d;
  a.k_cache_head_stride = a.v_cache_head_stride = d;
  a.k_cache_batch_stride = a.v_cache_batch_stride = (ps ? ps : cap) * hkv * d;
  if (ps) {
    a.block_table = c.block_table.data();
    a.block_table_batch_stride = c.pages_per_seq;
    a.page_size = ps;
    a.num_pages = c.num_pages;
  }
  a.cache_seqlens = lens.data();
  a.batch = B;
  a.seqlen_new = T;
  a.capacity = cap;
  a.heads_kv = hkv;
  a.head_dim = d;
  a.dtype = DType::kFloat32;
  if (rd) {
    a.rotary_cos = cos_t.data();
    a.rotary_sin = sin_t.data();
    a.rotary_dim = rd;
    a.rotary_max_pos = 64;
    a.rotary_interleaved = rot_mode == 2;
    a.q = qo.q.data();
    a.q_row_stride = hq * d;
    a.q_head_stride = d;
    a.q_batch_stride = T * hq * d;
    a.heads_q = hq;
  }
  Status st = append_kv(a);
  ASSERT_TRUE(st.ok()) << st.message;

  // Expected cache rows and q: the direct formula on the originals.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t pos = lens[b] + t;
      for (int64_t h = 0; h < hkv; ++h) {
        std::vector<double> x(d);
        for (int64_t e = 0; e < d; ++e) x[e] = knew.get(((b * T + t) * hkv + h) * d + e);
        if (rd) rotate_direct(x, pos, rd, rot_mode == 2);
        const int64_t crow = ps ? c.block_table[b * c.pages_per_seq + pos / ps] * ps + pos % ps : b * cap + pos;
        const HostTensor& kc = ps ? c.k_pool : c.k;
        const HostTensor& vc = ps ? c.v_pool : c.v;
        for (int64_t e = 0; e < d; ++e) {
          ASSERT_NEAR(kc.get((crow * hkv + h) * d + e), x[e], 2e-5) << "b " << b << " t " << t << " d " << e;
          ASSERT_EQ(vc.get((crow * hkv + h) * d + e), vnew.get(((b * T + t) * hkv + h) * d + e));
        }
        // Keep the contiguous mirror in sync with what append_kv wrote (for the attend check below).
        for (int64_t e = 0; e < d; ++e) {
          c.k.set(((b * cap + pos) * hkv + h) * d + e, kc.get((crow * hkv + h) * d + e));
          c.v.set(((b * cap + pos) * hkv + h) * d + e, vc.get((crow * hkv + h) * d + e));
        }
      }
      for (int64_t h = 0; h < hq && rd; ++h) {
        std::vector<double> x(d);
        for (int64_t e = 0; e < d; ++e) x[e] = q_orig.get(((b * T + t) * hq + h) * d + e);
        rotate_direct(x, pos, rd, rot_mode == 2);
        for (int64_t e = 0; e < d; ++e) ASSERT_NEAR(qo.q.get(((b * T + t) * hq + h) * d + e), x[e], 2e-5);
      }
    }

  // Attend over the updated cache (seqused_k = lens + T, causal) == dense oracle on the concatenation.
  std::vector<int32_t> used(B);
  for (int64_t b = 0; b < B; ++b) used[b] = lens[b] + static_cast<int32_t>(T);
  FwdParams p;
  p.heads_kv = hkv;
  p.causal = true;
  qo.set(p, B, T, hq, d);
  if (ps) c.set_paged(p); else c.set_dense(p);
  p.seqused_k = used.data();
  st = forward(p);
  ASSERT_TRUE(st.ok()) << st.message;
  Opts o;
  o.causal = true;
  o.heads_q = hq;
  o.heads_kv = hkv;
  o.dim = d;
  for (int64_t b = 0; b < B; ++b) {
    // The concatenation, built independently: old rows from the pre-append cache mirror, then the new rows.
    HostTensor kk(DType::kFloat32, used[b] * hkv * d), vv(DType::kFloat32, used[b] * hkv * d);
    for (int64_t j = 0; j < used[b]; ++j)
      for (int64_t e = 0; e < hkv * d; ++e) {
        kk.set(j * hkv * d + e, c.k.get((b * cap + j) * hkv * d + e));
        vv.set(j * hkv * d + e, j < lens[b] ? c.v.get((b * cap + j) * hkv * d + e)
                                            : vnew.get((b * T + j - lens[b]) * hkv * d + e));
      }
    cpu::RefForward r = dense_one(o, at(qo.q, b * T * hq * d), kk.data(), vv.data(), T, used[b], hq * d, hkv * d);
    for (int64_t e = 0; e < T * hq * d; ++e) ASSERT_NEAR(qo.o.get(b * T * hq * d + e), r.out[e], 1e-6);
  }
}
INSTANTIATE_TEST_SUITE_P(Layouts, AppendKv,
                         ::testing::Combine(::testing::Values<int64_t>(0, 1, 3, 16), ::testing::Values(0, 1, 2)));

// Bad input gets a clear message, never a crash.
TEST(VarlenKvCacheErrors, ClearMessages) {
  std::mt19937_64 rng(3);
  const int64_t B = 2, cap = 10, hkv = 1, d = 16;
  Cache c(DType::kFloat32, B, cap, hkv, d, rng);
  c.make_pages(4, rng);
  QOut qo(DType::kFloat32, B, 1, 1, d, rng);
  std::vector<int32_t> used = {3, 9};
  FwdParams p;
  p.heads_kv = hkv;
  qo.set(p, B, 1, 1, d);
  c.set_paged(p);
  p.seqused_k = used.data();
  ASSERT_TRUE(validate(p).ok()) << validate(p).message;

  c.block_table[1 * c.pages_per_seq + 2] = static_cast<int32_t>(c.num_pages);  // page 2 of sequence 1 is used
  Status st = validate(p);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("block_table[1, 2]"), std::string::npos) << st.message;
  c.block_table[1 * c.pages_per_seq + 2] = 0;

  used[0] = 11;
  st = validate(p);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("seqused_k[0]"), std::string::npos) << st.message;
  used[0] = 3;

  p.page_size = 0;
  EXPECT_NE(validate(p).message.find("page_size"), std::string::npos);

  // Varlen: not increasing, one-sided, longer than the maximum.
  FwdParams v;
  v.heads_kv = 1;
  qo.set(v, B, 4, 1, d);
  c.set_dense(v);
  std::vector<int32_t> cu_q = {0, 3, 2}, cu_k = {0, 4, 8};
  v.cu_seqlens_q = cu_q.data();
  st = validate(v);
  EXPECT_NE(st.message.find("set together"), std::string::npos) << st.message;
  v.cu_seqlens_k = cu_k.data();
  st = validate(v);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("non-decreasing"), std::string::npos) << st.message;
  cu_q = {0, 3, 8};
  st = validate(v);
  EXPECT_NE(st.message.find("seqlen_q (the maximum)"), std::string::npos) << st.message;
  cu_q = {0, 3, 4};
  EXPECT_TRUE(validate(v).ok()) << validate(v).message;
  // total_q / total_k (optional row counts of the packed tensors): must cover the cu_seqlens.
  v.total_q = 3;
  st = validate(v);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("exceeds total_q = 3"), std::string::npos) << st.message;
  v.total_q = 4;
  v.total_k = 7;
  st = validate(v);
  EXPECT_NE(st.message.find("exceeds total_k = 7"), std::string::npos) << st.message;
  v.total_k = 8;
  EXPECT_TRUE(validate(v).ok()) << validate(v).message;
  v.total_k = -1;
  EXPECT_NE(validate(v).message.find("total_q / total_k must be >= 0"), std::string::npos);
  v.total_q = v.total_k = 0;

  // append_kv: cache too small, page out of range.
  HostTensor knew(DType::kFloat32, B * 2 * hkv * d);
  knew.fill(1.0f);
  std::vector<int32_t> lens = {8, 2};
  KvAppendParams a;
  a.k_new = a.v_new = knew.data();
  a.k_new_row_stride = a.v_new_row_stride = hkv * d;
  a.k_new_head_stride = a.v_new_head_stride = d;
  a.k_new_batch_stride = a.v_new_batch_stride = 2 * hkv * d;
  a.k_cache = c.k.data();
  a.v_cache = c.v.data();
  a.k_cache_row_stride = a.v_cache_row_stride = hkv * d;
  a.k_cache_head_stride = a.v_cache_head_stride = d;
  a.k_cache_batch_stride = a.v_cache_batch_stride = cap * hkv * d;
  a.cache_seqlens = lens.data();
  a.batch = B;
  a.seqlen_new = 2;
  a.capacity = cap;
  a.heads_kv = hkv;
  a.head_dim = d;
  a.dtype = DType::kFloat32;
  EXPECT_TRUE(append_kv(a).ok());
  lens[0] = 9;
  st = append_kv(a);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("cache too small"), std::string::npos) << st.message;
  lens[0] = 0;
  a.k_cache = c.k_pool.data();
  a.v_cache = c.v_pool.data();
  a.k_cache_batch_stride = a.v_cache_batch_stride = 4 * hkv * d;
  a.block_table = c.block_table.data();
  a.block_table_batch_stride = c.pages_per_seq;
  a.page_size = 4;
  a.num_pages = c.num_pages;
  EXPECT_TRUE(append_kv(a).ok()) << append_kv(a).message;
  c.block_table[0] = -1;
  st = append_kv(a);
  EXPECT_NE(st.message.find("out of range"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace flashattn
