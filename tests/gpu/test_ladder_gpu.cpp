// The first two CUDA rungs (naive, FA1) against the float64 oracle with the
// tolerance rule: err(kernel) <= 2 err(lowprec) + floor, for O and LSE, over odd
// lengths, Nq != Nk both ways, every head-dim bucket, GQA/MQA, causal, window,
// softcap, all dtypes, fully masked rows (causal with Nq > Nk) and strided views.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "gpu_test_util.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

const Kernel kRungs[] = {Kernel::kNaive, Kernel::kFA1};

// Runs both rungs on one shape; the oracle and the lowprec baseline are computed once.
void check_shape(const Shape& s, uint64_t seed) {
  SCOPED_TRACE(s.name());
  Problem prob(s, seed);
  const cpu::RefForward ref = cpu::reference_forward_f64(prob.params);
  const LowPrecForward low = lowprec_forward(prob.params);
  const double tol_o = 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(s.dtype);
  const double tol_lse = 2 * max_abs_diff_lse(ref.lse, low.lse) + tolerance_floor(s.dtype);
  for (Kernel kernel : kRungs) {
    SCOPED_TRACE(kernel_name(kernel));
    GpuProblem g(prob);
    ASSERT_TRUE(g.ok());
    FwdParams p = g.fwd_params();
    p.kernel = kernel;
    const Status st = forward(p);
    ASSERT_TRUE(st.ok()) << st.message;
    FA_TEST_CUDA(g.copy_outputs_to_host(prob));
    EXPECT_LE(max_abs_diff(ref.out, prob.o), tol_o);
    EXPECT_LE(max_abs_diff_lse(ref.lse, prob.lse), tol_lse);
  }
}

const DType kDtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

TEST(NaiveFA1Gpu, HeadDims) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  int n = 0;
  for (int64_t d : {8, 32, 40, 64, 80, 96, 128, 192, 256}) {
    const DType dt = kDtypes[n % 3];
    check_shape(make_shape(1, 65, 127, 4, 4, d, dt), 100 + n);
    check_shape(make_shape(2, 63, 7, 8, 2, d, kDtypes[(n + 1) % 3], /*causal=*/n % 2 == 0), 200 + n);
    ++n;
  }
}

TEST(NaiveFA1Gpu, OddLengthsBothWays) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const int64_t lens[][2] = {{1, 1}, {7, 7}, {1, 257}, {257, 1}, {63, 65}, {65, 63}, {127, 257}, {257, 127}};
  int n = 0;
  for (const auto& l : lens) {
    for (bool causal : {false, true}) {
      check_shape(make_shape(1, l[0], l[1], 8, 2, 64, kDtypes[n % 3], causal), 300 + n);
      ++n;
    }
  }
}

TEST(NaiveFA1Gpu, LongSequence) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  check_shape(make_shape(1, 1000, 1000, 2, 1, 64, DType::kBFloat16, /*causal=*/true), 400);
  check_shape(make_shape(1, 1000, 1000, 2, 2, 128, DType::kFloat32), 401);
  // Rows of S longer than the softmax smem cache: the naive rung's softmax takes the
  // split-row path (few rows), then the grouped split path with LSE (300 rows of 120 KB).
  check_shape(make_shape(1, 4, 30000, 2, 1, 64, DType::kFloat16, /*causal=*/true), 402);
  check_shape(make_shape(1, 150, 30000, 2, 2, 32, DType::kBFloat16, false, 20000, -1), 403);
}

// Causal with Nq > Nk: the first Nq - Nk rows see nothing (O = 0, LSE = -inf).
TEST(NaiveFA1Gpu, FullyMaskedRows) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (DType dt : kDtypes) {
    check_shape(make_shape(2, 257, 63, 4, 1, 64, dt, /*causal=*/true), 500 + static_cast<int>(dt));
    // A narrow window with Nq > Nk: the early rows are empty, the others see 4 keys.
    check_shape(make_shape(1, 127, 65, 4, 4, 96, dt, false, /*wl=*/3, /*wr=*/0), 510 + static_cast<int>(dt));
  }
}

TEST(NaiveFA1Gpu, WindowSoftcapGqa) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  int n = 0;
  for (DType dt : kDtypes) {
    check_shape(make_shape(1, 257, 257, 4, 4, 64, dt, false, 32, 0), 600 + n++);             // local causal
    check_shape(make_shape(2, 100, 130, 8, 2, 128, dt, false, 16, 16), 600 + n++);         // symmetric window
    check_shape(make_shape(1, 63, 65, 8, 1, 80, dt, false, -1, -1, 30.0f), 600 + n++);     // softcap, MQA
    check_shape(make_shape(1, 129, 200, 8, 1, 192, dt, true, -1, -1, 5.0f), 600 + n++);    // causal + small softcap
    check_shape(make_shape(1, 130, 66, 4, 2, 256, dt, false, 7, 3), 600 + n++);            // Nq > Nk window
  }
}

