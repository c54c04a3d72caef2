// Gradients. (1) The oracle itself: reference_backward_f64 against central
// finite differences of the scalar loss L = sum(O * dO), O from
// reference_forward_f64 (double), on tiny shapes with causal, window, softcap
// and GQA. Every backward (CPU and GPU) is judged by this oracle.
// (2) Kernel::kCpuFlash backward vs the oracle with the tolerance rule.
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "cpu_flash_layouts.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

// ---------------------------------------------------------------------------
// (1) Finite differences of the oracle.
// ---------------------------------------------------------------------------
double loss(const BwdParams& p, const HostTensor& dout) {
  const cpu::RefForward r = cpu::reference_forward_f64(p);
  double l = 0.0;
  for (size_t i = 0; i < r.out.size(); ++i) l += r.out[i] * dout.get(static_cast<int64_t>(i));
  return l;
}

// Central difference of every element of t; the step actually taken is read
// back from the fp32 storage so its rounding does not enter the estimate.
std::vector<double> numeric_grad(Problem& pb, HostTensor& t) {
  std::vector<double> g(t.numel);
  for (int64_t i = 0; i < t.numel; ++i) {
    const float x = t.get(i);
    const float eps = 1e-3f * std::max(1.0f, std::fabs(x));
    t.set(i, x + eps);
    const double xp = t.get(i), lp = loss(pb.params, pb.dout);
    t.set(i, x - eps);
    const double xm = t.get(i), lm = loss(pb.params, pb.dout);
    t.set(i, x);
    g[i] = (lp - lm) / (xp - xm);
  }
  return g;
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double scale = 1e-3, m = 0.0;
  for (double x : a) scale = std::max(scale, std::fabs(x));
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m / scale;
}

struct FdCase {
  int64_t batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
  bool causal;
  int64_t window_left, window_right;
  float softcap;
};

class ReferenceGradient : public ::testing::TestWithParam<FdCase> {};

TEST_P(ReferenceGradient, MatchesFiniteDifferences) {
  const FdCase& c = GetParam();
  Shape s;
  s.batch = c.batch, s.seqlen_q = c.seqlen_q, s.seqlen_k = c.seqlen_k, s.heads_q = c.heads_q;
  s.heads_kv = c.heads_kv, s.head_dim = c.head_dim, s.causal = c.causal;
  s.window_left = c.window_left, s.window_right = c.window_right, s.softcap = c.softcap;
  Problem pb(s, 4242 + c.seqlen_q);
  pb.params.softmax_scale = 0.7f;  // scores of order 1-3 so the softcap bends them
  const cpu::RefBackward g = cpu::reference_backward_f64(pb.params);
  // Central differences in fp32-stored inputs: truncation O(eps^2), so ~1e-5 relative.
  EXPECT_LT(max_rel_diff(g.dq, numeric_grad(pb, pb.q)), 2e-4) << "dq";
  EXPECT_LT(max_rel_diff(g.dk, numeric_grad(pb, pb.k)), 2e-4) << "dk";
  EXPECT_LT(max_rel_diff(g.dv, numeric_grad(pb, pb.v)), 2e-4) << "dv";
}

// batch, sq, sk, hq, hkv, d, causal, wl, wr, softcap
INSTANTIATE_TEST_SUITE_P(Tiny, ReferenceGradient,
                         ::testing::Values(FdCase{1, 5, 7, 4, 2, 8, true, -1, -1, 1.5f},
                                           FdCase{2, 6, 4, 2, 1, 8, true, -1, -1, 0.f},  // sq > sk: masked rows
                                           FdCase{1, 7, 7, 3, 1, 16, false, 2, 1, 2.f},
                                           FdCase{1, 4, 9, 2, 2, 8, false, -1, -1, 0.f}));

// ---------------------------------------------------------------------------
// (2) Kernel::kCpuFlash backward vs the oracle.
// ---------------------------------------------------------------------------
struct BwdCase {
  int64_t batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
  bool causal;
  int64_t window_left, window_right;
  float softcap;
  DType dtype;
  Layout layout;
  int num_threads;
};

Shape to_shape(const BwdCase& c) {
  Shape s;
  s.batch = c.batch, s.seqlen_q = c.seqlen_q, s.seqlen_k = c.seqlen_k, s.heads_q = c.heads_q;
  s.heads_kv = c.heads_kv, s.head_dim = c.head_dim, s.causal = c.causal, s.window_left = c.window_left;
  s.window_right = c.window_right, s.softcap = c.softcap, s.dtype = c.dtype;
  return s;
}

