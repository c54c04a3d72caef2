// The oracle itself: tiny hand-checkable cases, and the fully-masked-row contract.
#include <cmath>

#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

TEST(Reference, SingleKeyCopiesValue) {
  Shape s;
  s.seqlen_q = 3;
  s.seqlen_k = 1;
  s.head_dim = 8;
  Problem pb(s, 1);
  auto r = cpu::reference_forward_f64(pb.params);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t d = 0; d < 8; ++d) EXPECT_NEAR(r.out[i * 8 + d], pb.v.get(d), 1e-12);
}

TEST(Reference, UniformScoresAverageValues) {
  Shape s;
  s.seqlen_q = 2;
  s.seqlen_k = 5;
  s.head_dim = 8;
  Problem pb(s, 2);
  pb.q.fill(0.0f);  // all scores 0 -> P uniform, O = mean of V, LSE = log(5)
  auto r = cpu::reference_forward_f64(pb.params);
  for (int64_t d = 0; d < 8; ++d) {
    double mean = 0;
    for (int64_t j = 0; j < 5; ++j) mean += pb.v.get(j * 8 + d) / 5.0;
    EXPECT_NEAR(r.out[d], mean, 1e-12);
  }
  EXPECT_NEAR(r.lse[0], std::log(5.0), 1e-12);
}

TEST(Reference, CausalBottomRightAndFullyMaskedRows) {
  // seqlen_q > seqlen_k with causal: the first seqlen_q - seqlen_k rows see no key.
  Shape s;
  s.seqlen_q = 5;
  s.seqlen_k = 3;
  s.head_dim = 8;
  s.causal = true;
  Problem pb(s, 3);
  auto r = cpu::reference_forward_f64(pb.params);
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(std::isinf(r.lse[i]) && r.lse[i] < 0);
    for (int64_t d = 0; d < 8; ++d) EXPECT_EQ(r.out[i * 8 + d], 0.0);
  }
  // Row 2 sees exactly key 0: O = V[0].
  for (int64_t d = 0; d < 8; ++d) EXPECT_NEAR(r.out[2 * 8 + d], pb.v.get(d), 1e-12);
}

TEST(Reference, LowPrecBaselineIsCloseInFp32) {
  Shape s;
  s.seqlen_q = 7;
  s.seqlen_k = 13;
  s.heads_q = 4;
  s.heads_kv = 2;
  s.head_dim = 32;
  Problem pb(s, 4);
  auto ref = cpu::reference_forward_f64(pb.params);
  auto low = lowprec_forward(pb.params);
  EXPECT_LT(max_abs_diff(ref.out, low.out), 1e-5);
  EXPECT_LT(max_abs_diff_lse(ref.lse, low.lse), 1e-5);
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
