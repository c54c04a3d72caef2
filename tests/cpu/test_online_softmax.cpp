// The online-softmax statistics (include/flashattn/online_softmax.h) and the
// three CPU row-softmax variants.
//
// Part 1: merge() of the (max, sum) stats of ANY split of a row equals the
// stats of the whole row; fully masked (-inf) blocks are the identity and an
// all -inf row gives (-inf, 0) and lse = -inf, never NaN.
// Part 2: flashattn::softmax on the CPU (naive / safe / online) against a double
// reference over odd shapes, all dtypes and strided rows, and the naive
// variant overflowing where safe/online stay exact: why the other two exist.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "flashattn/flashattn.h"

namespace flashattn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Exact-ish stats of x in double: (max, sum exp(x - max)).
struct RefStats {
  double max = -INFINITY, sum = 0.0;
};
RefStats ref_stats(const std::vector<float>& x, size_t begin, size_t end) {
  RefStats s;
  for (size_t i = begin; i < end; ++i) s.max = std::max(s.max, static_cast<double>(x[i]));
  if (s.max == -INFINITY) return s;
  for (size_t i = begin; i < end; ++i) s.sum += std::exp(static_cast<double>(x[i]) - s.max);
  return s;
}

SoftmaxStats fold(const std::vector<float>& x, size_t begin, size_t end) {
  SoftmaxStats s;
  for (size_t i = begin; i < end; ++i) s = update(s, x[i]);
  return s;
}

// Merge the stats of the blocks [cuts[i], cuts[i+1]).
SoftmaxStats merge_split(const std::vector<float>& x, const std::vector<size_t>& cuts) {
  SoftmaxStats s;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) s = merge(s, fold(x, cuts[i], cuts[i + 1]));
  return s;
}

void expect_stats_near(const SoftmaxStats& got, const RefStats& ref, const std::string& what) {
  ASSERT_FALSE(std::isnan(got.max)) << what;
  ASSERT_FALSE(std::isnan(got.sum)) << what;
  if (ref.max == -INFINITY) {
    EXPECT_EQ(got.max, kNegInf) << what;
    EXPECT_EQ(got.sum, 0.0f) << what;
    EXPECT_EQ(log_sum_exp(got), kNegInf) << what;
    return;
  }
  EXPECT_EQ(static_cast<double>(got.max), ref.max) << what;  // max is exact
  EXPECT_NEAR(got.sum, ref.sum, 2e-5 * ref.sum) << what;
  EXPECT_NEAR(log_sum_exp(got), ref.max + std::log(ref.sum), 2e-5 * (1.0 + std::fabs(ref.max))) << what;
}

std::vector<float> random_row(std::mt19937_64& rng, size_t n, float stddev = 3.0f) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

TEST(OnlineSoftmaxStats, TwoBlocks) {
  std::mt19937_64 rng(1);
  auto x = random_row(rng, 300);
  for (size_t cut : {size_t{1}, size_t{150}, size_t{299}})
    expect_stats_near(merge_split(x, {0, cut, 300}), ref_stats(x, 0, 300), "cut " + std::to_string(cut));
}

TEST(OnlineSoftmaxStats, ManyEqualBlocks) {
  std::mt19937_64 rng(2);
  auto x = random_row(rng, 1024);
  for (size_t block : {size_t{1}, size_t{16}, size_t{64}, size_t{128}}) {
    std::vector<size_t> cuts;
    for (size_t c = 0; c <= x.size(); c += block) cuts.push_back(c);
    expect_stats_near(merge_split(x, cuts), ref_stats(x, 0, x.size()), "block " + std::to_string(block));
  }
}

TEST(OnlineSoftmaxStats, UnevenAndEmptyBlocks) {
  std::mt19937_64 rng(3);
  auto x = random_row(rng, 1000);
  // Includes empty blocks (equal cuts): they are (-inf, 0), the identity.
  expect_stats_near(merge_split(x, {0, 0, 3, 3, 100, 101, 577, 999, 1000, 1000}), ref_stats(x, 0, 1000), "uneven");
}

