// FlashAttention-2 backward on the GPU (Kernel::kFA2) against the float64 oracle.
//
// O and LSE come from the CPU oracle (Kernel::kReference, rounded into the dtype),
// so these tests don't depend on any GPU forward. Outputs are poisoned with NaN
// before every call; inputs are fresh random normals.
//
// Tolerance: err(kernel) <= 2 * err(lowprec) + floor, where the floor is
// tolerance_floor(dtype) * max(1, sqrt(max(seqlen_q, seqlen_k) / 64)). Why the
// sqrt: each gradient element is a sum over up to max(seqlen) terms of products
// rounded to 16 bits (P for dV, dS for dK/dQ), and the kernel rounds at other
// points than the naive lowprec baseline (dS before the scale, fp32 sums in a
// different order), so the two errors are independent and grow like sqrt(N).
// At N = 1000 the bf16 floor is 7.9e-3, well below the O(0.1..1) errors of a
// wrong mask row, a missing block or a dropped GQA head, which the tests catch.
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "bwd_test_util.h"
#include "gpu_test_util.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

// Runs the FA2 backward (bwd_test_util.h); returns false (the caller skips) when
// this build has no kernel for the shape.
bool run_gpu_backward(Problem& pb, bool deterministic, Status* status_out = nullptr) {
  const Status st = run_gpu_backward(pb, Kernel::kFA2, deterministic);
  if (status_out) *status_out = st;
  if (st.code == StatusCode::kUnsupported) return false;
  EXPECT_TRUE(st.ok()) << st.message;
  return st.ok();
}

// The test grid: every (seqlen pair, head dim) combination once, with heads,
// mask mode and dtype rotating through their values.
struct Case {
  Shape shape;
  std::string label;
};
std::vector<Case> grid_cases() {
  const std::pair<int64_t, int64_t> seqs[] = {{1, 1},    {7, 63},   {63, 7},     {65, 127},
                                              {127, 65}, {257, 1000}, {1000, 257}};
  const int64_t dims[] = {32, 40, 64, 80, 96, 128, 192, 256};
  const std::pair<int64_t, int64_t> heads[] = {{4, 4}, {8, 2}, {8, 1}};
  std::vector<Case> cases;
  int idx = 0;
  for (auto [sq, sk] : seqs)
    for (int64_t d : dims) {
      Shape s;
      s.batch = (idx % 5 == 0) ? 2 : 1;
      s.seqlen_q = sq;
      s.seqlen_k = sk;
      s.heads_q = heads[idx % 3].first;
      s.heads_kv = heads[idx % 3].second;
      s.head_dim = d;
      s.dtype = (idx / 3) % 2 ? DType::kFloat16 : DType::kBFloat16;
      const int mode = (idx + idx / 8) % 5;  // rotates independently of the head dim
      if (mode == 1) s.causal = true;
      if (mode == 2) s.window_left = 40, s.window_right = 7;
      if (mode == 3) s.softcap = 2.0f;
      if (mode == 4) s.causal = true, s.softcap = 5.0f;
      // Long sequences with many heads cost seconds in the float64 oracle: fewer heads there.
      if (sq * sk > 100000 && s.heads_q == 8 && s.heads_kv == 2) s.heads_q = 4, s.heads_kv = 1;
      cases.push_back({s, s.name()});
      ++idx;
    }
  return cases;
}

TEST(FA2Bwd, Grid) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  int ran = 0, skipped = 0;
  uint64_t seed = 1;
  for (const Case& c : grid_cases()) {
    Problem pb(c.shape, seed++);
    host_forward(pb);
    Status st;
    if (!run_gpu_backward(pb, /*deterministic=*/false, &st)) {
      ASSERT_EQ(st.code, StatusCode::kUnsupported) << st.message;
      ++skipped;
      continue;
    }
    check_against_oracle(pb, c.label);
    ++ran;
  }
  printf("FA2Bwd.Grid: %d cases ran, %d skipped (head dim not compiled)\n", ran, skipped);
  EXPECT_GT(ran, 0);
}

