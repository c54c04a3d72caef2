// The Hopper backward (Kernel::kHopper: wgmma + TMA, sm90/bwd_kernel.cuh)
// against the float64 oracle, and kAuto (which tries it first on an H100).
//
// O and LSE come from the CPU oracle (rounded into the dtype), so these tests
// don't depend on any GPU forward. Outputs are poisoned with NaN before every
// call; inputs are fresh random normals. Tolerance as in test_bwd_gpu.cpp:
// err(kernel) <= 2 * err(lowprec) + floor, floor = tolerance_floor(dtype) *
// max(1, sqrt(max(seqlen_q, seqlen_k) / 64)).
//
// Skips when there is no GPU, the GPU is not sm_90, or this build has no Hopper
// backward for the head dim; any other refusal on an sm_90 GPU fails.
//
// Kernel variants: every test runs whatever FLASHATTN_HOPPER_BWD_VARIANT
// selects (run the binary once per variant); HopperBwd.Variants also loops over
// kVariants itself (setenv, restored afterwards). deterministic=true runs the
// bulk-dQ kernel with semaphores: HopperBwd.Deterministic* compare the bits.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
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

// "Not this build / not this GPU" (skip), as opposed to a bug.
bool is_build_refusal(const Status& st) {
  return st.code == StatusCode::kUnsupported && (st.message.find("no kernel compiled") != std::string::npos ||
                                                 st.message.find("needs an sm_90") != std::string::npos);
}

// The dQ variants (FLASHATTN_HOPPER_BWD_VARIANT) are experiments, off unless
// FLASHATTN_HOPPER_BWD_EXPERIMENTS=1 (hopper_bwd.cu); the deterministic mode is on.
bool experiments_on() {
  const char* e = std::getenv("FLASHATTN_HOPPER_BWD_EXPERIMENTS");
  return e != nullptr && std::string(e) == "1";
}
#define HOPPER_BWD_SKIP_UNLESS_EXPERIMENTS() \
  do {                                       \
    if (!experiments_on()) GTEST_SKIP() << "Hopper backward experiments off (FLASHATTN_HOPPER_BWD_EXPERIMENTS=1 runs them)"; \
  } while (0)

#define HOPPER_BWD_SKIP_UNLESS_SM90()                    \
  do {                                                   \
    FLASHATTN_SKIP_WITHOUT_GPU();                        \
    if (!is_sm90()) GTEST_SKIP() << "not an sm_90 GPU";  \
  } while (0)

// One case with kHopper: skips on a build refusal, fails on any other error.
void run_case(const Shape& s, uint64_t seed) {
  Problem pb(s, seed);
  host_forward(pb);
  const Status st = run_gpu_backward(pb, Kernel::kHopper);
  if (is_build_refusal(st)) {
    printf("  %-60s skipped: %s\n", s.name().c_str(), st.message.c_str());
    return;
  }
  ASSERT_TRUE(st.ok()) << s.name() << ": " << st.message;
  check_against_oracle(pb, s.name());
}

// Every (seqlen pair, head dim) once, with heads, mask mode, dtype and batch
// rotating through their values. Head dims 40/96/120 run padded (64 / 128).
TEST(HopperBwd, Grid) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  const std::pair<int64_t, int64_t> seqs[] = {{1, 1},     {1, 300},   {63, 65},  {65, 63},  {127, 128},
                                              {128, 127}, {129, 257}, {257, 129}, {300, 300}, {128, 1}};
  const int64_t dims[] = {64, 128, 40, 96, 120};
  const std::pair<int64_t, int64_t> heads[] = {{4, 4}, {8, 2}, {4, 1}};
  int idx = 0;
  for (auto [sq, sk] : seqs)
    for (int64_t d : dims) {
      Shape s;
      s.batch = idx % 3 == 0 ? 2 : 1;
      s.seqlen_q = sq;
      s.seqlen_k = sk;
      s.heads_q = heads[idx % 3].first;
      s.heads_kv = heads[idx % 3].second;
      s.head_dim = d;
      s.dtype = (idx / 2) % 2 ? DType::kFloat16 : DType::kBFloat16;
      const int mode = (idx + idx / 5) % 5;  // rotates independently of the head dim
      if (mode == 1) s.causal = true;
      if (mode == 2) s.window_left = 40, s.window_right = 7;
      if (mode == 3) s.softcap = 2.0f;
      if (mode == 4) s.causal = true, s.window_left = 50;
      SCOPED_TRACE(s.name());
      run_case(s, 1000 + idx);
      ++idx;
    }
}

