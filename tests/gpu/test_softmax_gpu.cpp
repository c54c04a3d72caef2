// GPU row softmax (src/cuda/softmax.cu): every variant, dtype and launch shape
// (warp per row, block per row with smem cache, split rows) against a double
// reference computed from the same rounded inputs.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

struct SoftmaxCase {
  int64_t rows, cols;
  int64_t x_pad = 0, y_pad = 0;  // extra elements between rows (row stride = cols + pad)
  int64_t offset = 0;            // start x and y this many elements into their buffers (breaks 16 B alignment)
  float shift = 0.0f;            // added to every input (large shifts overflow the naive variant)
};

// Per-element bound |y - ref| <= atol + rtol |ref|: one or two roundings of the output dtype.
void tolerances(DType dt, double* atol, double* rtol) {
  switch (dt) {
    case DType::kFloat32: *atol = 1e-9; *rtol = 2e-5; break;
    case DType::kFloat16: *atol = 1e-7; *rtol = 1.5e-3; break;  // fp16 subnormals below 6e-5
    case DType::kBFloat16: *atol = 1e-9; *rtol = 1e-2; break;
  }
}

void run_case(const SoftmaxCase& c, DType dt, SoftmaxVariant variant) {
  SCOPED_TRACE(std::string(dtype_name(dt)) + " " + softmax_variant_name(variant) + " rows=" +
               std::to_string(c.rows) + " cols=" + std::to_string(c.cols) + " pad=" + std::to_string(c.x_pad) + "," +
               std::to_string(c.y_pad) + " offset=" + std::to_string(c.offset));
  const int64_t xs = c.cols + c.x_pad, ys = c.cols + c.y_pad;
  const int64_t x_elems = c.offset + (c.rows - 1) * xs + c.cols, y_elems = c.offset + (c.rows - 1) * ys + c.cols;
  HostTensor x(dt, x_elems), y(dt, y_elems);
  std::mt19937_64 rng(c.rows * 1000003 + c.cols * 7 + static_cast<int>(dt) * 31 + static_cast<int>(variant));
  x.fill_normal(rng, 2.0f);
  if (c.shift != 0.0f)
    for (int64_t i = 0; i < x_elems; ++i) x.set(i, x.get(i) + c.shift);
  y.fill(-7.0f);  // sentinel: padding must stay -7, every real output must change

  DeviceBuffer dx = to_device(x), dy = to_device(y);
  ASSERT_TRUE(dx.get() && dy.get());
  SoftmaxParams p;
  p.x = static_cast<const char*>(dx.get()) + c.offset * dtype_size(dt);
  p.y = static_cast<char*>(dy.get()) + c.offset * dtype_size(dt);
  p.rows = c.rows;
  p.cols = c.cols;
  p.x_row_stride = xs;
  p.y_row_stride = ys;
  p.dtype = dt;
  p.variant = variant;
  p.device = Device::kCUDA;
  const Status st = softmax(p);
  ASSERT_TRUE(st.ok()) << st.message;
  FA_TEST_CUDA(cudaDeviceSynchronize());
  FA_TEST_CUDA(to_host(dy, y));

  double atol = 0, rtol = 0;
  tolerances(dt, &atol, &rtol);
  double worst = 0.0;  // worst |err| / bound
  int64_t bad = 0;
  std::vector<double> e(c.cols);
  for (int64_t r = 0; r < c.rows; ++r) {
    const int64_t xo = c.offset + r * xs, yo = c.offset + r * ys;
    double m = -INFINITY, l = 0.0;
    for (int64_t j = 0; j < c.cols; ++j) m = std::max(m, static_cast<double>(x.get(xo + j)));
    for (int64_t j = 0; j < c.cols; ++j) l += (e[j] = std::exp(static_cast<double>(x.get(xo + j)) - m));
    for (int64_t j = 0; j < c.cols; ++j) {
      const double ref = e[j] / l, got = y.get(yo + j);
      const double ratio = std::fabs(got - ref) / (atol + rtol * ref);
      if (!(ratio <= 1.0)) ++bad;
      if (!(ratio <= worst)) worst = std::isnan(ratio) ? INFINITY : ratio;
    }
    if (r + 1 < c.rows) {
      for (int64_t j = c.cols; j < ys; ++j) ASSERT_EQ(y.get(yo + j), -7.0f) << "padding written, row " << r;
    }
  }
  EXPECT_EQ(bad, 0) << "worst error / bound = " << worst;
}

