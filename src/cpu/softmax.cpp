// CPU row softmax, the first exercise of the ladder: y[r, :] = softmax(x[r, :]).
//
// Three variants (docs/01-online-softmax.md):
//   naive : e = exp(x), y = e / sum(e). Overflows to inf/NaN once x > ~88 (fp32
//           exp limit); kept on purpose to show why the other two exist.
//   safe  : pass 1 m = max(x); pass 2 l = sum exp(x - m); y = exp(x - m) / l.
//   online: one pass for the statistics: the row is read block by block, each
//           block's (max, sum) is folded into the running stats with merge()
//           (online_softmax.h, eq. 4), exactly as the flash kernels fold key
//           blocks; then y = exp(x - m) / l.
// A row that is entirely -inf (fully masked) gives y = 0 for safe/online (the
// attention convention: (-inf, 0) stats, no NaN) and NaN for naive (0 / 0).
//
// Math is fp32 whatever the storage dtype. Rows run in parallel (OpenMP); the
// inner loops are branch-free over contiguous floats so the compiler vectorizes
// them (`omp simd`), including exp, which is a polynomial here rather than a
// call into libm.

// The clamps and overflow selects of exp_f32 are branch-free selects; GCC
// if-converts (and so vectorizes) them only when FP compares may be assumed not
// to trap. Results are unchanged: nothing here inspects FP exception flags.
// Measured: 3.4x faster exp loops on x86-64 (SSE2 baseline). Set before the
// includes: GCC does not inline functions compiled with other FP options
// (std::max, load_as_float) into these loops.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "cpu/cpu_backend.h"
#include "flashattn/online_softmax.h"

namespace flashattn {
namespace cpu {
namespace {

constexpr int64_t kBlock = 512;  // online variant: columns per stats block (fits L1 as floats)

// exp(x) in fp32, ~2 ulp, vectorizable. exp(x) = 2^n * exp(r), n = round(x / ln2),
// r = x - n ln2 in [-ln2/2, ln2/2], exp(r) by a degree-6 Taylor/Horner polynomial.
// Overflow gives +inf (x > 88.72: what the naive variant must show), underflow 0,
// NaN stays NaN.
inline float exp_f32(float x) {
  float xc = x > 88.0f ? 88.0f : x;  // NaN passes through and propagates
  xc = xc < -87.0f ? -87.0f : xc;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  float r = xc - n * 0.693145751953125f;  // ln2 split in hi + lo for an exact product
  r = r - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  float y = p * scale;
  y = x > 88.7228391f ? std::numeric_limits<float>::infinity() : y;
  return x < -87.0f ? 0.0f : y;
}

inline float row_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// sum_i exp(x_i - m); the caller guarantees m is finite. Summed in blocks
// (fp32 inside a block, double across blocks) so long rows keep fp32 accuracy:
// one flat fp32 sum of 1e5 terms drifts by ~1e-4 relative.
inline float sum_exp_shifted(const float* x, int64_t n, float m) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b; i < end; ++i) s += exp_f32(x[i] - m);
    total += s;
  }
  return static_cast<float>(total);
}

// Statistics of one row, (max, sum exp(x - max)), for the safe and online variants.
SoftmaxStats stats_safe(const float* x, int64_t n) {
  SoftmaxStats s;
  s.max = row_max(x, n);
  if (s.max == -std::numeric_limits<float>::infinity()) return s;  // fully masked: (-inf, 0)
  s.sum = sum_exp_shifted(x, n, s.max);
  return s;
}

SoftmaxStats stats_online(const float* x, int64_t n) {
  SoftmaxStats running;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    SoftmaxStats block;
    block.max = row_max(x + b, len);
    if (block.max != -std::numeric_limits<float>::infinity()) block.sum = sum_exp_shifted(x + b, len, block.max);
    running = merge(running, block);
  }
  return running;
}

// y = exp(x - m) / l, or 0 for an empty row.
void normalize(const float* x, float* y, int64_t n, SoftmaxStats s) {
  if (s.sum == 0.0f) {
    std::fill(y, y + n, 0.0f);
    return;
  }
  const float inv = 1.0f / s.sum;
  const float m = s.max;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = exp_f32(x[i] - m) * inv;
}

void naive_row(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = exp_f32(x[i]);
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b; i < end; ++i) s += y[i];
    total += s;
  }
  const float inv = 1.0f / static_cast<float>(total);  // inf / inf or 0 / 0 = NaN is the point of this variant
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= inv;
}

void softmax_row(const float* x, float* y, int64_t n, SoftmaxVariant variant) {
  switch (variant) {
    case SoftmaxVariant::kNaive: naive_row(x, y, n); return;
    case SoftmaxVariant::kSafe: normalize(x, y, n, stats_safe(x, n)); return;
    case SoftmaxVariant::kOnline: normalize(x, y, n, stats_online(x, n)); return;
  }
}

void load_row(const void* base, DType dt, int64_t offset, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = load_as_float(base, dt, offset + i);
}
void store_row(void* base, DType dt, int64_t offset, int64_t n, const float* in) {
  for (int64_t i = 0; i < n; ++i) store_from_float(base, dt, offset + i, in[i]);
}

}  // namespace

Status softmax(const SoftmaxParams& p) {
  const int threads = p.num_threads > 0 ? p.num_threads : omp_get_max_threads();
  const int64_t rows = p.rows, cols = p.cols;
  if (p.dtype == DType::kFloat32) {
    const float* x = static_cast<const float*>(p.x);
    float* y = static_cast<float*>(p.y);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) softmax_row(x + r * p.x_row_stride, y + r * p.y_row_stride, cols, p.variant);
    return Status::Ok();
  }
  // 16-bit storage: widen one row into per-thread fp32 scratch, compute, narrow.
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> in(static_cast<size_t>(cols)), out(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      load_row(p.x, p.dtype, r * p.x_row_stride, cols, in.data());
      softmax_row(in.data(), out.data(), cols, p.variant);
      store_row(p.y, p.dtype, r * p.y_row_stride, cols, out.data());
    }
  }
  return Status::Ok();
}

}  // namespace cpu
}  // namespace flashattn