// Masks at the key-block boundaries (128 keys per CTA, 64-row Q blocks).
TEST(HopperBwd, Masks) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  const std::pair<int64_t, int64_t> windows[] = {{-1, 0}, {64, 0}, {32, 32}, {-1, 16}, {100, -1}, {0, 0}, {127, 1}};
  int idx = 0;
  for (auto [wl, wr] : windows)
    for (int64_t d : {64, 128}) {
      Shape s;
      s.batch = 1;
      s.seqlen_q = 200;
      s.seqlen_k = 333;
      s.heads_q = 2;
      s.heads_kv = 1;
      s.head_dim = d;
      s.window_left = wl;
      s.window_right = wr;
      s.dtype = idx % 2 ? DType::kFloat16 : DType::kBFloat16;
      SCOPED_TRACE(s.name());
      run_case(s, 2000 + idx++);
    }
}

// Rows with no visible key (causal with seqlen_q > seqlen_k, a window that
// misses every key): LSE = -inf, dQ must be exactly 0, nothing NaN.
TEST(HopperBwd, FullyMaskedRows) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  for (int64_t d : {64, 128})
    for (int mode = 0; mode < 4; ++mode) {  // modes 2, 3: 0, 1 with deterministic = true
      const bool det = mode >= 2;
      Shape s;
      s.batch = 2;
      s.seqlen_q = 130;
      s.seqlen_k = 70;
      s.heads_q = 4;
      s.heads_kv = 2;
      s.head_dim = d;
      s.dtype = DType::kBFloat16;
      if (mode % 2 == 0) s.causal = true;                         // rows 0..59 see nothing
      if (mode % 2 == 1) s.window_left = 0, s.window_right = 0;  // row i sees key i - 60 only
      SCOPED_TRACE(s.name() + (det ? "_det" : ""));
      Problem pb(s, 77 + mode);
      host_forward(pb);
      const Status st = run_gpu_backward(pb, Kernel::kHopper, det);
      if (is_build_refusal(st)) continue;
      ASSERT_TRUE(st.ok()) << st.message;
      check_against_oracle(pb, s.name());
      int64_t masked_rows = 0;
      for (int64_t b = 0; b < s.batch; ++b)
        for (int64_t h = 0; h < s.heads_q; ++h)
          for (int64_t i = 0; i < s.seqlen_q; ++i) {
            if (!std::isinf(pb.lse[(b * s.heads_q + h) * s.seqlen_q + i])) continue;
            ++masked_rows;
            for (int64_t c = 0; c < s.head_dim; ++c)
              ASSERT_EQ(pb.dq.get(((b * s.seqlen_q + i) * s.heads_q + h) * s.head_dim + c), 0.0f)
                  << "row " << i << " head " << h;
          }
      EXPECT_GT(masked_rows, 0);
    }
}

// Longer sequences: many Q blocks per key block (the 2-stage ring wraps, the
// dS^T double buffer alternates), GQA over several Q blocks per head.
TEST(HopperBwd, Long) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  for (int64_t d : {64, 128})
    for (bool causal : {false, true}) {
      Shape s;
      s.batch = 1;
      s.seqlen_q = 800;
      s.seqlen_k = 600;
      s.heads_q = 4;
      s.heads_kv = 2;
      s.head_dim = d;
      s.causal = causal;
      s.dtype = DType::kBFloat16;
      SCOPED_TRACE(s.name());
      run_case(s, 3000 + d + causal);
    }
}

