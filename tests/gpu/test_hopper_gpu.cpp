// The Hopper rung (Kernel::kHopper: wgmma + TMA + warp specialization) through
// flashattn::forward on device buffers, against the float64 oracle with the
// tolerance rule, LSE included, outputs poisoned with NaN.
//
// Skips when there is no GPU, the GPU is not sm_90, or this build has no
// Hopper kernel for the head dim; any other refusal on an sm_90 GPU fails.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

// Refusals that mean "not this build / not this GPU" (skip), as opposed to a bug.
bool is_build_refusal(const Status& st) {
  return st.code == StatusCode::kUnsupported && (st.message.find("no kernel compiled") != std::string::npos ||
                                                 st.message.find("needs an sm_90") != std::string::npos);
}

#define HOPPER_SKIP_UNLESS_SM90()                                          \
  do {                                                                     \
    FLASHATTN_SKIP_WITHOUT_GPU();                                          \
    if (!is_sm90()) GTEST_SKIP() << "not an sm_90 GPU";                    \
  } while (0)

// Runs one shape (contiguous tensors) with kHopper and checks O and LSE.
void run_case(const Shape& s, uint64_t seed = 42) {
  HOPPER_SKIP_UNLESS_SM90();
  Problem pb(s, seed);
  GpuProblem g(pb);
  ASSERT_TRUE(g.ok()) << "cudaMalloc failed";
  FwdParams p = g.fwd_params();
  p.kernel = Kernel::kHopper;
  const Status st = forward(p);
  if (is_build_refusal(st)) GTEST_SKIP() << st.message;
  ASSERT_TRUE(st.ok()) << s.name() << ": " << st.message;
  ASSERT_EQ(g.copy_outputs_to_host(pb), cudaSuccess);
  expect_forward_matches_oracle(pb, s.name());
}

TEST(HopperGpu, OddLengths) {
  for (int64_t n : {1, 7, 63, 65, 127, 257, 1000})
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      SCOPED_TRACE(n);
      run_case(make_shape(1, n, n, 2, 2, 128, dt));
    }
}

TEST(HopperGpu, OddLengthsCausal) {
  for (int64_t n : {1, 7, 63, 65, 127, 257, 1000}) {
    Shape s = make_shape(1, n, n, 2, 2, 64);
    s.causal = true;
    run_case(s);
  }
}

TEST(HopperGpu, UnequalLengths) {
  for (auto [sq, sk] : {std::pair<int64_t, int64_t>{100, 300}, {300, 100}, {1, 513}, {513, 1}, {129, 1000}})
    for (bool causal : {false, true}) {
      Shape s = make_shape(1, sq, sk, 2, 2, 128);
      s.causal = causal;
      run_case(s);
    }
}

TEST(HopperGpu, HeadDims) {
  for (int64_t d : {32, 64, 96, 128, 192, 256})
    for (bool causal : {false, true}) {
      Shape s = make_shape(1, 200, 333, 2, 2, d);
      s.causal = causal;
      run_case(s);
    }
}

TEST(HopperGpu, HeadDimsFp16) {
  for (int64_t d : {64, 128, 256}) run_case(make_shape(2, 150, 150, 2, 1, d, DType::kFloat16));
}

TEST(HopperGpu, GroupedQueryAttention) {
  for (int64_t hkv : {2, 1})
    for (bool causal : {false, true}) {
      Shape s = make_shape(1, 150, 250, 8, hkv, 128);
      s.causal = causal;
      run_case(s);
    }
}

TEST(HopperGpu, SlidingWindow) {
  for (auto [wl, wr] : {std::pair<int64_t, int64_t>{64, 0}, {32, 32}, {-1, 16}, {100, -1}, {0, 0}}) {
    Shape s = make_shape(1, 300, 333, 2, 2, 128);
    s.window_left = wl;
    s.window_right = wr;
    run_case(s);
  }
}

TEST(HopperGpu, Softcap) {
  Shape s = make_shape(1, 257, 257, 2, 2, 128);
  s.softcap = 30.0f;
  run_case(s);
  s.causal = true;
  s.softcap = 5.0f;
  run_case(s);
  s = make_shape(1, 130, 200, 2, 1, 64);
  s.window_left = 40;
  s.window_right = 3;
  s.softcap = 10.0f;
  run_case(s);
}

// Causal with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k rows see no key
// (bottom-right alignment): O = 0 and LSE = -inf, never NaN.
TEST(HopperGpu, FullyMaskedRows) {
  Shape s = make_shape(1, 300, 100, 2, 2, 128);
  s.causal = true;
  run_case(s);
  s = make_shape(2, 257, 64, 2, 1, 64);
  s.causal = true;
  run_case(s);
}

TEST(HopperGpu, Batch3) {
  Shape s = make_shape(3, 191, 211, 4, 2, 128);
  run_case(s);
  s.causal = true;
  run_case(s);
}

