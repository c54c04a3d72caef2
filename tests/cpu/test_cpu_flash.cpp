// Kernel::kCpuFlash forward vs the float64 oracle, with FlashAttention's
// tolerance rule: err(kernel) <= 2 * err(naive in the input precision) + floor.
// A covering grid (not the cross product): every seqlen, head dim, GQA ratio,
// mask, softcap, dtype and layout appears, with seqlen_q != seqlen_k both ways.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#include "cpu/cpu_gemm.h"
#include "cpu_flash_layouts.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

struct FwdCase {
  int64_t batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
  bool causal;
  int64_t window_left, window_right;
  float softcap;
  DType dtype;
  Layout layout;
  int num_threads;
};

std::string case_name(const FwdCase& c) {
  Shape s;
  s.batch = c.batch, s.seqlen_q = c.seqlen_q, s.seqlen_k = c.seqlen_k, s.heads_q = c.heads_q;
  s.heads_kv = c.heads_kv, s.head_dim = c.head_dim, s.causal = c.causal, s.window_left = c.window_left;
  s.window_right = c.window_right, s.softcap = c.softcap, s.dtype = c.dtype;
  std::ostringstream os;
  os << s.name() << "_" << layout_name(c.layout) << "_t" << c.num_threads;
  std::string n = os.str();
  for (char& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

Shape to_shape(const FwdCase& c) {
  Shape s;
  s.batch = c.batch, s.seqlen_q = c.seqlen_q, s.seqlen_k = c.seqlen_k, s.heads_q = c.heads_q;
  s.heads_kv = c.heads_kv, s.head_dim = c.head_dim, s.causal = c.causal, s.window_left = c.window_left;
  s.window_right = c.window_right, s.softcap = c.softcap, s.dtype = c.dtype;
  return s;
}

constexpr DType F32 = DType::kFloat32, F16 = DType::kFloat16, BF16 = DType::kBFloat16;
constexpr Layout C = Layout::kContiguous, PK = Layout::kPackedQKV, HM = Layout::kHeadMajor;

// batch, sq, sk, hq, hkv, d, causal, wl, wr, softcap, dtype, layout, threads
const FwdCase kFwdCases[] = {
    {1, 1, 1, 4, 4, 32, false, -1, -1, 0.f, F32, C, 0},
    {3, 7, 63, 8, 2, 40, true, -1, -1, 0.f, F16, C, 0},
    {1, 63, 7, 8, 1, 64, true, -1, -1, 0.f, BF16, C, 0},  // sq > sk: fully masked rows
    {1, 65, 127, 4, 4, 80, false, 32, 0, 0.f, F32, C, 0},
    {3, 127, 65, 8, 2, 96, false, 17, 5, 0.f, F16, C, 0},
    {1, 257, 257, 4, 4, 128, false, -1, -1, 2.f, BF16, C, 0},
    {1, 1000, 257, 8, 1, 32, true, -1, -1, 0.f, F32, C, 0},
    {1, 65, 257, 4, 4, 192, false, -1, -1, 0.f, F32, C, 0},
    {1, 63, 257, 8, 1, 256, true, -1, -1, 0.f, BF16, C, 0},
    {1, 1000, 1000, 4, 4, 32, true, -1, -1, 0.f, F16, C, 0},
    {3, 1, 1000, 8, 2, 64, false, -1, -1, 1.5f, F32, C, 0},  // decode-like
    {1, 1000, 1, 4, 4, 40, false, 17, 5, 0.f, BF16, C, 0},
    {1, 257, 63, 8, 2, 128, false, 32, 0, 3.f, F16, C, 0},
    {3, 127, 127, 8, 1, 80, true, -1, -1, 5.f, F32, C, 3},  // odd thread count
    {1, 127, 1000, 4, 4, 256, false, 17, 5, 0.f, F32, C, 1},
    {1, 65, 63, 8, 2, 192, true, -1, -1, 0.f, F16, C, 0},
    {1, 7, 7, 4, 4, 96, false, -1, -1, 0.f, BF16, C, 0},
    // Non-contiguous: q/k/v slices of one packed qkv buffer; o head-major with gaps.
    {3, 65, 65, 8, 2, 64, true, -1, -1, 2.f, F32, PK, 0},
    {1, 257, 257, 4, 4, 40, false, 17, 5, 0.f, BF16, PK, 0},
    {1, 127, 127, 8, 1, 128, false, -1, -1, 0.f, F16, PK, 0},
    {1, 7, 127, 4, 4, 128, false, 32, 0, 0.f, BF16, HM, 0},
    {3, 257, 65, 8, 2, 32, true, -1, -1, 0.f, F32, HM, 0},
};

class CpuFlashForward : public ::testing::TestWithParam<FwdCase> {};

TEST_P(CpuFlashForward, MatchesReferenceWithinRule) {
  const FwdCase& c = GetParam();
  Problem pb(to_shape(c), 1000 + static_cast<uint64_t>(c.seqlen_q * 31 + c.seqlen_k + c.head_dim));
  StridedProblem sp;
  if (c.layout != Layout::kContiguous) sp.bind(pb, c.layout);
  BwdParams& p = pb.params;
  p.kernel = Kernel::kCpuFlash;
  p.num_threads = c.num_threads;

  const Status st = forward(p);
  ASSERT_TRUE(st.ok()) << st.message;
  const cpu::RefForward ref = cpu::reference_forward_f64(p);
  const LowPrecForward low = lowprec_forward(p);

  const double floor = tolerance_floor(c.dtype);
  double err_o, err_low_o = max_abs_diff(ref.out, low.out);
  if (c.layout == Layout::kContiguous) {
    err_o = max_abs_diff(ref.out, pb.o);
  } else {
    err_o = max_abs_diff(ref.out, sp.o.get());
    EXPECT_TRUE(StridedProblem::gaps_untouched(sp.out_arena, {&sp.o})) << "wrote outside o";
  }
  EXPECT_LE(err_o, 2 * err_low_o + floor) << "O error " << err_o << " vs naive " << err_low_o;
  const double err_lse = max_abs_diff_lse(ref.lse, pb.lse), err_low_lse = max_abs_diff_lse(ref.lse, low.lse);
  EXPECT_LE(err_lse, 2 * err_low_lse + floor) << "LSE error " << err_lse << " vs naive " << err_low_lse;
}

INSTANTIATE_TEST_SUITE_P(Grid, CpuFlashForward, ::testing::ValuesIn(kFwdCases),
                         [](const ::testing::TestParamInfo<FwdCase>& info) { return case_name(info.param); });

// Every head dim the kernel accepts (multiples of 8 up to 256), fp32, small problem.
TEST(CpuFlashForwardHeadDims, AllMultiplesOf8) {
  for (int64_t d = 8; d <= 256; d += 8) {
    Shape s;
    s.seqlen_q = 19, s.seqlen_k = 37, s.heads_q = 2, s.heads_kv = 1, s.head_dim = d, s.causal = (d % 16 == 0);
    Problem pb(s, 77 + d);
    pb.params.kernel = Kernel::kCpuFlash;
    ASSERT_TRUE(forward(pb.params).ok());
    const cpu::RefForward ref = cpu::reference_forward_f64(pb.params);
    const LowPrecForward low = lowprec_forward(pb.params);
    EXPECT_LE(max_abs_diff(ref.out, pb.o), 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(s.dtype)) << d;
    EXPECT_LE(max_abs_diff_lse(ref.lse, pb.lse), 2 * max_abs_diff_lse(ref.lse, low.lse) + tolerance_floor(s.dtype))
        << d;
  }
}

// Rows that see no key: O = 0 exactly and LSE = -inf, never NaN (causal with
// sq > sk, and a window that leaves the first rows empty).
TEST(CpuFlashForward, FullyMaskedRowsAreZeroWithMinusInfLse) {
  for (DType dt : {F32, F16, BF16}) {
    Shape s;
    s.seqlen_q = 150, s.seqlen_k = 20, s.heads_q = 2, s.heads_kv = 2, s.head_dim = 64, s.causal = true, s.dtype = dt;
    Problem pb(s, 5);
    pb.params.kernel = Kernel::kCpuFlash;
    ASSERT_TRUE(forward(pb.params).ok());
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 150; ++i) {
        const float lse = pb.lse[h * 150 + i];
        const bool masked = i < 130;  // row i sees keys j <= i - 130
        ASSERT_FALSE(std::isnan(lse));
        if (masked) {
          EXPECT_TRUE(std::isinf(lse) && lse < 0) << i;
          for (int64_t d = 0; d < 64; ++d) ASSERT_EQ(pb.o.get((i * 2 + h) * 64 + d), 0.0f) << i;
        } else {
          EXPECT_TRUE(std::isfinite(lse)) << i;
        }
      }
  }
}

// Large logits: the online softmax must not overflow where a naive exp would.
TEST(CpuFlashForward, LargeScoresStayFinite) {
  Shape s;
  s.seqlen_q = 33, s.seqlen_k = 300, s.head_dim = 64;
  Problem pb(s, 9);
  pb.params.softmax_scale = 40.0f;  // scores of order +-300
  pb.params.kernel = Kernel::kCpuFlash;
  ASSERT_TRUE(forward(pb.params).ok());
  const cpu::RefForward ref = cpu::reference_forward_f64(pb.params);
  const LowPrecForward low = lowprec_forward(pb.params);
  EXPECT_LE(max_abs_diff(ref.out, pb.o), 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(s.dtype));
  EXPECT_LE(max_abs_diff_lse(ref.lse, pb.lse), 2 * max_abs_diff_lse(ref.lse, low.lse) + 1e-4);
}

// Thread count does not change the forward result (no cross-item reduction).
TEST(CpuFlashForward, SameResultForAnyThreadCount) {
  Shape s;
  s.batch = 2, s.seqlen_q = 200, s.seqlen_k = 150, s.heads_q = 4, s.heads_kv = 2, s.head_dim = 64, s.causal = true;
  Problem a(s, 11), b(s, 11);
  a.params.kernel = b.params.kernel = Kernel::kCpuFlash;
  a.params.num_threads = 1;
  b.params.num_threads = 4;
  ASSERT_TRUE(forward(a.params).ok());
  ASSERT_TRUE(forward(b.params).ok());
  EXPECT_EQ(a.o.bytes, b.o.bytes);
  EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)));
}

// lse is optional in the forward.
TEST(CpuFlashForward, LseOptional) {
  Shape s;
  s.seqlen_q = 70, s.seqlen_k = 70, s.head_dim = 32;
  Problem pb(s, 12);
  pb.params.kernel = Kernel::kCpuFlash;
  pb.params.lse = nullptr;
  ASSERT_TRUE(forward(pb.params).ok());
  const cpu::RefForward ref = cpu::reference_forward_f64(pb.params);
  const LowPrecForward low = lowprec_forward(pb.params);
  EXPECT_LE(max_abs_diff(ref.out, pb.o), 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(s.dtype));
}

TEST(CpuFlash, ReportsSimdTarget) {
  const char* name = cpu::simd_target_name();
  ASSERT_NE(name, nullptr);
  std::printf("[ CPU SIMD ] %s\n", name);
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
