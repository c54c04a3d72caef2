// GPU row softmax (src/cuda/softmax.cu): every variant, dtype and launch shape
// (warp per row, block per row with smem cache, split rows in one pass or two)
// against a double reference computed from the same rounded inputs.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/softmax_rows.cuh"
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
  bool masked_row = false;       // row 0 is all -inf (a fully masked attention row): y = 0, lse = -inf
};

using cuda::LongRowPath;

// Per-element bound |y - ref| <= atol + rtol |ref|: one or two roundings of the output dtype.
void tolerances(DType dt, double* atol, double* rtol) {
  switch (dt) {
    case DType::kFloat32: *atol = 1e-9; *rtol = 2e-5; break;
    case DType::kFloat16: *atol = 1e-7; *rtol = 1.5e-3; break;  // fp16 subnormals below 6e-5
    case DType::kBFloat16: *atol = 1e-9; *rtol = 1e-2; break;
  }
}

const char* path_name(LongRowPath path) {
  return path == LongRowPath::kAuto ? "auto" : path == LongRowPath::kSinglePass ? "single-pass" : "two-pass";
}

// One softmax call's buffers: random x on the device, y poisoned with a -7
// sentinel (padding must keep it, every real output must change), lse poisoned
// with 12345. prepare() then launch() (any stream), then check() after a sync.
struct SoftmaxRun {
  SoftmaxCase c{};
  DType dt = DType::kFloat32;
  SoftmaxVariant variant = SoftmaxVariant::kOnline;
  bool with_lse = false;
  HostTensor x, y;
  std::vector<float> lse;
  DeviceBuffer dx, dy, dlse;
  SoftmaxParams p;

  std::string name() const {
    return std::string(dtype_name(dt)) + " " + softmax_variant_name(variant) + " rows=" + std::to_string(c.rows) +
           " cols=" + std::to_string(c.cols) + " pad=" + std::to_string(c.x_pad) + "," + std::to_string(c.y_pad) +
           " offset=" + std::to_string(c.offset) + (c.masked_row ? " masked row 0" : "");
  }

  void prepare(const SoftmaxCase& sc, DType dtype, SoftmaxVariant v, bool lse_out, uint64_t seed_extra = 0) {
    c = sc, dt = dtype, variant = v, with_lse = lse_out;
    const int64_t xs = c.cols + c.x_pad, ys = c.cols + c.y_pad;
    const int64_t x_elems = c.offset + (c.rows - 1) * xs + c.cols, y_elems = c.offset + (c.rows - 1) * ys + c.cols;
    x = HostTensor(dt, x_elems);
    y = HostTensor(dt, y_elems);
    std::mt19937_64 rng(c.rows * 1000003 + c.cols * 7 + static_cast<int>(dt) * 31 + static_cast<int>(variant) +
                        seed_extra * 7919);
    x.fill_normal(rng, 2.0f);
    if (c.shift != 0.0f)
      for (int64_t i = 0; i < x_elems; ++i) x.set(i, x.get(i) + c.shift);
    if (c.masked_row)
      for (int64_t j = 0; j < c.cols; ++j) x.set(c.offset + j, -INFINITY);
    y.fill(-7.0f);
    lse.assign(static_cast<size_t>(c.rows), 12345.0f);

    dx = to_device(x);
    dy = to_device(y);
    ASSERT_TRUE(dx.get() && dy.get());
    if (with_lse) {
      dlse.allocate(lse.size() * sizeof(float));
      ASSERT_TRUE(dlse.get());
      FA_TEST_CUDA(dlse.upload(lse.data(), lse.size() * sizeof(float)));
    }
    p = SoftmaxParams{};
    p.x = static_cast<const char*>(dx.get()) + c.offset * dtype_size(dt);
    p.y = static_cast<char*>(dy.get()) + c.offset * dtype_size(dt);
    p.rows = c.rows;
    p.cols = c.cols;
    p.x_row_stride = xs;
    p.y_row_stride = ys;
    p.dtype = dt;
    p.variant = variant;
    p.device = Device::kCUDA;
  }

