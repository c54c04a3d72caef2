// CPU row softmax, the first exercise of the ladder: y[r, :] = softmax(x[r, :]).
//
// Three variants (docs/01-online-softmax.md):
//   naive : e = exp(x), y = e / sum(e). Overflows to inf/NaN once x > ~88 (fp32
//           exp limit); kept on purpose to show why the other two exist.
//   safe  : pass 1 m = max(x); pass 2 y = exp(x - m), l = sum y; y /= l.
//   online: one pass over x: block by block, y = exp(x - block max) and the
//           block's (max, sum) is folded into the running stats with merge()
//           (online_softmax.h, eq. 4), exactly as the flash kernels fold key
//           blocks; a last pass over y rescales each block by exp(m_b - m) / l.
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

// y_i = exp(x_i - m) for one block (m finite); returns the block's sum. One
// exp per element: the exponentials are stored, then rescaled in place.
inline float exp_store_sum(const float* x, float* y, int64_t n, float m) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    y[i] = exp_f32(x[i] - m);
    s += y[i];
  }
  return s;
}

inline void scale(float* y, int64_t n, float f) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= f;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// naive: sum exp(x), no shift. Sums in blocks (fp32 inside, double across) so
// long rows keep fp32 accuracy: one flat fp32 sum of 1e5 terms drifts ~1e-4.
void naive_row(const float* x, float* y, int64_t n) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b; i < b + len; ++i) {
      y[i] = exp_f32(x[i]);
      s += y[i];
    }
    total += s;
  }
  scale(y, n, 1.0f / static_cast<float>(total));  // inf / inf or 0 / 0 = NaN is the point of this variant
}

// safe: pass 1 the row max, pass 2 y = exp(x - m) and its sum, pass 3 y /= l.
void safe_row(const float* x, float* y, int64_t n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (m == kNegInf) {  // fully masked row: stats (-inf, 0), output 0
    std::fill(y, y + n, 0.0f);
    return;
  }
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) total += exp_store_sum(x + b, y + b, std::min(kBlock, n - b), m);
  scale(y, n, static_cast<float>(1.0 / total));
}

// online: one pass over x. Each block stores exp(x - block max) and its stats
// (block max, block sum) are merged into the running stats (eq. 4); the final
// pass rescales block b by exp(m_b - m) / l, the same correction the flash
// kernels apply to their output accumulator.
void online_row(const float* x, float* y, int64_t n, std::vector<float>& block_max) {
  block_max.clear();
  SoftmaxStats running;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    SoftmaxStats block;
    float bm = kNegInf;
#pragma omp simd reduction(max : bm)
    for (int64_t i = b; i < b + len; ++i) bm = x[i] > bm ? x[i] : bm;
    block.max = bm;
    if (bm == kNegInf) std::fill(y + b, y + b + len, 0.0f);  // fully masked block: (-inf, 0)
    else block.sum = exp_store_sum(x + b, y + b, len, bm);
    running = merge(running, block);
    block_max.push_back(bm);
  }
  if (running.sum == 0.0f) {  // fully masked row
    std::fill(y, y + n, 0.0f);
    return;
  }
  const float inv = 1.0f / running.sum;
  for (int64_t b = 0, k = 0; b < n; b += kBlock, ++k)
    scale(y + b, std::min(kBlock, n - b), rescale_factor(block_max[k], running.max) * inv);
}

void softmax_row(const float* x, float* y, int64_t n, SoftmaxVariant variant, std::vector<float>& scratch) {
  switch (variant) {
    case SoftmaxVariant::kNaive: naive_row(x, y, n); return;
    case SoftmaxVariant::kSafe: safe_row(x, y, n); return;
    case SoftmaxVariant::kOnline: online_row(x, y, n, scratch); return;
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
  const bool wide = p.dtype == DType::kFloat32;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> block_max;
    // 16-bit storage: widen one row into fp32 scratch, compute, narrow.
    std::vector<float> in(wide ? 0 : static_cast<size_t>(cols)), out(wide ? 0 : static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      if (wide) {
        softmax_row(static_cast<const float*>(p.x) + r * p.x_row_stride, static_cast<float*>(p.y) + r * p.y_row_stride,
                    cols, p.variant, block_max);
      } else {
        load_row(p.x, p.dtype, r * p.x_row_stride, cols, in.data());
        softmax_row(in.data(), out.data(), cols, p.variant, block_max);
        store_row(p.y, p.dtype, r * p.y_row_stride, cols, out.data());
      }
    }
  }
  return Status::Ok();
}

}  // namespace cpu
}  // namespace flashattn