const DType kDtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
const SoftmaxVariant kVariants[] = {SoftmaxVariant::kNaive, SoftmaxVariant::kSafe, SoftmaxVariant::kOnline};

// Contiguous rows over every launch shape.
TEST(SoftmaxGpu, AllVariantsDtypesShapes) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {
      {1, 1},        {5, 1},       {3, 7},         {300, 1000},  // warp per row
      {1, 1000},     {40, 5000},   {300, 20000},                 // block per row (fp32 20000: > 48 KiB smem)
      {2, 100003},   {300, 30000},                               // split rows / over the smem cache
      {1, (1 << 20) + 3},
  };
  for (const SoftmaxCase& c : cases)
    for (DType dt : kDtypes)
      for (SoftmaxVariant v : kVariants) run_case(c, dt, v);
}

// Strided and misaligned rows take the scalar path (or the vector path when the stride allows).
TEST(SoftmaxGpu, StridedAndMisalignedRows) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {
      {17, 100, 3, 5},          {17, 100, 8, 16},          {9, 3000, 1, 2},     {9, 3000, 0, 0, 1},
      {3, 70001, 5, 0},         {3, 70001, 0, 0, 1},       {33, 777, 24, 8, 0}, {1, 100003, 0, 0, 3},
  };
  for (const SoftmaxCase& c : cases)
    for (DType dt : kDtypes)
      for (SoftmaxVariant v : kVariants) run_case(c, dt, v);
}

// Large inputs: safe and online subtract the max, so exp never overflows.
TEST(SoftmaxGpu, SafeAndOnlineSurviveLargeInputs) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {{4, 33, 0, 0, 0, 200.0f}, {4, 5000, 0, 0, 0, 200.0f}, {2, 200001, 0, 0, 0, 200.0f}};
  for (const SoftmaxCase& c : cases)
    for (DType dt : {DType::kFloat32, DType::kBFloat16})
      for (SoftmaxVariant v : {SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) run_case(c, dt, v);
}

// Small cases of every launch shape (warp, block + smem cache, split) for compute-sanitizer.
TEST(SoftmaxGpu, SmallForSanitizer) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {{3, 5}, {3, 3000}, {3, 9000}, {3, 3001, 1, 0, 1}, {2, 70001, 8, 8}};
  for (const SoftmaxCase& c : cases)
    for (DType dt : kDtypes)
      for (SoftmaxVariant v : kVariants) run_case(c, dt, v);
}

// The naive variant overflows (exp(200) = inf), which is why the others exist.
TEST(SoftmaxGpu, NaiveOverflowsOnLargeInputs) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  HostTensor x(DType::kFloat32, 64), y(DType::kFloat32, 64);
  for (int i = 0; i < 64; ++i) x.set(i, 200.0f + 0.01f * i);
  DeviceBuffer dx = to_device(x), dy = to_device(y);
  SoftmaxParams p;
  p.x = dx.get();
  p.y = dy.get();
  p.rows = 1;
  p.cols = 64;
  p.x_row_stride = p.y_row_stride = 64;
  p.variant = SoftmaxVariant::kNaive;
  p.device = Device::kCUDA;
  ASSERT_TRUE(softmax(p).ok());
  FA_TEST_CUDA(to_host(dy, y));
  double sum = 0.0;  // the true softmax of the last element, exp(0.63) / sum_i exp(0.01 i)
  for (int i = 0; i < 64; ++i) sum += std::exp(0.01 * i);
  const double truth = std::exp(0.63) / sum;
  EXPECT_FALSE(std::isfinite(y.get(63)) && std::fabs(y.get(63) - truth) < 1e-3)
      << "naive should overflow, got " << y.get(63) << " (true value " << truth << ")";
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
