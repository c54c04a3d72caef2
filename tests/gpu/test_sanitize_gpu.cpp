// Small cases of every CUDA kernel, run under compute-sanitizer (memcheck,
// racecheck, synccheck) by scripts/gpu_check.sh. Each case also checks the
// result, so a sanitizer run that "passes" on garbage is impossible.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

struct DeviceCopy {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceCopy(const void* host, size_t n) : bytes(n) {
    EXPECT_EQ(cudaMalloc(&ptr, n), cudaSuccess);
    if (host) EXPECT_EQ(cudaMemcpy(ptr, host, n, cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceCopy() { cudaFree(ptr); }
  void to_host(void* host) const { EXPECT_EQ(cudaMemcpy(host, ptr, bytes, cudaMemcpyDeviceToHost), cudaSuccess); }
};

// Forward of one problem with one kernel; checks it against the oracle.
void run_forward_case(Kernel kernel, const Shape& s) {
  const DType dtype = s.dtype;
  Problem pb(s, 1234);
  DeviceCopy q(pb.q.data(), pb.q.bytes.size()), k(pb.k.data(), pb.k.bytes.size()),
      v(pb.v.data(), pb.v.bytes.size()), o(pb.o.data(), pb.o.bytes.size()),
      lse(pb.lse.data(), pb.lse.size() * sizeof(float));
  FwdParams p = pb.params;
  p.q = q.ptr;
  p.k = k.ptr;
  p.v = v.ptr;
  p.o = o.ptr;
  p.lse = static_cast<float*>(lse.ptr);
  p.device = Device::kCUDA;
  p.kernel = kernel;
  Status st = forward(p);
  if (st.code == StatusCode::kUnsupported) GTEST_SKIP() << kernel_name(kernel) << ": " << st.message;
  ASSERT_TRUE(st.ok()) << st.message;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  o.to_host(pb.o.data());
  lse.to_host(pb.lse.data());
  auto ref = cpu::reference_forward_f64(pb.params);
  auto low = lowprec_forward(pb.params);
  const double tol = 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(dtype);
  EXPECT_LE(max_abs_diff(ref.out, pb.o), tol) << kernel_name(kernel);
  EXPECT_LE(max_abs_diff_lse(ref.lse, pb.lse), 2 * max_abs_diff_lse(ref.lse, low.lse) + 1e-3);
}

// One small odd-shaped problem.
void run_forward_case(Kernel kernel, DType dtype, bool causal, int64_t head_dim) {
  run_forward_case(kernel, make_shape(2, 37, 75, 4, 2, head_dim, dtype, causal));
}

class SanitizeFwd : public ::testing::TestWithParam<Kernel> {};

TEST_P(SanitizeFwd, SmallCases) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const Kernel kernel = GetParam();
  for (DType dt : {DType::kFloat16, DType::kBFloat16, DType::kFloat32})
    for (bool causal : {false, true}) {
      if ((kernel == Kernel::kFA2 || kernel == Kernel::kHopper) && dt == DType::kFloat32) continue;
      run_forward_case(kernel, dt, causal, 64);
    }
}
// More tiles than SMs, so the Hopper forward's CTAs claim tiles from the counter
// and the producer hands each tile to the consumers (shared memory + named barriers):
// small enough for racecheck, 3 x 48 x 3 = 432 tiles.
TEST(Sanitize, HopperDynamicSchedule) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (bool causal : {false, true})
    run_forward_case(Kernel::kHopper, make_shape(3, 300, 290, 48, 16, 64, DType::kBFloat16, causal));
}

INSTANTIATE_TEST_SUITE_P(Sanitize, SanitizeFwd,
                         ::testing::Values(Kernel::kNaive, Kernel::kFA1, Kernel::kFA2, Kernel::kHopper, Kernel::kAuto),
                         [](const auto& info) { return std::string(kernel_name(info.param)); });

// kAuto's backward on sm_90 is the Hopper kernel: head dim 64 adds dQ with atomics,
// 128 through the bulk reduce (its default), and deterministic = true runs the
// bulk kernel with its semaphores; all of them here.
TEST(Sanitize, Backward) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (int mode = 0; mode < 8; ++mode) {
    const bool causal = mode % 2 == 1;
    const int64_t head_dim = mode / 2 % 2 == 0 ? 64 : 128;
    const bool deterministic = mode >= 4;
    SCOPED_TRACE("d" + std::to_string(head_dim) + (causal ? " causal" : "") + (deterministic ? " deterministic" : ""));
    const Shape s = make_shape(2, 37, 75, 4, 2, head_dim, DType::kBFloat16, causal);
    Problem pb(s, 99);
    BwdParams host = pb.params;
    host.kernel = Kernel::kReference;
    ASSERT_TRUE(forward(host).ok());  // o and lse from the oracle
    DeviceCopy q(pb.q.data(), pb.q.bytes.size()), k(pb.k.data(), pb.k.bytes.size()),
        v(pb.v.data(), pb.v.bytes.size()), o(pb.o.data(), pb.o.bytes.size()),
        lse(pb.lse.data(), pb.lse.size() * sizeof(float)), dout(pb.dout.data(), pb.dout.bytes.size()),
        dq(pb.dq.data(), pb.dq.bytes.size()), dk(pb.dk.data(), pb.dk.bytes.size()),
        dv(pb.dv.data(), pb.dv.bytes.size());
    BwdParams p = pb.params;
    p.q = q.ptr, p.k = k.ptr, p.v = v.ptr, p.o = o.ptr, p.lse = static_cast<float*>(lse.ptr);
    p.dout = dout.ptr, p.dq = dq.ptr, p.dk = dk.ptr, p.dv = dv.ptr;
    p.device = Device::kCUDA;
    p.deterministic = deterministic;
    Status st = backward(p);
    if (st.code == StatusCode::kUnsupported) GTEST_SKIP() << st.message;
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    dq.to_host(pb.dq.data());
    dk.to_host(pb.dk.data());
    dv.to_host(pb.dv.data());
    auto ref = cpu::reference_backward_f64(pb.params);
    auto low = lowprec_backward(pb.params);
    const double floor = tolerance_floor(s.dtype);
    EXPECT_LE(max_abs_diff(ref.dq, pb.dq), 2 * max_abs_diff(ref.dq, low.dq) + floor);
    EXPECT_LE(max_abs_diff(ref.dk, pb.dk), 2 * max_abs_diff(ref.dk, low.dk) + floor);
    EXPECT_LE(max_abs_diff(ref.dv, pb.dv), 2 * max_abs_diff(ref.dv, low.dv) + floor);
  }
}

