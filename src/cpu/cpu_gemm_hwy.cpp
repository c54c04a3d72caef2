// Inner loops of the CPU FlashAttention kernels (see cpu_gemm.h).
//
// With Highway (FLASHATTN_HAS_HWY) this file is compiled once per SIMD target
// (foreach_target.h re-includes it) and HWY_DYNAMIC_DISPATCH picks the best
// one for the running CPU. Without it, plain loops that -O3 vectorizes.
//
// GEMM micro-kernel: an MR x (NR vectors) block of C lives in registers; for
// every k one row of B (NR vectors) is loaded and MR elements of A are
// broadcast, giving MR * NR FMAs per MR + NR loads. MR = 6, NR = 2 uses
// 12 accumulators + 2 B vectors + 1 broadcast of the 16 AVX2 registers, and
// 16-column panels divide every padded width (kColPad).
// Column panels of B (K x NR vectors) are the outer loop so a panel stays in
// L1 while the row tiles of A stream past it.
#include "cpu/cpu_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if FLASHATTN_HAS_HWY

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/cpu_gemm_hwy.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace flashattn {
namespace cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

template <int MR, int NR, bool kTransA>
HWY_INLINE void GemmTile(int64_t K, const float* HWY_RESTRICT A, int64_t lda, const float* HWY_RESTRICT B,
                         int64_t ldb, float* HWY_RESTRICT C, int64_t ldc, bool accumulate) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  VF c[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) c[r][n] = accumulate ? hn::LoadU(d, C + r * ldc + n * L) : hn::Zero(d);
  for (int64_t k = 0; k < K; ++k) {
    VF b[NR];
    for (int n = 0; n < NR; ++n) b[n] = hn::LoadU(d, B + k * ldb + n * L);
    for (int r = 0; r < MR; ++r) {
      const VF a = hn::Set(d, kTransA ? A[k * lda + r] : A[r * lda + k]);
      for (int n = 0; n < NR; ++n) c[r][n] = hn::MulAdd(a, b[n], c[r][n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) hn::StoreU(c[r][n], d, C + r * ldc + n * L);
}

// All row tiles of one column panel of NR vectors.
template <int NR, bool kTransA>
HWY_INLINE void GemmPanel(int64_t M, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                          int64_t ldc, bool acc) {
  auto a_at = [&](int64_t r) { return kTransA ? A + r : A + r * lda; };
  int64_t r = 0;
  for (; r + 6 <= M; r += 6) GemmTile<6, NR, kTransA>(K, a_at(r), lda, B, ldb, C + r * ldc, ldc, acc);
  if (r + 4 <= M) {
    GemmTile<4, NR, kTransA>(K, a_at(r), lda, B, ldb, C + r * ldc, ldc, acc);
    r += 4;
  }
  if (r + 2 <= M) {
    GemmTile<2, NR, kTransA>(K, a_at(r), lda, B, ldb, C + r * ldc, ldc, acc);
    r += 2;
  }
  if (r < M) GemmTile<1, NR, kTransA>(K, a_at(r), lda, B, ldb, C + r * ldc, ldc, acc);
}

// Column panels of 2 vectors (6 x 2 tiles: 12 accumulators), then one vector.
template <bool kTransA>
HWY_INLINE void GemmT(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool acc) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  int64_t j = 0;
  for (; j + 2 * L <= N; j += 2 * L) GemmPanel<2, kTransA>(M, K, A, lda, B + j, ldb, C + j, ldc, acc);
  for (; j + L <= N; j += L) GemmPanel<1, kTransA>(M, K, A, lda, B + j, ldb, C + j, ldc, acc);
}

void GemmImpl(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool a_trans, const float* B,
              int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (a_trans)
    GemmT<true>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  else
    GemmT<false>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

float RowMaxImpl(const float* x, int64_t n) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  VF m = hn::Set(d, -INFINITY);
  for (int64_t j = 0; j < n; j += L) m = hn::Max(m, hn::LoadU(d, x + j));
  return hn::GetLane(hn::MaxOfLanes(d, m));
}

float ExpSubSumImpl(float* x, int64_t n, float m) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const VF vm = hn::Set(d, m);
  VF s0 = hn::Zero(d), s1 = hn::Zero(d);
  int64_t j = 0;
  for (; j + 2 * L <= n; j += 2 * L) {
    const VF e0 = hn::Exp(d, hn::Sub(hn::LoadU(d, x + j), vm));
    const VF e1 = hn::Exp(d, hn::Sub(hn::LoadU(d, x + j + L), vm));
    hn::StoreU(e0, d, x + j);
    hn::StoreU(e1, d, x + j + L);
    s0 = hn::Add(s0, e0);
    s1 = hn::Add(s1, e1);
  }
  float tail = 0.0f;
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    tail += x[j];
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1))) + tail;
}