  // kAuto without lse: the public softmax(); otherwise the internal launcher
  // (pinned long-row path and/or the lse output the naive attention rung uses).
  Status launch(LongRowPath path, cudaStream_t stream = nullptr) {
    if (path == LongRowPath::kAuto && !with_lse && stream == nullptr) return softmax(p);
    return cuda::launch_softmax_rows(p, with_lse ? dlse.as<float>() : nullptr, stream, path);
  }

  // Compares y (and lse) with the double reference; the caller has synchronized.
  void check() {
    SCOPED_TRACE(name());
    FA_TEST_CUDA(to_host(dy, y));
    if (with_lse) FA_TEST_CUDA(dlse.download(lse.data(), lse.size() * sizeof(float)));
    const int64_t xs = c.cols + c.x_pad, ys = c.cols + c.y_pad;
    double atol = 0, rtol = 0;
    tolerances(dt, &atol, &rtol);
    double worst = 0.0, worst_lse = 0.0;  // worst |err| / bound
    int64_t bad = 0, bad_lse = 0;
    std::vector<double> e(c.cols);
    for (int64_t r = 0; r < c.rows; ++r) {
      const int64_t xo = c.offset + r * xs, yo = c.offset + r * ys;
      double m = -INFINITY, l = 0.0;
      for (int64_t j = 0; j < c.cols; ++j) m = std::max(m, static_cast<double>(x.get(xo + j)));
      const bool empty = m == -INFINITY;  // fully masked row: y = 0, lse = -inf
      for (int64_t j = 0; j < c.cols; ++j) l += (e[j] = empty ? 0.0 : std::exp(static_cast<double>(x.get(xo + j)) - m));
      for (int64_t j = 0; j < c.cols; ++j) {
        const double ref = empty ? 0.0 : e[j] / l, got = y.get(yo + j);
        const double ratio = std::fabs(got - ref) / (atol + rtol * ref);
        if (!(ratio <= 1.0)) ++bad;
        if (!(ratio <= worst)) worst = std::isnan(ratio) ? INFINITY : ratio;
      }
      if (with_lse) {
        const double ref = empty ? -INFINITY : m + std::log(l), got = lse[r];
        // fp32 sums of up to 2^20 terms: ~1e-5 relative error in l, i.e. absolute in lse.
        const double ratio = empty ? (got == -INFINITY ? 0.0 : INFINITY) : std::fabs(got - ref) / (1e-4 + 1e-6 * std::fabs(ref));
        if (!(ratio <= 1.0)) ++bad_lse;
        if (!(ratio <= worst_lse)) worst_lse = std::isnan(ratio) ? INFINITY : ratio;
      }
      if (r + 1 < c.rows) {
        for (int64_t j = c.cols; j < ys; ++j) ASSERT_EQ(y.get(yo + j), -7.0f) << "padding written, row " << r;
      }
    }
    EXPECT_EQ(bad, 0) << "worst error / bound = " << worst;
    EXPECT_EQ(bad_lse, 0) << "lse: worst error / bound = " << worst_lse;
  }
};