// q, k, v, o as padded views: head stride d + 8, row stride heads * (d + 8), extra batch padding.
TEST(NaiveFA1Gpu, StridedViews) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (DType dt : kDtypes) {
    const Shape s = make_shape(2, 37, 75, 4, 2, 40, dt, true);
    SCOPED_TRACE(s.name());
    Problem prob(s, 700 + static_cast<int>(dt));
    const cpu::RefForward ref = cpu::reference_forward_f64(prob.params);
    const LowPrecForward low = lowprec_forward(prob.params);
    const int64_t es = dtype_size(dt), d = s.head_dim, hp = d + 8;
    // Device copy of a contiguous [b, n, h, d] host tensor into rows of pitch hp (+ 16 elements per batch).
    auto padded = [&](const HostTensor& t, int64_t n, int64_t h, DeviceBuffer* buf, int64_t* bs, int64_t* rs,
                      int64_t* hs) {
      *hs = hp;
      *rs = h * hp;
      *bs = n * h * hp + 16;
      buf->allocate(static_cast<size_t>(s.batch * *bs * es));
      buf->poison();
      for (int64_t b = 0; b < s.batch; ++b)
        cudaMemcpy2D(static_cast<char*>(buf->get()) + b * *bs * es, hp * es,
                     static_cast<const char*>(t.data()) + b * n * h * d * es, d * es, d * es, n * h,
                     cudaMemcpyHostToDevice);
    };
    DeviceBuffer q, k, v, o, lse(prob.lse.size() * sizeof(float));
    FwdParams p = prob.params;
    padded(prob.q, s.seqlen_q, s.heads_q, &q, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
    padded(prob.k, s.seqlen_k, s.heads_kv, &k, &p.k_batch_stride, &p.k_row_stride, &p.k_head_stride);
    padded(prob.v, s.seqlen_k, s.heads_kv, &v, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride);
    padded(prob.o, s.seqlen_q, s.heads_q, &o, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
    p.q = q.get();
    p.k = k.get();
    p.v = v.get();
    p.o = o.get();
    p.lse = lse.as<float>();
    p.device = Device::kCUDA;
    for (Kernel kernel : kRungs) {
      SCOPED_TRACE(kernel_name(kernel));
      o.poison();
      lse.poison();
      p.kernel = kernel;
      const Status st = forward(p);
      ASSERT_TRUE(st.ok()) << st.message;
      FA_TEST_CUDA(cudaDeviceSynchronize());
      for (int64_t b = 0; b < s.batch; ++b)
        FA_TEST_CUDA(cudaMemcpy2D(static_cast<char*>(prob.o.data()) + b * s.seqlen_q * s.heads_q * d * es, d * es,
                                  static_cast<const char*>(o.get()) + b * p.o_batch_stride * es, hp * es, d * es,
                                  s.seqlen_q * s.heads_q, cudaMemcpyDeviceToHost));
      FA_TEST_CUDA(lse.download(prob.lse.data(), prob.lse.size() * sizeof(float)));
      EXPECT_LE(max_abs_diff(ref.out, prob.o), 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(dt));
      EXPECT_LE(max_abs_diff_lse(ref.lse, prob.lse), 2 * max_abs_diff_lse(ref.lse, low.lse) + tolerance_floor(dt));
    }
  }
}

// LSE is optional; the naive rung refuses score matrices beyond its workspace bound.
TEST(NaiveFA1Gpu, NoLseAndNaiveWorkspaceBound) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const Shape s = make_shape(1, 33, 47, 2, 2, 64, DType::kFloat16);
  Problem prob(s, 800);
  const cpu::RefForward ref = cpu::reference_forward_f64(prob.params);
  const LowPrecForward low = lowprec_forward(prob.params);
  for (Kernel kernel : kRungs) {
    GpuProblem g(prob);
    FwdParams p = g.fwd_params();
    p.lse = nullptr;
    p.kernel = kernel;
    ASSERT_TRUE(forward(p).ok()) << kernel_name(kernel);
    FA_TEST_CUDA(g.copy_outputs_to_host(prob));
    EXPECT_LE(max_abs_diff(ref.out, prob.o), 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(s.dtype));
  }
  // 64 heads x 16384^2 fp32 scores = 64 GiB: refused before any allocation.
  GpuProblem g(prob);
  FwdParams p = g.fwd_params();
  p.kernel = Kernel::kNaive;
  p.seqlen_q = p.seqlen_k = 16384;
  p.heads_q = p.heads_kv = 64;
  const Status st = cuda::naive_forward(p);
  EXPECT_EQ(st.code, StatusCode::kUnsupported) << st.message;
  EXPECT_NE(st.message.find("workspace"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