// kAuto picks the Hopper backward on an H100: same results as kHopper (up to
// the order of the fp32 dQ atomics) and correct; deterministic too.
TEST(HopperBwd, AutoMatchesHopper) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  Shape s;
  s.batch = 2;
  s.seqlen_q = 257;
  s.seqlen_k = 300;
  s.heads_q = 8;
  s.heads_kv = 2;
  s.head_dim = 128;
  s.causal = true;
  s.dtype = DType::kBFloat16;
  Problem pb(s, 4242);
  host_forward(pb);
  Status st = run_gpu_backward(pb, Kernel::kHopper);
  if (is_build_refusal(st)) GTEST_SKIP() << st.message;
  ASSERT_TRUE(st.ok()) << st.message;
  const Oracle o = oracle(pb);
  check_against_oracle(pb, s.name() + "_hopper", o);
  const HostTensor dq = pb.dq, dk = pb.dk, dv = pb.dv;
  st = run_gpu_backward(pb, Kernel::kAuto);
  ASSERT_TRUE(st.ok()) << st.message;
  check_against_oracle(pb, s.name() + "_auto", o);
  // Same kernel, other order of the fp32 dQ atomics: a bf16 rounding may flip,
  // so allow 2 ulps of the largest value (plus the floor).
  auto same = [&](const HostTensor& a, const HostTensor& b, const char* what) {
    const std::vector<double> ad = a.to_double();
    double amax = 0.0;
    for (double x : ad) amax = std::max(amax, std::fabs(x));
    EXPECT_LE(max_abs_diff(ad, b), amax / 64.0 + bwd_floor(s)) << "auto vs hopper " << what;
  };
  same(dq, pb.dq, "dq");
  same(dk, pb.dk, "dk");
  same(dv, pb.dv, "dv");

  // Deterministic: kHopper runs it (bulk dQ + semaphores), kAuto picks it: same bits.
  st = run_gpu_backward(pb, Kernel::kHopper, /*deterministic=*/true);
  ASSERT_TRUE(st.ok()) << st.message;
  check_against_oracle(pb, s.name() + "_hopper_det", o);
  const HostTensor ddq = pb.dq, ddk = pb.dk, ddv = pb.dv;
  st = run_gpu_backward(pb, Kernel::kAuto, /*deterministic=*/true);
  ASSERT_TRUE(st.ok()) << st.message;
  check_against_oracle(pb, s.name() + "_auto_det", o);
  EXPECT_TRUE(ddq.bytes == pb.dq.bytes && ddk.bytes == pb.dk.bytes && ddv.bytes == pb.dv.bytes)
      << "deterministic kAuto and kHopper differ";
}