void ScaleRowImpl(float* x, int64_t n, float a) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const VF va = hn::Set(d, a);
  int64_t j = 0;
  for (; j + L <= n; j += L) hn::StoreU(hn::Mul(hn::LoadU(d, x + j), va), d, x + j);
  for (; j < n; ++j) x[j] *= a;
}

void SoftcapRowImpl(float* x, int64_t n, float cap) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const VF vc = hn::Set(d, cap), vinv = hn::Set(d, 1.0f / cap);
  int64_t j = 0;
  for (; j + L <= n; j += L)
    hn::StoreU(hn::Mul(vc, hn::Tanh(d, hn::Mul(hn::LoadU(d, x + j), vinv))), d, x + j);
  for (; j < n; ++j) x[j] = cap * std::tanh(x[j] / cap);
}

void DsRowImpl(const float* p, const float* dp, const float* s, float* ds, int64_t n, float delta, float cap) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const VF vdelta = hn::Set(d, delta);
  int64_t j = 0;
  if (cap > 0.0f) {
    const VF vinv = hn::Set(d, 1.0f / cap), one = hn::Set(d, 1.0f);
    for (; j + L <= n; j += L) {
      const VF t = hn::Mul(hn::LoadU(d, s + j), vinv);
      // 1 - t^2, clamped at 0 so a masked score (t = -inf, p = 0) gives 0, not NaN.
      const VF g = hn::Max(hn::NegMulAdd(t, t, one), hn::Zero(d));
      const VF v = hn::Mul(hn::LoadU(d, p + j), hn::Sub(hn::LoadU(d, dp + j), vdelta));
      hn::StoreU(hn::Mul(v, g), d, ds + j);
    }
    for (; j < n; ++j) {
      const float t = s[j] / cap;
      ds[j] = p[j] * (dp[j] - delta) * std::max(1.0f - t * t, 0.0f);
    }
    return;
  }
  for (; j + L <= n; j += L)
    hn::StoreU(hn::Mul(hn::LoadU(d, p + j), hn::Sub(hn::LoadU(d, dp + j), vdelta)), d, ds + j);
  for (; j < n; ++j) ds[j] = p[j] * (dp[j] - delta);
}

// 2^x for x <= 0 (scores minus their running max): x = n + f with n = round(x),
// f in [-0.5, 0.5]; 2^f by its degree-7 Taylor polynomial (truncation < 1e-8,
// so ~1 ulp in fp32), 2^n by building the exponent bits. x < -126 (and -inf)
// gives 0. Cheaper than hn::Exp, which handles the full range.
HWY_INLINE VF Exp2NonPositive(DF d, VF x) {
  const hn::RebindToSigned<DF> di;
  const VF lo = hn::Set(d, -126.0f);
  const VF xc = hn::Max(x, lo);
  const VF n = hn::Round(xc);
  const VF f = hn::Sub(xc, n);
  VF p = hn::Set(d, 1.525273380405984e-05f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.5403530393381606e-04f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.3333558146428443e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.618129107628477e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.550410866482158e-02f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.402265069591007e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.931471805599453e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  const VF pow2n = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::IfThenZeroElse(hn::Lt(x, lo), hn::Mul(p, pow2n));
}

void SoftmaxBlockImpl(float* S, int64_t ld, int64_t rows, int64_t n, float* row_max, float* row_sum, float* O,
                      int64_t ldo, int64_t no) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * ld;
    VF vmax = hn::Set(d, -INFINITY);
    for (int64_t j = 0; j < n; j += L) vmax = hn::Max(vmax, hn::LoadU(d, s + j));
    const float block_max = hn::GetLane(hn::MaxOfLanes(d, vmax));
    if (block_max == -INFINITY) {  // nothing visible in this block: P = 0
      for (int64_t j = 0; j < n; j += L) hn::StoreU(hn::Zero(d), d, s + j);
      continue;
    }
    if (block_max > row_max[r]) {  // the max moved: rescale the running sum and O
      if (row_max[r] != -INFINITY) {
        const float alpha = std::exp2(row_max[r] - block_max);
        row_sum[r] *= alpha;
        const VF va = hn::Set(d, alpha);
        float* o = O + r * ldo;
        for (int64_t j = 0; j < no; j += L) hn::StoreU(hn::Mul(hn::LoadU(d, o + j), va), d, o + j);
      }
      row_max[r] = block_max;
    }
    const VF vm = hn::Set(d, row_max[r]);
    VF acc0 = hn::Zero(d), acc1 = hn::Zero(d);
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
      const VF e0 = Exp2NonPositive(d, hn::Sub(hn::LoadU(d, s + j), vm));
      const VF e1 = Exp2NonPositive(d, hn::Sub(hn::LoadU(d, s + j + L), vm));
      hn::StoreU(e0, d, s + j);
      hn::StoreU(e1, d, s + j + L);
      acc0 = hn::Add(acc0, e0);
      acc1 = hn::Add(acc1, e1);
    }
    for (; j < n; j += L) {
      const VF e0 = Exp2NonPositive(d, hn::Sub(hn::LoadU(d, s + j), vm));
      hn::StoreU(e0, d, s + j);
      acc0 = hn::Add(acc0, e0);
    }
    row_sum[r] += hn::GetLane(hn::SumOfLanes(d, hn::Add(acc0, acc1)));
  }
}