TEST(OnlineSoftmaxStats, RandomSplits) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n = 1 + rng() % 2000;
    auto x = random_row(rng, n, 1.0f + static_cast<float>(rng() % 20));
    std::vector<size_t> cuts = {0, n};
    const size_t k = rng() % 12;
    for (size_t i = 0; i < k; ++i) cuts.push_back(rng() % (n + 1));
    std::sort(cuts.begin(), cuts.end());
    expect_stats_near(merge_split(x, cuts), ref_stats(x, 0, n), "trial " + std::to_string(trial));
  }
}

TEST(OnlineSoftmaxStats, FullyMaskedBlocksAreTheIdentity) {
  std::mt19937_64 rng(5);
  auto x = random_row(rng, 256);
  // Mask blocks [0, 64) and [128, 200) completely, and one lone element.
  for (size_t i = 0; i < 64; ++i) x[i] = kNegInf;
  for (size_t i = 128; i < 200; ++i) x[i] = kNegInf;
  x[250] = kNegInf;
  const RefStats ref = ref_stats(x, 0, x.size());
  expect_stats_near(merge_split(x, {0, 64, 128, 200, 256}), ref, "masked blocks first");
  expect_stats_near(merge_split(x, {0, 32, 64, 250, 251, 256}), ref, "masked splits");
  // A masked block merged on either side changes nothing, bit for bit.
  const SoftmaxStats live = fold(x, 64, 128);
  const SoftmaxStats masked = fold(x, 0, 64);
  EXPECT_EQ(masked.max, kNegInf);
  EXPECT_EQ(masked.sum, 0.0f);
  EXPECT_EQ(merge(live, masked).max, live.max);
  EXPECT_EQ(merge(live, masked).sum, live.sum);
  EXPECT_EQ(merge(masked, live).sum, live.sum);
}

TEST(OnlineSoftmaxStats, AllMaskedRowIsMinusInfAndZeroNeverNaN) {
  std::vector<float> x(100, kNegInf);
  for (auto cuts : {std::vector<size_t>{0, 100}, std::vector<size_t>{0, 1, 50, 100}, std::vector<size_t>{0, 0, 100}}) {
    const SoftmaxStats s = merge_split(x, cuts);
    EXPECT_EQ(s.max, kNegInf);
    EXPECT_EQ(s.sum, 0.0f);
    EXPECT_EQ(log_sum_exp(s), kNegInf);
    EXPECT_FALSE(std::isnan(log_sum_exp(s)));
  }
  const SoftmaxStats empty;
  EXPECT_EQ(merge(empty, empty).max, kNegInf);
  EXPECT_EQ(merge(empty, empty).sum, 0.0f);
  EXPECT_EQ(log_sum_exp(empty), kNegInf);
  EXPECT_EQ(rescale_factor(kNegInf, kNegInf), 0.0f);  // the guarded -inf - (-inf)
}

TEST(OnlineSoftmaxStats, MergeIsCommutativeAndAssociative) {
  std::mt19937_64 rng(6);
  for (int trial = 0; trial < 100; ++trial) {
    auto x = random_row(rng, 90, 5.0f);
    if (trial % 4 == 0)
      for (size_t i = 30; i < 60; ++i) x[i] = kNegInf;  // one masked block
    const SoftmaxStats a = fold(x, 0, 30), b = fold(x, 30, 60), c = fold(x, 60, 90);
    const SoftmaxStats ab = merge(a, b), ba = merge(b, a);
    EXPECT_EQ(ab.max, ba.max);
    EXPECT_EQ(ab.sum, ba.sum);  // a + b == b + a in floating point
    const SoftmaxStats left = merge(merge(a, b), c), right = merge(a, merge(b, c));
    EXPECT_EQ(left.max, right.max);
    EXPECT_NEAR(left.sum, right.sum, 1e-6f * left.sum);
  }
}

// ---------------------------------------------------------------------------
// flashattn::softmax on the CPU.
// ---------------------------------------------------------------------------

struct SoftmaxCase {
  int64_t rows, cols;
  DType dtype;
  SoftmaxVariant variant;
  bool strided;
};