// deterministic=true: the same inputs 10 times give bit-identical dq, dk, dv
// (odd lengths, several key blocks per Q block, GQA 8/2, causal and not), and
// the first run is correct. The same loop without `deterministic` prints how
// many runs differed (the fp32 dQ atomics in another order), which shows the
// comparison can fail; it is not asserted (equal by chance is possible).
TEST(HopperBwd, Deterministic) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  int idx = 0;
  for (int64_t d : {64, 128})
    for (bool causal : {false, true}) {
      Shape s;
      s.batch = 1 + idx % 2;
      s.seqlen_q = 777;
      s.seqlen_k = 1029;  // 9 key blocks
      s.heads_q = 8;
      s.heads_kv = 2;
      s.head_dim = d == 64 ? 64 : 120;
      s.causal = causal;
      s.dtype = idx % 2 ? DType::kFloat16 : DType::kBFloat16;
      if (idx == 3) s.window_left = 300;  // causal + window: each Q block sees a middle range of key blocks
      SCOPED_TRACE(s.name());
      Problem pb(s, 6000 + idx++);
      host_forward(pb);
      for (bool det : {true, false}) {
        Status st = run_gpu_backward(pb, Kernel::kHopper, det);
        if (is_build_refusal(st)) break;
        ASSERT_TRUE(st.ok()) << st.message;
        if (det) check_against_oracle(pb, s.name() + "_det");
        const HostTensor dq = pb.dq, dk = pb.dk, dv = pb.dv;
        int differ = 0;
        for (int run = 1; run < 10; ++run) {
          st = run_gpu_backward(pb, Kernel::kHopper, det);
          ASSERT_TRUE(st.ok()) << st.message;
          const bool same_dq = std::memcmp(dq.data(), pb.dq.data(), dq.bytes.size()) == 0;
          const bool same_dkv = std::memcmp(dk.data(), pb.dk.data(), dk.bytes.size()) == 0 &&
                                std::memcmp(dv.data(), pb.dv.data(), dv.bytes.size()) == 0;
          if (det) {
            EXPECT_TRUE(same_dq) << "run " << run << ": dq bits differ";
            EXPECT_TRUE(same_dkv) << "run " << run << ": dk/dv bits differ";
          }
          differ += !(same_dq && same_dkv);
        }
        printf("  %-60s %s: %d of 9 reruns differ\n", s.name().c_str(), det ? "deterministic" : "default", differ);
      }
    }
}

// Deterministic with more CTAs than SMs (several waves: the semaphore waits
// must only ever wait for CTAs already scheduled) and a long key range: the
// bits of 3 runs agree and match the default kernel within the tolerance of
// another summation order (no oracle: too slow on the CPU at this size).
TEST(HopperBwd, DeterministicWaves) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  for (bool causal : {false, true}) {
    Shape s;
    s.batch = 2;
    s.seqlen_q = s.seqlen_k = 3001;  // 24 key blocks x 8 kv heads x 2 = 384 CTAs
    s.heads_q = s.heads_kv = 8;
    s.head_dim = 128;
    s.causal = causal;
    s.dtype = DType::kBFloat16;
    SCOPED_TRACE(s.name());
    Problem pb(s, 7000 + causal);
    // O and LSE from the GPU forward (the CPU oracle is too slow here; fa2, not
    // auto, so this test doesn't depend on the Hopper forward's experiments).
    {
      GpuProblem g(pb, /*with_backward=*/false);
      ASSERT_TRUE(g.ok());
      FwdParams f = g.fwd_params();
      f.kernel = Kernel::kFA2;
      const Status fst = forward(f);
      ASSERT_TRUE(fst.ok()) << fst.message;
      ASSERT_EQ(g.copy_outputs_to_host(pb), cudaSuccess);
    }
    Status st = run_gpu_backward(pb, Kernel::kHopper, /*deterministic=*/false);
    if (is_build_refusal(st)) GTEST_SKIP() << st.message;
    ASSERT_TRUE(st.ok()) << st.message;
    const HostTensor ref_dq = pb.dq;
    HostTensor dq, dk, dv;
    for (int run = 0; run < 3; ++run) {
      st = run_gpu_backward(pb, Kernel::kHopper, /*deterministic=*/true);
      ASSERT_TRUE(st.ok()) << st.message;
      if (run == 0) {
        dq = pb.dq, dk = pb.dk, dv = pb.dv;
        const std::vector<double> a = ref_dq.to_double();
        double amax = 0.0;
        for (double x : a) amax = std::max(amax, std::fabs(x));
        EXPECT_LE(max_abs_diff(a, pb.dq), amax / 64.0 + bwd_floor(s)) << "deterministic vs default dq";
      } else {
        EXPECT_TRUE(dq.bytes == pb.dq.bytes) << "run " << run << ": dq bits differ";
        EXPECT_TRUE(dk.bytes == pb.dk.bytes && dv.bytes == pb.dv.bytes) << "run " << run << ": dk/dv bits differ";
      }
    }
  }
}