float DotImpl(const float* a, const float* b, int64_t n) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  VF acc = hn::Zero(d);
  int64_t j = 0;
  for (; j + L <= n; j += L) acc = hn::MulAdd(hn::LoadU(d, a + j), hn::LoadU(d, b + j), acc);
  float tail = 0.0f;
  for (; j < n; ++j) tail += a[j] * b[j];
  return hn::GetLane(hn::SumOfLanes(d, acc)) + tail;
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace flashattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace flashattn {
namespace cpu {
HWY_EXPORT(GemmImpl);
HWY_EXPORT(RowMaxImpl);
HWY_EXPORT(ExpSubSumImpl);
HWY_EXPORT(ScaleRowImpl);
HWY_EXPORT(SoftcapRowImpl);
HWY_EXPORT(DsRowImpl);
HWY_EXPORT(DotImpl);
HWY_EXPORT(SoftmaxBlockImpl);
HWY_EXPORT(TargetNameImpl);

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool a_trans, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate) {
  HWY_DYNAMIC_DISPATCH(GemmImpl)(M, N, K, A, lda, a_trans, B, ldb, C, ldc, accumulate);
}
float row_max(const float* x, int64_t n) { return HWY_DYNAMIC_DISPATCH(RowMaxImpl)(x, n); }
float exp_sub_sum(float* x, int64_t n, float m) { return HWY_DYNAMIC_DISPATCH(ExpSubSumImpl)(x, n, m); }
void scale_row(float* x, int64_t n, float a) { HWY_DYNAMIC_DISPATCH(ScaleRowImpl)(x, n, a); }
void softcap_row(float* x, int64_t n, float cap) { HWY_DYNAMIC_DISPATCH(SoftcapRowImpl)(x, n, cap); }
void ds_row(const float* p, const float* dp, const float* s, float* ds, int64_t n, float delta, float cap) {
  HWY_DYNAMIC_DISPATCH(DsRowImpl)(p, dp, s, ds, n, delta, cap);
}
float dot(const float* a, const float* b, int64_t n) { return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n); }
void softmax_block_log2(float* S, int64_t ld, int64_t rows, int64_t n, float* row_max, float* row_sum, float* O,
                        int64_t ldo, int64_t no) {
  HWY_DYNAMIC_DISPATCH(SoftmaxBlockImpl)(S, ld, rows, n, row_max, row_sum, O, ldo, no);
}
const char* simd_target_name() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }
}  // namespace cpu
}  // namespace flashattn
#endif  // HWY_ONCE

#else  // !FLASHATTN_HAS_HWY: plain loops, vectorized by the compiler at -O3.

