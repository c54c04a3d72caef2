// Inner loops of the CPU FlashAttention kernels (flash_fwd.cpp, flash_bwd.cpp):
// a register-blocked fp32 GEMM and the row-wise softmax pieces. Implemented
// in cpu_gemm_hwy.cpp with Highway (runtime dispatch to the best SIMD target
// of the machine) when FLASHATTN_HAS_HWY, else with plain loops the compiler
// vectorizes. All matrices are fp32, row-major, with explicit leading dims.
#pragma once

#include <cstdint>

namespace flashattn {
namespace cpu {

// Column counts handed to the kernels below are padded to a multiple of this,
// and every buffer they write must hold that many columns per row.
constexpr int64_t kColPad = 16;
inline int64_t pad_cols(int64_t n) { return (n + kColPad - 1) / kColPad * kColPad; }

// C[M x N] (+)= op(A)[M x K] * B[K x N], N a multiple of kColPad.
//   op(A) = A      (A is M x K, element (r, k) at A[r * lda + k]),  a_trans = false
//   op(A) = A^T    (A is K x M, element (r, k) at A[k * lda + r]),  a_trans = true
// accumulate = false overwrites C.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool a_trans, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate);

// max over x[0, n), n a multiple of kColPad; -inf for an all -inf row.
float row_max(const float* x, int64_t n);
// x[j] = exp(x[j] - m) for j < n (exp(-inf) = 0); returns the sum. m must be finite.
float exp_sub_sum(float* x, int64_t n, float m);
// x[j] *= a for j < n.
void scale_row(float* x, int64_t n, float a);
// Soft-capping: x[j] = cap * tanh(x[j] / cap) for j < n.
void softcap_row(float* x, int64_t n, float cap);
// Backward: ds[j] = p[j] * (dp[j] - delta), times (1 - (s[j] / cap)^2) when cap > 0
// (s the capped scores, so s / cap = tanh; the factor is clamped at 0 so masked
// scores s = -inf with p = 0 give 0). s may be null when cap == 0.
void ds_row(const float* p, const float* dp, const float* s, float* ds, int64_t n, float delta, float cap);
// The online-softmax step of the forward for one S tile [rows x n] (ld), in
// base 2: the scores are pre-multiplied by log2(e), so exp(x) becomes exp2(x),
// the same formula as online_softmax.h, equations (3)-(4). Per row r:
//   m' = max(row_max[r], max_j S[r][j]); where m' > row_max[r], row_sum[r] and
//   O[r][0, no) are multiplied by exp2(row_max[r] - m'); then S[r][j] = exp2(S[r][j] - m')
//   (0 for -inf) and row_sum[r] += sum_j S[r][j]. A row whose block is all -inf gets P = 0
//   and keeps its statistics. n and no are multiples of kColPad.
void softmax_block_log2(float* S, int64_t ld, int64_t rows, int64_t n, float* row_max, float* row_sum, float* O,
                        int64_t ldo, int64_t no);
// sum_j a[j] * b[j], j < n.
float dot(const float* a, const float* b, int64_t n);

// Which implementation was compiled and picked at run time (e.g. "AVX2", "plain loops").
const char* simd_target_name();

}  // namespace cpu
}  // namespace flashattn