// More tiles than SMs: each persistent CTA runs several tiles (the Q / K / V
// barrier phases carry over from tile to tile).
TEST(HopperGpu, PersistentManyTiles) {
  Shape s = make_shape(2, 520, 520, 14, 2, 64);  // 5 m-blocks x 28 heads = 140 tiles > 132 SMs
  run_case(s);
  s.causal = true;
  run_case(s, 7);
}

// Causal / window tiles run longest first in groups of (batch, head) pairs whose K/V
// fit in L2 (tile_scheduler.cuh). Real shapes need long sequences for several
// groups, so the group size is forced: 3 pairs of 10 (a short first 1 + 3 + 3 + 3),
// and 4 with GQA (query heads of one KV head adjacent), every tile exactly once.
struct ForcedL2Heads {  // sets FLASHATTN_HOPPER_L2_HEADS for one scope
  explicit ForcedL2Heads(const char* n) { setenv("FLASHATTN_HOPPER_L2_HEADS", n, 1); }
  ~ForcedL2Heads() { unsetenv("FLASHATTN_HOPPER_L2_HEADS"); }
};
TEST(HopperGpu, CausalL2Groups) {
  {
    ForcedL2Heads three("3");
    Shape s = make_shape(2, 700, 650, 5, 5, 128);
    s.causal = true;
    run_case(s, 11);
  }
  ForcedL2Heads four("4");
  Shape g = make_shape(3, 300, 300, 4, 2, 64);
  g.window_left = 100, g.window_right = 0;
  run_case(g, 12);
}

// The dynamic tile schedule (producer.cuh) claims tiles from a counter in the
// per-stream scratch that every launch must leave at zero: one left behind would
// make the next launch on that stream skip tiles. Back-to-back launches of two
// shapes with more tiles than SMs (causal + GQA, and Nq != Nk), alternating
// between the default stream and a created one, outputs poisoned before each:
// the first result of each shape matches the oracle and every later one is
// bit-identical to it (a tile is computed the same way whichever CTA claims it).
TEST(HopperGpu, DynamicScheduleRepeats) {
  HOPPER_SKIP_UNLESS_SM90();
  Shape a = make_shape(2, 520, 520, 14, 2, 64);  // 5 m-blocks x 28 heads = 140 tiles
  a.causal = true;
  Shape c = make_shape(1, 1030, 300, 20, 5, 128);  // 9 x 20 = 180 tiles
  Problem problems[2] = {Problem(a, 21), Problem(c, 22)};
  GpuProblem gpu[2] = {GpuProblem(problems[0]), GpuProblem(problems[1])};
  ASSERT_TRUE(gpu[0].ok() && gpu[1].ok());
  cudaStream_t side = nullptr;
  ASSERT_EQ(cudaStreamCreate(&side), cudaSuccess);
  std::vector<uint8_t> first_o[2];
  std::vector<float> first_lse[2];
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 2; ++i) {
      ASSERT_EQ(gpu[i].o.poison(), cudaSuccess);
      ASSERT_EQ(gpu[i].lse.poison(), cudaSuccess);
      FwdParams p = gpu[i].fwd_params();
      p.kernel = Kernel::kHopper;
      p.stream = round % 2 == 1 ? side : nullptr;
      const Status st = forward(p);
      if (is_build_refusal(st)) {
        cudaStreamDestroy(side);
        GTEST_SKIP() << st.message;
      }
      ASSERT_TRUE(st.ok()) << st.message;
      ASSERT_EQ(gpu[i].copy_outputs_to_host(problems[i]), cudaSuccess);
      if (round == 0) {
        expect_forward_matches_oracle(problems[i], problems[i].shape.name());
        first_o[i] = problems[i].o.bytes;
        first_lse[i] = problems[i].lse;
      } else {
        EXPECT_TRUE(problems[i].o.bytes == first_o[i]) << problems[i].shape.name() << " round " << round << " O";
        EXPECT_EQ(std::memcmp(problems[i].lse.data(), first_lse[i].data(), first_lse[i].size() * sizeof(float)), 0)
            << problems[i].shape.name() << " round " << round << " LSE";
      }
    }
  }
  EXPECT_EQ(cudaStreamDestroy(side), cudaSuccess);
}