TEST(Sanitize, Softmax) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (int64_t cols : {1, 33, 1000, 70001}) {
    const int64_t rows = 5;
    std::vector<float> x(rows * cols), y(rows * cols, -1.0f);
    std::mt19937_64 rng(cols);
    std::normal_distribution<float> dist(0.0f, 3.0f);
    for (float& e : x) e = dist(rng);
    DeviceCopy dx(x.data(), x.size() * 4), dy(nullptr, y.size() * 4);
    for (SoftmaxVariant variant : {SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) {
      SoftmaxParams p;
      p.x = dx.ptr;
      p.y = dy.ptr;
      p.rows = rows;
      p.cols = cols;
      p.x_row_stride = p.y_row_stride = cols;
      p.variant = variant;
      p.device = Device::kCUDA;
      Status st = softmax(p);
      if (st.code == StatusCode::kUnsupported) GTEST_SKIP() << st.message;
      ASSERT_TRUE(st.ok()) << st.message;
      dy.to_host(y.data());
      for (int64_t r = 0; r < rows; ++r) {
        double m = -INFINITY, sum = 0;
        for (int64_t c = 0; c < cols; ++c) m = std::max(m, double(x[r * cols + c]));
        for (int64_t c = 0; c < cols; ++c) sum += std::exp(double(x[r * cols + c]) - m);
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_NEAR(y[r * cols + c], std::exp(double(x[r * cols + c]) - m) / sum, 1e-5) << cols;
      }
    }
  }
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