// Every kernel variant of FLASHATTN_HOPPER_BWD_VARIANT in one process (the
// variable is set here and restored): a slice of the grid plus a deterministic
// case per variant against the oracle.
TEST(HopperBwd, Variants) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  HOPPER_BWD_SKIP_UNLESS_EXPERIMENTS();
  static const char* const kVariants[] = {"", "bulk", "dqfirst", "bulk,dqfirst", "dq32", "bulk,dqfirst,dq32"};
  const char* old_env = std::getenv("FLASHATTN_HOPPER_BWD_VARIANT");
  const std::string saved = old_env ? old_env : "";
  for (const char* v : kVariants) {
    setenv("FLASHATTN_HOPPER_BWD_VARIANT", v, 1);
    SCOPED_TRACE(std::string("variant '") + v + "'");
    printf("  variant '%s'\n", v);
    const std::pair<int64_t, int64_t> seqs[] = {{63, 65}, {257, 129}, {300, 511}, {128, 1}};
    int idx = 0;
    for (auto [sq, sk] : seqs)
      for (int64_t d : {64, 96, 128}) {
        Shape s;
        s.batch = 1 + idx % 2;
        s.seqlen_q = sq;
        s.seqlen_k = sk;
        s.heads_q = idx % 3 == 1 ? 8 : 4;
        s.heads_kv = idx % 3 == 1 ? 2 : 4;
        s.head_dim = d;
        s.dtype = idx % 2 ? DType::kFloat16 : DType::kBFloat16;
        const int mode = idx % 4;
        if (mode == 1) s.causal = true;
        if (mode == 2) s.softcap = 2.0f;
        if (mode == 3) s.window_left = 40, s.window_right = 7;
        run_case(s, 8000 + idx++);
      }
    for (int64_t d : {64, 128}) {
      Shape s;
      s.batch = 1;
      s.seqlen_q = 201;
      s.seqlen_k = 395;
      s.heads_q = 8;
      s.heads_kv = 2;
      s.head_dim = d;
      s.causal = d == 128;
      s.dtype = DType::kBFloat16;
      Problem pb(s, 8100 + d);
      host_forward(pb);
      const Status st = run_gpu_backward(pb, Kernel::kHopper, /*deterministic=*/true);
      if (is_build_refusal(st)) continue;
      ASSERT_TRUE(st.ok()) << st.message;
      check_against_oracle(pb, s.name() + "_det");
    }
  }
  if (old_env)
    setenv("FLASHATTN_HOPPER_BWD_VARIANT", saved.c_str(), 1);
  else
    unsetenv("FLASHATTN_HOPPER_BWD_VARIANT");
}

// Packed-QKV views with row gaps, padded dout batch stride (bwd_test_util.h): the
// TMA maps take the real strides, the epilogue writes only the rows' own columns.
TEST(HopperBwd, Strided) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  const Status st = strided_backward_case(Kernel::kHopper, 96);
  if (is_build_refusal(st)) GTEST_SKIP() << st.message;
  ASSERT_TRUE(st.ok()) << st.message;
}

// What the Hopper backward refuses (kAuto then runs FA2): float32, head dims > 128.
TEST(HopperBwd, Refusals) {
  HOPPER_BWD_SKIP_UNLESS_SM90();
  for (int64_t d : {192, 256}) {
    Shape s;
    s.seqlen_q = s.seqlen_k = 16;
    s.head_dim = d;
    s.dtype = DType::kBFloat16;
    Problem pb(s, 3);
    host_forward(pb);
    const Status st = run_gpu_backward(pb, Kernel::kHopper);
    EXPECT_EQ(st.code, StatusCode::kUnsupported) << st.message;
  }
  Shape s;
  s.seqlen_q = s.seqlen_k = 16;
  s.dtype = DType::kFloat32;
  Problem pb(s, 3);
  host_forward(pb);
  const Status st = run_gpu_backward(pb, Kernel::kHopper);
  EXPECT_EQ(st.code, StatusCode::kUnsupported) << st.message;
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