// Captured into a CUDA graph (inference engines replay their decode/prefill
// steps this way): the call then takes its own zeroed tile counter
// (stream_scratch.h) as nodes of the graph. More tiles than SMs, causal, so the
// dynamic schedule claims from it; the graph is replayed three times with the
// outputs poisoned in between, and every replay must give the oracle's result,
// bit-identical to a direct call.
TEST(HopperGpu, InCudaGraph) {
  HOPPER_SKIP_UNLESS_SM90();
  Shape s = make_shape(2, 700, 650, 24, 8, 128);  // 6 m-blocks x 48 heads = 288 tiles
  s.causal = true;
  Problem pb(s, 31);
  GpuProblem g(pb);
  ASSERT_TRUE(g.ok());
  FwdParams p = g.fwd_params();
  p.kernel = Kernel::kHopper;
  Status st = forward(p);  // direct call on the default stream: the reference bits
  if (is_build_refusal(st)) GTEST_SKIP() << st.message;
  ASSERT_TRUE(st.ok()) << st.message;
  ASSERT_EQ(g.copy_outputs_to_host(pb), cudaSuccess);
  expect_forward_matches_oracle(pb, "direct " + s.name());
  const std::vector<uint8_t> direct_o = pb.o.bytes;
  const std::vector<float> direct_lse = pb.lse;

  cudaStream_t stream = nullptr;
  FA_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  p.stream = stream;
  cudaGraph_t graph = nullptr;
  FA_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  st = forward(p);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  ASSERT_TRUE(st.ok()) << st.message;
  FA_TEST_CUDA(end);
  cudaGraphExec_t exec = nullptr;
  FA_TEST_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 3; ++replay) {
    FA_TEST_CUDA(g.o.poison());
    FA_TEST_CUDA(g.lse.poison());
    FA_TEST_CUDA(cudaDeviceSynchronize());  // the non-blocking stream does not wait for the memsets
    FA_TEST_CUDA(cudaGraphLaunch(exec, stream));
    FA_TEST_CUDA(cudaStreamSynchronize(stream));
    ASSERT_EQ(g.copy_outputs_to_host(pb), cudaSuccess);
    EXPECT_TRUE(pb.o.bytes == direct_o) << "replay " << replay << " O";
    EXPECT_EQ(std::memcmp(pb.lse.data(), direct_lse.data(), direct_lse.size() * sizeof(float)), 0)
        << "replay " << replay << " LSE";
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// q, k, v as views of one packed [batch, seqlen, 3, heads, dim] tensor, and an
// output with padded rows: the TMA maps must use the real strides.
TEST(HopperGpu, StridedPackedQkv) {
  HOPPER_SKIP_UNLESS_SM90();
  for (int64_t d : {64, 128}) {
    Shape s = make_shape(2, 177, 177, 3, 3, d);
    s.causal = d == 128;
    Problem pb(s, 99);
    const int64_t B = s.batch, S = s.seqlen_q, H = s.heads_q, D = d;
    HostTensor qkv(s.dtype, B * S * 3 * H * D);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t x = 0; x < D; ++x) {
            const int64_t src = ((b * S + i) * H + h) * D + x;
            const int64_t dst = (((b * S + i) * 3) * H + h) * D + x;
            qkv.set(dst, pb.q.get(src));
            qkv.set(dst + H * D, pb.k.get(src));
            qkv.set(dst + 2 * H * D, pb.v.get(src));
          }
    const int64_t o_row = H * D + 64;  // padded output rows
    DeviceBuffer dqkv = to_device(qkv);
    DeviceBuffer dout(static_cast<size_t>(B * S * o_row * 2));
    DeviceBuffer dlse(static_cast<size_t>(B * H * S * 4));
    ASSERT_TRUE(dqkv.get() && dout.get() && dlse.get());
    ASSERT_EQ(dout.poison(), cudaSuccess);
    ASSERT_EQ(dlse.poison(), cudaSuccess);
    FwdParams p = pb.params;
    const char* base = dqkv.as<char>();
    p.q = base;
    p.k = base + H * D * 2;
    p.v = base + 2 * H * D * 2;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = 3 * H * D;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = D;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = S * 3 * H * D;
    p.o = dout.get();
    p.o_row_stride = o_row;
    p.o_head_stride = D;
    p.o_batch_stride = S * o_row;
    p.lse = dlse.as<float>();
    p.device = Device::kCUDA;
    p.kernel = Kernel::kHopper;
    const Status st = forward(p);
    if (is_build_refusal(st)) GTEST_SKIP() << st.message;
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    HostTensor o_padded(s.dtype, B * S * o_row);
    ASSERT_EQ(to_host(dout, o_padded), cudaSuccess);
    ASSERT_EQ(dlse.download(pb.lse.data(), pb.lse.size() * 4), cudaSuccess);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t x = 0; x < H * D; ++x) pb.o.set((b * S + i) * H * D + x, o_padded.get((b * S + i) * o_row + x));
    expect_forward_matches_oracle(pb, "packed qkv d" + std::to_string(d));
  }
}

// On an sm_90 GPU, fp32 is refused with a reason (kAuto then falls back).
TEST(HopperGpu, RefusesFloat32) {
  HOPPER_SKIP_UNLESS_SM90();
  Problem pb(make_shape(1, 16, 16, 1, 1, 64, DType::kFloat32), 1);
  GpuProblem g(pb);
  ASSERT_TRUE(g.ok());
  FwdParams p = g.fwd_params();
  p.kernel = Kernel::kHopper;
  const Status st = forward(p);
  EXPECT_EQ(st.code, StatusCode::kUnsupported);
  EXPECT_NE(st.message.find("float16"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