std::string case_name(const BwdCase& c) {
  std::ostringstream os;
  os << to_shape(c).name() << "_" << layout_name(c.layout) << "_t" << c.num_threads;
  std::string n = os.str();
  for (char& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

constexpr DType F32 = DType::kFloat32, F16 = DType::kFloat16, BF16 = DType::kBFloat16;
constexpr Layout C = Layout::kContiguous, PK = Layout::kPackedQKV, HM = Layout::kHeadMajor;

// batch, sq, sk, hq, hkv, d, causal, wl, wr, softcap, dtype, layout, threads
const BwdCase kBwdCases[] = {
    {1, 1, 1, 4, 4, 32, false, -1, -1, 0.f, F32, C, 0},
    {3, 7, 63, 8, 2, 40, true, -1, -1, 0.f, BF16, C, 0},
    {1, 63, 7, 8, 1, 64, true, -1, -1, 0.f, F16, C, 0},  // sq > sk: fully masked rows
    {1, 65, 127, 4, 4, 80, false, 32, 0, 2.f, F32, C, 0},
    {1, 127, 65, 8, 2, 96, false, 17, 5, 0.f, F16, C, 3},
    {1, 257, 257, 4, 4, 128, true, -1, -1, 0.f, BF16, C, 0},
    {1, 1000, 127, 8, 1, 32, true, -1, -1, 0.f, F32, C, 0},
    {1, 65, 257, 4, 4, 192, false, -1, -1, 3.f, F16, C, 0},
    {1, 63, 127, 8, 1, 256, true, -1, -1, 0.f, F32, C, 1},
    {3, 1, 257, 8, 2, 64, false, -1, -1, 0.f, BF16, C, 0},
    {1, 127, 1000, 4, 4, 32, false, 32, 0, 0.f, F32, C, 0},
    {3, 65, 65, 8, 2, 64, true, -1, -1, 2.f, F32, PK, 0},
    {1, 127, 127, 4, 4, 40, false, 17, 5, 0.f, BF16, PK, 0},
    {1, 7, 127, 8, 1, 128, false, -1, -1, 0.f, F16, HM, 0},
    {3, 257, 65, 4, 4, 32, true, -1, -1, 0.f, F32, HM, 0},
};

class CpuFlashBackward : public ::testing::TestWithParam<BwdCase> {};

TEST_P(CpuFlashBackward, MatchesReferenceWithinRule) {
  const BwdCase& c = GetParam();
  Problem pb(to_shape(c), 7000 + static_cast<uint64_t>(c.seqlen_q * 17 + c.seqlen_k + c.head_dim));
  StridedProblem sp;
  if (c.layout != Layout::kContiguous) sp.bind(pb, c.layout);
  BwdParams& p = pb.params;
  p.kernel = Kernel::kCpuFlash;
  p.num_threads = c.num_threads;
  ASSERT_TRUE(forward(p).ok());
  const Status st = backward(p);
  ASSERT_TRUE(st.ok()) << st.message;

  const cpu::RefBackward ref = cpu::reference_backward_f64(p);
  const LowPrecBackward low = lowprec_backward(p);
  const double floor = tolerance_floor(c.dtype);
  std::vector<float> dq, dk, dv;
  if (c.layout == Layout::kContiguous) {
    auto f = [](const HostTensor& t) {
      std::vector<float> v(t.numel);
      for (int64_t i = 0; i < t.numel; ++i) v[i] = t.get(i);
      return v;
    };
    dq = f(pb.dq), dk = f(pb.dk), dv = f(pb.dv);
  } else {
    dq = sp.dq.get(), dk = sp.dk.get(), dv = sp.dv.get();
    EXPECT_TRUE(StridedProblem::gaps_untouched(sp.grad_arena, {&sp.dq, &sp.dk, &sp.dv})) << "wrote outside grads";
  }
  const double eq = max_abs_diff(ref.dq, dq), ek = max_abs_diff(ref.dk, dk), ev = max_abs_diff(ref.dv, dv);
  const double lq = max_abs_diff(ref.dq, low.dq), lk = max_abs_diff(ref.dk, low.dk), lv = max_abs_diff(ref.dv, low.dv);
  EXPECT_LE(eq, 2 * lq + floor) << "dq error " << eq << " vs naive " << lq;
  EXPECT_LE(ek, 2 * lk + floor) << "dk error " << ek << " vs naive " << lk;
  EXPECT_LE(ev, 2 * lv + floor) << "dv error " << ev << " vs naive " << lv;
}

INSTANTIATE_TEST_SUITE_P(Grid, CpuFlashBackward, ::testing::ValuesIn(kBwdCases),
                         [](const ::testing::TestParamInfo<BwdCase>& info) { return case_name(info.param); });

// deterministic = true: bit-identical gradients on repeated runs.
TEST(CpuFlashBackward, DeterministicIsBitIdentical) {
  Shape s;
  s.batch = 2, s.seqlen_q = 150, s.seqlen_k = 190, s.heads_q = 4, s.heads_kv = 1, s.head_dim = 64, s.causal = true;
  Problem pb(s, 31);
  pb.params.kernel = Kernel::kCpuFlash;
  pb.params.deterministic = true;
  ASSERT_TRUE(forward(pb.params).ok());
  ASSERT_TRUE(backward(pb.params).ok());
  const auto dq = pb.dq.bytes, dk = pb.dk.bytes, dv = pb.dv.bytes;
  for (int rep = 0; rep < 3; ++rep) {
    ASSERT_TRUE(backward(pb.params).ok());
    EXPECT_EQ(dq, pb.dq.bytes);
    EXPECT_EQ(dk, pb.dk.bytes);
    EXPECT_EQ(dv, pb.dv.bytes);
  }
}

// Rows that see no key contribute nothing and get dQ = 0 (never NaN).
TEST(CpuFlashBackward, FullyMaskedRowsHaveZeroGradient) {
  Shape s;
  s.seqlen_q = 90, s.seqlen_k = 10, s.heads_q = 2, s.heads_kv = 1, s.head_dim = 32, s.causal = true;
  s.softcap = 2.0f;
  Problem pb(s, 32);
  pb.params.kernel = Kernel::kCpuFlash;
  ASSERT_TRUE(forward(pb.params).ok());
  ASSERT_TRUE(backward(pb.params).ok());
  for (int64_t i = 0; i < 80 * 2 * 32; ++i) ASSERT_EQ(pb.dq.get(i), 0.0f) << i;
  for (int64_t i = 0; i < pb.dq.numel; ++i) ASSERT_FALSE(std::isnan(pb.dq.get(i))) << i;
  for (int64_t i = 0; i < pb.dk.numel; ++i) ASSERT_FALSE(std::isnan(pb.dk.get(i)) || std::isnan(pb.dv.get(i))) << i;
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