void run_case(const SoftmaxCase& c, DType dt, SoftmaxVariant variant, LongRowPath path = LongRowPath::kAuto,
              bool with_lse = false) {
  SCOPED_TRACE(path_name(path));
  SoftmaxRun run;
  run.prepare(c, dt, variant, with_lse);
  if (::testing::Test::HasFatalFailure()) return;
  const Status st = run.launch(path);
  ASSERT_TRUE(st.ok()) << run.name() << " " << path_name(path) << ": " << st.message;
  FA_TEST_CUDA(cudaDeviceSynchronize());
  run.check();
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

// Long rows on the single-pass path (chunks in registers, (m, l) exchanged through
// global memory), pinned so a silent fallback to two passes cannot hide a failure,
// with the lse output; then the same shapes through the public softmax().
TEST(SoftmaxGpu, SinglePassLongRows) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {
      {1, 65537}, {2, 65537}, {5, 65537}, {8, 65537},  // 65536 + 1: a 1-element tail chunk
      {1, 300000}, {3, 300000}, {8, 300000},          // 300000 % 8192 = 5088
      {1, (1 << 20) + 3}, {4, (1 << 20) + 3},         // tail of 3: 16-byte packets + scalars
  };
  for (const SoftmaxCase& c : cases)
    for (DType dt : kDtypes) {
      for (SoftmaxVariant v : kVariants) run_case(c, dt, v, LongRowPath::kSinglePass, true);
      run_case(c, dt, SoftmaxVariant::kOnline, LongRowPath::kAuto);
    }
}

// Single pass on small, strided, misaligned (scalar path), masked and large-input rows.
TEST(SoftmaxGpu, SinglePassOddShapes) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {
      {1, 1},           {3, 7},        {5, 1000},          {3, 9001},               {2, 70001, 5, 0},
      {3, 70001, 0, 0, 1},              {7, 20001, 8, 16},  {1, 100003, 0, 0, 3},
      {3, 30000, 0, 0, 0, 0.0f, true},  {2, 200001, 0, 0, 0, 200.0f},
  };
  for (const SoftmaxCase& c : cases)
    for (DType dt : kDtypes)
      for (SoftmaxVariant v : kVariants) {
        if (c.shift > 100.0f && v == SoftmaxVariant::kNaive) continue;  // overflows by design
        run_case(c, dt, v, LongRowPath::kSinglePass, true);
      }
}

// The two-pass kernels are now only the fallback for rows too long for one pass:
// keep them tested (pinned) on ordinary shapes, and through auto on a row of
// 2^24 + 5 fp32 (2049 chunks of 8192: more than can be co-resident on an H100).
TEST(SoftmaxGpu, TwoPassFallback) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {{2, 100003}, {3, 70001, 5, 0}, {1, 5000}, {3, 30000, 0, 0, 0, 0.0f, true}};
  for (const SoftmaxCase& c : cases)
    for (DType dt : kDtypes)
      for (SoftmaxVariant v : kVariants) run_case(c, dt, v, LongRowPath::kTwoPass, true);

  const SoftmaxCase huge{1, (int64_t{1} << 24) + 5};
  SoftmaxRun pinned;
  pinned.prepare(huge, DType::kFloat32, SoftmaxVariant::kOnline, false);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  const Status st = pinned.launch(LongRowPath::kSinglePass);
  EXPECT_EQ(st.code, StatusCode::kUnsupported) << "a 2049-chunk row should not fit one pass: " << st.message;
  FA_TEST_CUDA(cudaDeviceSynchronize());
  run_case(huge, DType::kFloat32, SoftmaxVariant::kOnline, LongRowPath::kAuto, true);
}