// Runs one case: random normal rows (plus a per-row offset so rows differ in
// scale), poisoned output, checks every element against a double softmax of
// the *stored* (rounded) input and that the padding between rows is untouched.
void run_case(const SoftmaxCase& c, uint64_t seed, float stddev = 3.0f, float offset = 0.0f) {
  const int64_t pad_x = c.strided ? 5 : 0, pad_y = c.strided ? 3 : 0;
  const int64_t xs = c.cols + pad_x, ys = c.cols + pad_y;
  const int64_t es = dtype_size(c.dtype);
  std::vector<uint8_t> xbuf(static_cast<size_t>(c.rows * xs * es)), ybuf(static_cast<size_t>(c.rows * ys * es));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t i = 0; i < xs; ++i) store_from_float(xbuf.data(), c.dtype, r * xs + i, dist(rng) + offset + 0.1f * r);
  const float poison = 1234.5f;
  for (int64_t i = 0; i < c.rows * ys; ++i) store_from_float(ybuf.data(), c.dtype, i, poison);

  SoftmaxParams p;
  p.x = xbuf.data();
  p.y = ybuf.data();
  p.rows = c.rows;
  p.cols = c.cols;
  p.x_row_stride = xs;
  p.y_row_stride = ys;
  p.dtype = c.dtype;
  p.variant = c.variant;
  p.num_threads = 2;
  const Status st = softmax(p);
  ASSERT_TRUE(st.ok()) << st.message;

  // Rounding of the output to the dtype, plus fp32 math (sum over up to 1e5 terms).
  const double rel = c.dtype == DType::kFloat32 ? 2e-5 : c.dtype == DType::kFloat16 ? 1.0 / 1024 : 1.0 / 128;
  const double abs_floor = c.dtype == DType::kFloat16 ? 6e-8 : 1e-12;
  const std::string what = std::string(softmax_variant_name(c.variant)) + " " + dtype_name(c.dtype) + " rows " +
                           std::to_string(c.rows) + " cols " + std::to_string(c.cols) +
                           (c.strided ? " strided" : "");
  std::vector<double> row(static_cast<size_t>(c.cols));
  int bad = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    double m = -INFINITY, s = 0.0;
    for (int64_t i = 0; i < c.cols; ++i) {
      row[i] = load_as_float(xbuf.data(), c.dtype, r * xs + i);
      m = std::max(m, row[i]);
    }
    for (int64_t i = 0; i < c.cols; ++i) s += std::exp(row[i] - m);
    for (int64_t i = 0; i < c.cols; ++i) {
      const double ref = std::exp(row[i] - m) / s;
      const double got = load_as_float(ybuf.data(), c.dtype, r * ys + i);
      if (!(std::fabs(got - ref) <= rel * ref + abs_floor) && bad++ < 5)
        ADD_FAILURE() << what << ": y[" << r << ", " << i << "] = " << got << ", reference " << ref;
    }
    for (int64_t i = c.cols; i < ys; ++i)
      if (load_as_float(ybuf.data(), c.dtype, r * ys + i) != round_to(c.dtype, poison) && bad++ < 5)
        ADD_FAILURE() << what << ": padding y[" << r << ", " << i << "] was written";
  }
  EXPECT_EQ(bad, 0) << what;
}

class CpuSoftmax : public ::testing::TestWithParam<std::tuple<SoftmaxVariant, DType>> {};

TEST_P(CpuSoftmax, MatchesDoubleReference) {
  const auto [variant, dtype] = GetParam();
  uint64_t seed = 100;
  for (int64_t cols : {1, 7, 1000, 100003})
    for (int64_t rows : {1, 2, 17, 33}) {
      if (cols == 100003 && rows > 17) continue;  // keeps the test fast; 17 rows already spread over threads
      for (bool strided : {false, true}) run_case({rows, cols, dtype, variant, strided}, seed++);
    }
}

INSTANTIATE_TEST_SUITE_P(AllVariantsAndDtypes, CpuSoftmax,
                         ::testing::Combine(::testing::Values(SoftmaxVariant::kNaive, SoftmaxVariant::kSafe,
                                                              SoftmaxVariant::kOnline),
                                            ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16)),
                         [](const auto& info) {
                           return std::string(softmax_variant_name(std::get<0>(info.param))) + "_" +
                                  dtype_name(std::get<1>(info.param));
                         });