namespace flashattn {
namespace cpu {
namespace {

// Register blocking like the Highway kernel with GCC/Clang vector extensions
// (portable; 4 floats is the x86-64 baseline SSE2 width, and wider generic
// vectors are spilled to the stack when the target lacks them): a 4 x 8 block
// of C in 8 vector registers.
typedef float Vec4 __attribute__((vector_size(16)));

inline Vec4 load4(const float* p) {
  Vec4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store4(float* p, Vec4 v) { std::memcpy(p, &v, sizeof(v)); }

template <int MR, bool kTransA>
inline void gemm_tile8(int64_t K, const float* __restrict__ A, int64_t lda, const float* __restrict__ B, int64_t ldb,
                       float* __restrict__ C, int64_t ldc, bool accumulate) {
  Vec4 c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = Vec4{};
  if (accumulate)
    for (int r = 0; r < MR; ++r) c0[r] = load4(C + r * ldc), c1[r] = load4(C + r * ldc + 4);
  for (int64_t k = 0; k < K; ++k) {
    const Vec4 b0 = load4(B + k * ldb), b1 = load4(B + k * ldb + 4);
    for (int r = 0; r < MR; ++r) {
      const float a = kTransA ? A[k * lda + r] : A[r * lda + k];
      c0[r] += a * b0;
      c1[r] += a * b1;
    }
  }
  for (int r = 0; r < MR; ++r) store4(C + r * ldc, c0[r]), store4(C + r * ldc + 4, c1[r]);
}

template <bool kTransA>
void gemm_t(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
            int64_t ldc, bool acc) {
  for (int64_t j = 0; j < N; j += 8) {
    int64_t r = 0;
    for (; r + 4 <= M; r += 4)
      gemm_tile8<4, kTransA>(K, kTransA ? A + r : A + r * lda, lda, B + j, ldb, C + r * ldc + j, ldc, acc);
    for (; r < M; ++r)
      gemm_tile8<1, kTransA>(K, kTransA ? A + r : A + r * lda, lda, B + j, ldb, C + r * ldc + j, ldc, acc);
  }
}

// 2^x for x <= 0, the same polynomial as the Highway path, written so the
// compiler can vectorize loops over it (no libm call). x < -126 gives 0.
inline float exp2_nonpositive(float x) {
  const float xc = x < -126.0f ? -126.0f : x;
  const float n = static_cast<float>(static_cast<int32_t>(xc - 0.5f));  // round to nearest for xc <= 0
  const float f = xc - n;
  float p = 1.525273380405984e-05f;
  p = p * f + 1.5403530393381606e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.618129107628477e-03f;
  p = p * f + 5.550410866482158e-02f;
  p = p * f + 2.402265069591007e-01f;
  p = p * f + 6.931471805599453e-01f;
  p = p * f + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float pow2n;
  std::memcpy(&pow2n, &bits, 4);
  return x < -126.0f ? 0.0f : p * pow2n;
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool a_trans, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate) {
  if (a_trans)
    gemm_t<true>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  else
    gemm_t<false>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

static float row_max_of(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

float exp_sub_sum(float* x, int64_t n, float m) {
  float s = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

void scale_row(float* x, int64_t n, float a) {
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

void softcap_row(float* x, int64_t n, float cap) {
  for (int64_t j = 0; j < n; ++j) x[j] = cap * std::tanh(x[j] / cap);
}

void ds_row(const float* p, const float* dp, const float* s, float* ds, int64_t n, float delta, float cap) {
  if (cap > 0.0f) {
    for (int64_t j = 0; j < n; ++j) {
      const float t = s[j] / cap;
      ds[j] = p[j] * (dp[j] - delta) * std::max(1.0f - t * t, 0.0f);
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (dp[j] - delta);
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

void softmax_block_log2(float* S, int64_t ld, int64_t rows, int64_t n, float* row_max, float* row_sum, float* O,
                        int64_t ldo, int64_t no) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * ld;
    const float block_max = row_max_of(s, n);
    if (block_max == -INFINITY) {
      for (int64_t j = 0; j < n; ++j) s[j] = 0.0f;
      continue;
    }
    if (block_max > row_max[r]) {
      if (row_max[r] != -INFINITY) {
        const float alpha = std::exp2(row_max[r] - block_max);
        row_sum[r] *= alpha;
        scale_row(O + r * ldo, no, alpha);
      }
      row_max[r] = block_max;
    }
    const float m = row_max[r];
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) s[j] = exp2_nonpositive(s[j] - m);
    for (int64_t j = 0; j < n; ++j) sum += s[j];
    row_sum[r] += sum;
  }
}

const char* simd_target_name() { return "plain loops (no Highway)"; }

}  // namespace cpu
}  // namespace flashattn

#endif  // FLASHATTN_HAS_HWY