// Scratch reuse: many single-pass calls queued back to back on one stream and
// interleaved on two streams (one scratch buffer per stream, zeroed once; every
// launch must leave its counters at 0 for the next), different shapes, row counts
// (the buffer grows) and dtypes, checked only after everything ran.
TEST(SoftmaxGpu, SinglePassRepeatedCallsAndStreams) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  cudaStream_t streams[2] = {nullptr, nullptr};
  FA_TEST_CUDA(cudaStreamCreateWithFlags(&streams[0], cudaStreamNonBlocking));
  FA_TEST_CUDA(cudaStreamCreateWithFlags(&streams[1], cudaStreamNonBlocking));
  struct Job {
    SoftmaxCase c;
    DType dt;
    int stream;
  };
  const Job jobs[] = {
      {{4, 300000}, DType::kFloat32, 0},  {{2, 65537}, DType::kBFloat16, 1}, {{4, 300000}, DType::kFloat32, 0},
      {{8, 65537}, DType::kFloat16, 1},   {{1, (1 << 20) + 3}, DType::kBFloat16, 0},
      {{3, 70001, 5, 0}, DType::kFloat32, 1},  {{4, 300000}, DType::kFloat32, 1}, {{2, 65537}, DType::kBFloat16, 0},
      {{1500, 9000}, DType::kFloat32, 0},       {{1, 65537}, DType::kFloat16, 0},  // > 1024 rows: a larger buffer
  };
  constexpr int kReps = 3;
  std::vector<std::unique_ptr<SoftmaxRun>> runs;  // every call has its own x / y / lse
  for (int rep = 0; rep < kReps; ++rep)
    for (const Job& j : jobs) {
      runs.push_back(std::make_unique<SoftmaxRun>());
      runs.back()->prepare(j.c, j.dt, SoftmaxVariant::kOnline, true, runs.size());
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
    }
  FA_TEST_CUDA(cudaDeviceSynchronize());  // uploads done before the non-blocking streams run
  for (size_t i = 0; i < runs.size(); ++i) {
    const Status st = runs[i]->launch(LongRowPath::kSinglePass, streams[jobs[i % std::size(jobs)].stream]);
    ASSERT_TRUE(st.ok()) << runs[i]->name() << ": " << st.message;
  }
  FA_TEST_CUDA(cudaStreamSynchronize(streams[0]));
  FA_TEST_CUDA(cudaStreamSynchronize(streams[1]));
  for (auto& run : runs) run->check();
  cudaStreamDestroy(streams[0]);
  cudaStreamDestroy(streams[1]);
}

// Captured into a CUDA graph (the call then takes its own zeroed scratch), the
// graph replayed twice with new inputs in between.
TEST(SoftmaxGpu, SinglePassInCudaGraph) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  cudaStream_t stream = nullptr;
  FA_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  SoftmaxRun run;
  run.prepare({3, 300000}, DType::kBFloat16, SoftmaxVariant::kOnline, true);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  FA_TEST_CUDA(cudaDeviceSynchronize());
  cudaGraph_t graph = nullptr;
  FA_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const Status st = run.launch(LongRowPath::kSinglePass, stream);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  ASSERT_TRUE(st.ok()) << st.message;
  FA_TEST_CUDA(end);
  cudaGraphExec_t exec = nullptr;
  FA_TEST_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 2; ++replay) {
    if (replay == 1) {  // new x, poisoned y / lse, same buffers
      SoftmaxRun fresh;
      fresh.prepare({3, 300000}, DType::kBFloat16, SoftmaxVariant::kOnline, true, 99);
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
      run.x = fresh.x;
      FA_TEST_CUDA(run.dx.upload(run.x.data(), run.x.bytes.size()));
      run.y.fill(-7.0f);
      FA_TEST_CUDA(run.dy.upload(run.y.data(), run.y.bytes.size()));
      std::vector<float> poison(run.lse.size(), 12345.0f);
      FA_TEST_CUDA(run.dlse.upload(poison.data(), poison.size() * sizeof(float)));
    }
    FA_TEST_CUDA(cudaGraphLaunch(exec, stream));
    FA_TEST_CUDA(cudaStreamSynchronize(stream));
    run.check();
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Small cases of both split-row paths for compute-sanitizer (scripts/gpu_check.sh
// runs the Sanitize* suites): several chunks per row, a tail, a strided scalar-path row.
TEST(SanitizeSoftmax, SplitRowPaths) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const SoftmaxCase cases[] = {{3, 5000}, {2, 3001, 3, 0}, {1, 20003}};
  for (LongRowPath path : {LongRowPath::kSinglePass, LongRowPath::kTwoPass})
    for (const SoftmaxCase& c : cases)
      for (DType dt : {DType::kFloat32, DType::kBFloat16})
        for (SoftmaxVariant v : {SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) run_case(c, dt, v, path, true);
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