// Why safe and online exist: logits around 100 (common for unscaled attention
// scores) overflow exp() in fp32 (limit ~88.7). The naive variant returns
// inf/inf = NaN; subtracting the row max first keeps every exponent <= 0.
TEST(CpuSoftmaxOverflow, NaiveOverflowsWhereSafeAndOnlineStayExact) {
  const int64_t cols = 64;
  std::vector<float> x(cols), y(cols);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> dist(100.0f, 2.0f);
  for (auto& v : x) v = dist(rng);
  SoftmaxParams p;
  p.x = x.data();
  p.y = y.data();
  p.rows = 1;
  p.cols = cols;
  p.x_row_stride = p.y_row_stride = cols;

  p.variant = SoftmaxVariant::kNaive;
  ASSERT_TRUE(softmax(p).ok());
  bool broken = false;
  for (float v : y) broken |= !std::isfinite(v);
  EXPECT_TRUE(broken) << "naive softmax of logits ~100 should overflow exp() in fp32";

  for (SoftmaxVariant v : {SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) {
    p.variant = v;
    ASSERT_TRUE(softmax(p).ok());
    double m = -INFINITY, s = 0.0, total = 0.0;
    for (float xi : x) m = std::max(m, static_cast<double>(xi));
    for (float xi : x) s += std::exp(xi - m);
    for (int64_t i = 0; i < cols; ++i) {
      EXPECT_NEAR(y[i], std::exp(x[i] - m) / s, 2e-6) << softmax_variant_name(v) << " i=" << i;
      total += y[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5) << softmax_variant_name(v);
  }
  // Same story for large negative logits: naive underflows to 0 / 0.
  for (auto& v : x) v -= 200.0f;
  p.variant = SoftmaxVariant::kNaive;
  ASSERT_TRUE(softmax(p).ok());
  EXPECT_TRUE(std::isnan(y[0]));
}

TEST(CpuSoftmaxOverflow, SafeAndOnlineAreShiftInvariant) {
  for (SoftmaxVariant v : {SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) {
    run_case({3, 1000, DType::kFloat32, v, true}, 11, 3.0f, 500.0f);
    run_case({3, 1000, DType::kFloat32, v, false}, 12, 3.0f, -500.0f);
  }
}

// A fully masked row (all -inf) gives 0 for safe/online (the attention
// convention), never NaN; rows around it are unaffected.
TEST(CpuSoftmaxOverflow, FullyMaskedRowGivesZeros) {
  const int64_t cols = 1500;  // > one online block
  std::vector<float> x(3 * cols, 0.5f), y(3 * cols, 7.0f);
  for (int64_t i = 0; i < cols; ++i) x[cols + i] = kNegInf;
  for (int64_t i = 0; i < 600; ++i) x[2 * cols + i] = kNegInf;  // last row: a fully masked first block,
  x[2 * cols + 1400] = kNegInf;                                   // and one masked element
  for (SoftmaxVariant v : {SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) {
    SoftmaxParams p;
    p.x = x.data();
    p.y = y.data();
    p.rows = 3;
    p.cols = p.x_row_stride = p.y_row_stride = cols;
    p.variant = v;
    ASSERT_TRUE(softmax(p).ok());
    for (int64_t i = 0; i < cols; ++i) {
      EXPECT_NEAR(y[i], 1.0 / cols, 1e-9) << softmax_variant_name(v);
      EXPECT_EQ(y[cols + i], 0.0f) << softmax_variant_name(v);
    }
    EXPECT_EQ(y[2 * cols + 1400], 0.0f);
    EXPECT_EQ(y[2 * cols + 10], 0.0f);
    for (int64_t i = 600; i < cols; ++i)
      if (i != 1400) ASSERT_NEAR(y[2 * cols + i], 1.0 / (cols - 601), 1e-9) << softmax_variant_name(v) << " i=" << i;
  }
}

}  // namespace
}  // namespace flashattn