// Rows with no visible key (causal with seqlen_q > seqlen_k, a window that
// misses every key): LSE = -inf, dQ must be exactly 0, nothing NaN.
TEST(FA2Bwd, FullyMaskedRows) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (int mode = 0; mode < 2; ++mode) {
    Shape s;
    s.batch = 2;
    s.seqlen_q = 130;
    s.seqlen_k = 70;
    s.heads_q = 4;
    s.heads_kv = 2;
    s.head_dim = 64;
    s.dtype = DType::kBFloat16;
    if (mode == 0) s.causal = true;                         // rows 0..59 see nothing
    if (mode == 1) s.window_left = 0, s.window_right = 0;  // row i sees key i - 60 only
    Problem pb(s, 77 + mode);
    host_forward(pb);
    Status st;
    if (!run_gpu_backward(pb, false, &st)) GTEST_SKIP() << st.message;
    check_against_oracle(pb, s.name());
    int64_t masked_rows = 0;
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads_q; ++h)
        for (int64_t i = 0; i < s.seqlen_q; ++i) {
          if (!std::isinf(pb.lse[(b * s.heads_q + h) * s.seqlen_q + i])) continue;
          ++masked_rows;
          for (int64_t d = 0; d < s.head_dim; ++d)
            ASSERT_EQ(pb.dq.get(((b * s.seqlen_q + i) * s.heads_q + h) * s.head_dim + d), 0.0f);
        }
    EXPECT_GT(masked_rows, 0);
  }
}

bool same_bytes(const HostTensor& a, const HostTensor& b) {
  return a.bytes.size() == b.bytes.size() && std::memcmp(a.data(), b.data(), a.bytes.size()) == 0;
}

// deterministic = true: 10 runs give bit-identical dQ, dK, dV (and correct ones).
TEST(FA2Bwd, Deterministic) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (bool causal : {false, true}) {
    Shape s;
    s.batch = 2;
    s.seqlen_q = 700;  // 11 Q blocks x 5 key blocks: many ordered dQ additions per row
    s.seqlen_k = 555;
    s.heads_q = 4;
    s.heads_kv = 2;
    s.head_dim = 128;
    s.causal = causal;
    s.dtype = DType::kBFloat16;
    Problem pb(s, 4242);
    host_forward(pb);
    Status st;
    if (!run_gpu_backward(pb, true, &st)) GTEST_SKIP() << st.message;
    check_against_oracle(pb, s.name() + "_det");
    HostTensor dq0 = pb.dq, dk0 = pb.dk, dv0 = pb.dv;
    for (int run = 1; run < 10; ++run) {
      ASSERT_TRUE(run_gpu_backward(pb, true));
      EXPECT_TRUE(same_bytes(dq0, pb.dq)) << "dq differs in run " << run;
      EXPECT_TRUE(same_bytes(dk0, pb.dk)) << "dk differs in run " << run;
      EXPECT_TRUE(same_bytes(dv0, pb.dv)) << "dv differs in run " << run;
    }
  }
}

// Packed-QKV views with row gaps, padded dout batch stride (bwd_test_util.h).
TEST(FA2Bwd, Strided) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const Status st = strided_backward_case(Kernel::kFA2, 64);
  if (st.code == StatusCode::kUnsupported) GTEST_SKIP() << st.message;
  ASSERT_TRUE(st.ok()) << st.message;
}

TEST(FA2Bwd, Float32IsUnsupported) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlen_q = s.seqlen_k = 16;
  s.dtype = DType::kFloat32;
  Problem pb(s, 3);
  host_forward(pb);
  Status st;
  EXPECT_FALSE(run_gpu_backward(pb, false, &st));
  EXPECT_EQ(st.code, StatusCode::kUnsupported);
  EXPECT_NE(st.message.find("float32"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
