// FlashAttention-2 backward on sm_80 tensor cores (mma.sync m16n8k16 + ldmatrix),
// also the path used on Hopper. docs/05-backward.md has the math; equation
// numbers (Bn) below refer to it.
//
// Three kernels per call:
//   1. bwd_preprocess: D_i = rowsum(dO_i * O_i) in fp32                      (B3)
//   2. bwd_main: one CTA per (kv block, kv head, batch) [x head-dim half]. K_j, V_j
//      stay in shared memory; the CTA walks the Q blocks that see them (skipping
//      fully masked ones) for every query head of the kv head's group, recomputes
//      P from the saved LSE and accumulates dK_j, dV_j in registers; dQ_i goes to
//      an fp32 buffer with red.global.add (deterministic mode: ordered by a
//      per-Q-block semaphore, so the sum order is fixed).
//   3. bwd_convert_dq: dQ = scale * dq_accum, in the dtype, with the output strides.
//
// Variable-length batches (kVarlen): each sequence b has its own lengths and
// first packed rows (SeqLayout below); the grid still covers the longest one and
// the CTAs past a sequence's end leave at once. Masks are bottom-right aligned
// per sequence, as in the CPU reference. LSE, D and dq_accum keep the dense
// [batch, heads_q, seqlen_q(_pad)] shape, so only the tensor addressing changes.
//
// Tile: Br = 64 query rows x Bc = 64 key rows, 4 warps. Warp w owns key rows
// [16w, 16w + 16) for S^T, dP^T, dK, dV and query rows [16w, 16w + 16) for dQ.
// Working transposed (S^T = K Q^T) keeps P^T and dS^T in the accumulator layout
// that is directly the A operand of dV += P^T dO and dK += dS^T Q.
// Head dims above 128 run as two CTAs per key block, each owning one half of the
// output columns (kSplit = 2): S and dP are computed by both (they need all of d),
// which costs 2 of the 5 GEMMs twice but keeps dK + dV at <= 128 fp32 registers
// per thread.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_utils.cuh"
#include "cuda/fa2/fa2_bwd_launch.h"
#include "cuda/fa2/mma_sm80.cuh"

namespace flashattn {
namespace cuda {
namespace fa2bwd {

// Shared memory row stride (elements) of a [rows, kD] tile: 16 bytes of padding
// make the 8 rows read by one ldmatrix phase hit distinct banks.
template <int kD>
constexpr int smem_stride() {
  return kD + 8;
}
template <int kD, int kBlockN, int kStages>
constexpr size_t smem_bytes() {
  return (size_t)(2 * kBlockN + 2 * kStages * kBlockM) * smem_stride<kD>() * 2 + (size_t)kBlockN * (kBlockM + 8) * 2 +
         2 * kStages * kBlockM * sizeof(float);
}

// Async copy of a [kRows, kD] tile (rows >= valid_rows and columns >= head_dim
// are zero-filled) from a strided global tensor into shared memory.
template <typename T, int kRows, int kD, int kThreadsCta>
__device__ __forceinline__ void load_tile(T* smem, const T* gmem, int64_t row_stride, int64_t valid_rows,
                                          int64_t head_dim) {
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreadsCta) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < valid_rows && col < head_dim;
    const T* src = valid ? gmem + r * row_stride + col : gmem;
    sm80::cp_async_16(sm80::smem_addr(smem + r * smem_stride<kD>() + col), src, valid);
  }
}

// Lengths of sequence b and where its rows start. Dense: batch entry b with the
// full lengths, bound by reference to the params (accessor calls here changed
// the dense kernels' code; with references their PTX is what it was before
// varlen). Varlen: read from the index arrays once per CTA.
template <bool kVarlen>
struct SeqLayout {
  const int64_t& nq;      // query rows
  const int64_t& nk;      // keys seen
  const int64_t& k_rows;  // key rows owned: dK/dV rows written
  static constexpr int64_t q_start = 0, k_start = 0;  // first packed row
  const int64_t q_batch, k_batch;                      // index for the batch strides
  __device__ __forceinline__ SeqLayout(const KernelParams& p, int64_t b)
      : nq(p.seqlen_q), nk(p.seqlen_k), k_rows(p.seqlen_k), q_batch(b), k_batch(b) {}
};
template <>
struct SeqLayout<true> {
  int64_t q_start, k_start, nq, k_rows, nk, q_batch, k_batch;
  __device__ __forceinline__ SeqLayout(const KernelParams& p, int64_t b) {
    const bool packed = p.cu_seqlens_q != nullptr;  // cu_seqlens_q and _k come together (validate.cpp)
    q_start = packed ? p.cu_seqlens_q[b] : 0;
    k_start = packed ? p.cu_seqlens_k[b] : 0;
    nq = packed ? p.cu_seqlens_q[b + 1] - q_start : p.seqlen_q;
    k_rows = packed ? p.cu_seqlens_k[b + 1] - k_start : p.seqlen_k;
    nk = p.seqused_k ? p.seqused_k[b] : k_rows;  // keys in [nk, k_rows): dK = dV = 0
    q_batch = k_batch = packed ? 0 : b;          // packed tensors ignore the batch strides
  }
};

// D = rowsum(dO * O) (B3), zero on the padded rows. One warp per row.
template <typename T, bool kVarlen>
__global__ void bwd_preprocess(KernelParams p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q_pad;
  if (row >= rows) return;
  const int64_t i = row % p.seqlen_q_pad;
  const int64_t h = (row / p.seqlen_q_pad) % p.heads_q;
  const int64_t b = row / (p.seqlen_q_pad * p.heads_q);
  const SeqLayout<kVarlen> s(p, b);
  float acc = 0.0f;
  if (i < s.nq) {
    const int64_t r = s.q_start + i;
    const T* o = static_cast<const T*>(p.o) + s.q_batch * p.o_batch_stride + r * p.o_row_stride + h * p.o_head_stride;
    const T* d =
        static_cast<const T*>(p.dout) + s.q_batch * p.do_batch_stride + r * p.do_row_stride + h * p.do_head_stride;
    for (int64_t c = lane * 8; c < p.head_dim; c += 32 * 8) {
      const uint4 ov = *reinterpret_cast<const uint4*>(o + c);
      const uint4 dv = *reinterpret_cast<const uint4*>(d + c);
      const T* oe = reinterpret_cast<const T*>(&ov);
      const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc += to_float(oe[e]) * to_float(de[e]);
    }
  }
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (lane == 0) p.delta[row] = acc;
}

// dq = scale * dq_accum in the dtype, with the dq strides. 8 elements per thread.
// Varlen: the rows of sequence b past its length are no rows of dq.
template <typename T, bool kVarlen>
__global__ void bwd_convert_dq(KernelParams p) {
  const int64_t chunks = p.head_dim / 8;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= p.batch * p.seqlen_q * p.heads_q * chunks) return;
  const int64_t c = idx % chunks;
  const int64_t h = (idx / chunks) % p.heads_q;
  const int64_t i = (idx / (chunks * p.heads_q)) % p.seqlen_q;
  const int64_t b = idx / (chunks * p.heads_q * p.seqlen_q);
  const SeqLayout<kVarlen> s(p, b);
  if (kVarlen && i >= s.nq) return;
  const float* src = p.dq_accum + ((b * p.heads_q + h) * p.seqlen_q_pad + i) * p.head_dim_pad + c * 8;
  const float4 lo = *reinterpret_cast<const float4*>(src);
  const float4 hi = *reinterpret_cast<const float4*>(src + 4);
  uint4 out;
  out.x = sm80::pack2<T>(lo.x * p.scale, lo.y * p.scale);
  out.y = sm80::pack2<T>(lo.z * p.scale, lo.w * p.scale);
  out.z = sm80::pack2<T>(hi.x * p.scale, hi.y * p.scale);
  out.w = sm80::pack2<T>(hi.z * p.scale, hi.w * p.scale);
  T* dst = static_cast<T*>(p.dq) + s.q_batch * p.dq_batch_stride + (s.q_start + i) * p.dq_row_stride +
           h * p.dq_head_stride + c * 8;
  *reinterpret_cast<uint4*>(dst) = out;
}

__device__ __forceinline__ int ld_acquire(const int* ptr) {
#if defined(__CUDACC__)
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(ptr) : "memory");
  return v;
#else  // the host emulator (scripts/fa2_emu)
  return __atomic_load_n(ptr, __ATOMIC_ACQUIRE);
#endif
}

// dq_accum[0..3] += v[0..3] (16-byte aligned): one vector reduction on sm_90.
__device__ __forceinline__ void red_add_f32x4(float* dst, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(a), "f"(b), "f"(c), "f"(d)
               : "memory");
#else
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
  atomicAdd(dst + 2, c);
  atomicAdd(dst + 3, d);
#endif
}

// The main kernel. kD: instantiated (padded) head dim; kWarps: warps per CTA
// (Bc = 16 * kWarps key rows); kSplit: CTAs per key block, each owning kD / kSplit
// output columns; kStages: 2 = the next Q block's tiles load during this one;
// kVarlen: per-sequence lengths and packed rows (a template flag so that the
// dense instantiations compile exactly as before).
template <typename T, int kD, int kWarps, int kSplit, int kStages, bool kVarlen>
__global__ void __launch_bounds__(32 * kWarps) bwd_main(KernelParams p) {
  constexpr int kThreadsCta = 32 * kWarps;
  constexpr int kBlockN = 16 * kWarps;
  constexpr int kDh = kD / kSplit;  // output columns of this CTA
  constexpr int kS = smem_stride<kD>();
  constexpr int kNT = kBlockM / 8;  // n-tiles of S^T / dP^T per warp (16 x Br)
  constexpr int kOT = kDh / 8;      // n-tiles of dK / dV per warp (16 x kDh)
  constexpr int kColGroups = kWarps / 4;     // dQ: 4 groups of 16 query rows x kColGroups column groups
  constexpr int kDq = kDh / kColGroups;      // dQ columns per warp
  constexpr int kDsStride = kBlockM + 8;
  static_assert(kDq % 16 == 0, "dQ columns are processed in chunks of 16");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBlockN * kS;
  T* sQ = sV + kBlockN * kS;            // kStages x [kBlockM][kS]
  T* sdO = sQ + kStages * kBlockM * kS;  // kStages x [kBlockM][kS]
  T* sdS = sdO + kStages * kBlockM * kS;  // dS^T: [kBlockN][kDsStride]
  float* sLse = reinterpret_cast<float*>(sdS + kBlockN * kDsStride);  // kStages x kBlockM
  float* sDelta = sLse + kStages * kBlockM;

  // Deterministic mode adds dQ in decreasing key-block order (see the wait
  // below), so it hands the highest key blocks the lowest block indices: they
  // are scheduled first and no CTA waits for one that is not resident yet.
  const int64_t num_n = p.num_n_blocks;
  const int64_t n_block = p.deterministic ? num_n - 1 - blockIdx.x / kSplit : blockIdx.x / kSplit;
  const int half = blockIdx.x % kSplit;
  const int64_t hk = blockIdx.y, b = blockIdx.z;
  const int col0 = half * kDh;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t j0 = n_block * kBlockN;
  const SeqLayout<kVarlen> s(p, b);
  // Varlen: the grid covers the longest sequence; a block past this one's key
  // rows owns no dK/dV rows. (Whole CTA leaves: no barrier has run yet.)
  if (kVarlen && j0 >= s.k_rows) return;
  const int64_t off = s.nk - s.nq;  // bottom-right alignment of the mask
  const int64_t wl = p.window_left, wr = p.window_right;

  // K_j, V_j: loaded once.
  load_tile<T, kBlockN, kD, kThreadsCta>(sK, static_cast<const T*>(p.k) + s.k_batch * p.k_batch_stride +
                                                 (s.k_start + j0) * p.k_row_stride + hk * p.k_head_stride,
                                         p.k_row_stride, s.nk - j0, p.head_dim);
  load_tile<T, kBlockN, kD, kThreadsCta>(sV, static_cast<const T*>(p.v) + s.k_batch * p.v_batch_stride +
                                                 (s.k_start + j0) * p.v_row_stride + hk * p.v_head_stride,
                                         p.v_row_stride, s.nk - j0, p.head_dim);
  sm80::cp_async_commit();

  // Query rows that see at least one key of [j0, j_last] (mask.h, inverted).
  // Varlen: keys [j0, k_rows) past seqused_k are seen by no row (dK = dV = 0).
  const bool has_keys = !kVarlen || j0 < s.nk;
  const int64_t j_last = min(j0 + kBlockN, s.nk) - 1;
  int64_t i_lo = 0, i_hi = s.nq - 1;
  if (wr >= 0) i_lo = max(i_lo, j0 - off - wr);
  if (wl >= 0) i_hi = min(i_hi, j_last - off + wl);
  const int64_t m_begin = i_lo / kBlockM;
  const int64_t num_m = has_keys && i_lo <= i_hi ? i_hi / kBlockM + 1 - m_begin : 0;
  const int64_t total = num_m * p.group;  // (query head of the group, Q block) pairs

  // Issue the loads of pair `it` into stage `stage`: Q and dO tiles (cp.async), LSE and D.
  auto load_q_block = [&](int64_t it, int stage) {
    const int64_t h = hk * p.group + it / num_m;
    const int64_t i0 = (m_begin + it % num_m) * kBlockM;
    load_tile<T, kBlockM, kD, kThreadsCta>(sQ + stage * kBlockM * kS,
                                           static_cast<const T*>(p.q) + s.q_batch * p.q_batch_stride +
                                               (s.q_start + i0) * p.q_row_stride + h * p.q_head_stride,
                                           p.q_row_stride, s.nq - i0, p.head_dim);
    load_tile<T, kBlockM, kD, kThreadsCta>(sdO + stage * kBlockM * kS,
                                           static_cast<const T*>(p.dout) + s.q_batch * p.do_batch_stride +
                                               (s.q_start + i0) * p.do_row_stride + h * p.do_head_stride,
                                           p.do_row_stride, s.nq - i0, p.head_dim);
    if (tid < kBlockM) {
      const int64_t i = i0 + tid;
      float l = -INFINITY;
      // LSE rows are [batch, heads_q, seqlen_q] with seqlen_q the maximum (varlen too).
      if (i < s.nq) l = p.lse[(b * p.heads_q + h) * p.seqlen_q + i];
      // A fully masked row (LSE = -inf) or a padded row: P = exp2(x - inf) = 0, never NaN.
      sLse[stage * kBlockM + tid] = l == -INFINITY ? INFINITY : l * kLog2e;
      sDelta[stage * kBlockM + tid] = p.delta[(b * p.heads_q + h) * p.seqlen_q_pad + i];
    }
  };
  if (kStages == 2 && total > 0) load_q_block(0, 0);
  sm80::cp_async_commit();

  float acc_dk[kOT][4], acc_dv[kOT][4];
#pragma unroll
  for (int n = 0; n < kOT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[n][e] = acc_dv[n][e] = 0.0f;

  const uint32_t sK_base = sm80::smem_addr(sK), sV_base = sm80::smem_addr(sV);
  const uint32_t sdS_base = sm80::smem_addr(sdS);
  // ldmatrix lane offsets (elements), see mma_sm80.cuh for the fragment layouts.
  const int a_row = lane & 15, a_col = (lane >> 4) * 8;                                // A from [m][k]
  const int b_row = (lane & 7) + ((lane >> 4) << 3), b_col = ((lane >> 3) & 1) * 8;   // B from [n][k]
  const int bt_row = (lane & 7) + (((lane >> 3) & 1) << 3), bt_col = (lane >> 4) * 8;  // B from [k][n], .trans
  const int at_row = (lane & 7) + ((lane >> 4) << 3), at_col = ((lane >> 3) & 1) * 8;  // A from [k][m], .trans

  for (int64_t it = 0; it < total; ++it) {
    const int stage = kStages == 2 ? int(it & 1) : 0;
    const int64_t h = hk * p.group + it / num_m;
    const int64_t m = m_begin + it % num_m;
    const int64_t i0 = m * kBlockM;
    if (kStages == 2) {
      // Prefetch the next pair into the other stage: its last readers finished
      // before the previous iteration's dS barrier.
      if (it + 1 < total) load_q_block(it + 1, stage ^ 1);
      sm80::cp_async_commit();
      sm80::cp_async_wait<1>();
    } else {
      __syncthreads();  // the previous iteration is done with sQ, sdO, sLse, sDelta
      load_q_block(it, 0);
      sm80::cp_async_commit();
      sm80::cp_async_wait<0>();
    }
    __syncthreads();  // tiles of this pair visible; the previous dQ is done with sdS
    const uint32_t sQ_base = sm80::smem_addr(sQ + stage * kBlockM * kS);
    const uint32_t sdO_base = sm80::smem_addr(sdO + stage * kBlockM * kS);
    const float* lse2 = sLse + stage * kBlockM;
    const float* delta = sDelta + stage * kBlockM;

    // S^T = K_w Q^T (B1), 16 x Br per warp; dP^T = V_w dO^T (B4).
    float acc_s[kNT][4], acc_dp[kNT][4];
#pragma unroll
    for (int n = 0; n < kNT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_s[n][e] = acc_dp[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t ak[4], av[4];
      sm80::ldmatrix_x4(ak, sK_base + ((warp * 16 + a_row) * kS + kk * 16 + a_col) * 2);
      sm80::ldmatrix_x4(av, sV_base + ((warp * 16 + a_row) * kS + kk * 16 + a_col) * 2);
#pragma unroll
      for (int nn = 0; nn < kBlockM / 16; ++nn) {
        uint32_t bq[4], bo[4];
        sm80::ldmatrix_x4(bq, sQ_base + ((nn * 16 + b_row) * kS + kk * 16 + b_col) * 2);
        sm80::ldmatrix_x4(bo, sdO_base + ((nn * 16 + b_row) * kS + kk * 16 + b_col) * 2);
        sm80::mma_16816<T>(acc_s[2 * nn], ak, bq[0], bq[1]);
        sm80::mma_16816<T>(acc_s[2 * nn + 1], ak, bq[2], bq[3]);
        sm80::mma_16816<T>(acc_dp[2 * nn], av, bo[0], bo[1]);
        sm80::mma_16816<T>(acc_dp[2 * nn + 1], av, bo[2], bo[3]);
      }
    }

    // P^T = exp(s - LSE) (B2), with the mask and the softcap; in the log2 domain.
    // (Dense: the lengths are read through p right here, not through s or a local:
    // that keeps the dense kernels' PTX exactly what it was before varlen.)
    const int64_t i_last = min(i0 + kBlockM, kVarlen ? s.nq : p.seqlen_q) - 1;
    const bool need_mask = i0 + kBlockM > (kVarlen ? s.nq : p.seqlen_q) ||
                           j0 + kBlockN > (kVarlen ? s.nk : p.seqlen_k) || (wr >= 0 && j_last > i0 + off + wr) ||
                           (wl >= 0 && j0 < i_last + off - wl);
#pragma unroll
    for (int n = 0; n < kNT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ic = n * 8 + 2 * t + (e & 1);
        float x = p.softcap > 0.0f ? tanhf(acc_s[n][e] * p.softcap_in) * p.softcap_log2
                                   : acc_s[n][e] * p.scale_log2;
        if (need_mask) {
          const int64_t i = i0 + ic, j = j0 + warp * 16 + g + (e >> 1) * 8;
          const bool visible = j < (kVarlen ? s.nk : p.seqlen_k) && (wr < 0 || j <= i + off + wr) &&
                               (wl < 0 || j >= i + off - wl);
          if (!visible) x = -INFINITY;
        }
        acc_s[n][e] = sm80::exp2_approx(x - lse2[ic]);
      }

    // dV_w += P^T dO (B5).
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      const uint32_t a[4] = {sm80::pack2<T>(acc_s[2 * kk][0], acc_s[2 * kk][1]),
                             sm80::pack2<T>(acc_s[2 * kk][2], acc_s[2 * kk][3]),
                             sm80::pack2<T>(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]),
                             sm80::pack2<T>(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3])};
#pragma unroll
      for (int nn = 0; nn < kDh / 16; ++nn) {
        uint32_t bo[4];
        sm80::ldmatrix_x4_trans(bo, sdO_base + ((kk * 16 + bt_row) * kS + col0 + nn * 16 + bt_col) * 2);
        sm80::mma_16816<T>(acc_dv[2 * nn], a, bo[0], bo[1]);
        sm80::mma_16816<T>(acc_dv[2 * nn + 1], a, bo[2], bo[3]);
      }
    }

    // dS^T = P^T * (dP^T - D) (B6), times the softcap derivative 1 - tanh^2 (B7).
#pragma unroll
    for (int n = 0; n < kNT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ic = n * 8 + 2 * t + (e & 1);
        const float pv = acc_s[n][e];
        float ds = pv * (acc_dp[n][e] - delta[ic]);
        if (p.softcap > 0.0f) {
          // tanh recovered from P: s = ln P + LSE, tanh = s / softcap (P = 0 -> dS = 0).
          const float th = (log2f(pv) + lse2[ic]) / p.softcap_log2;
          ds = pv > 0.0f ? ds * (1.0f - th * th) : 0.0f;
        }
        acc_s[n][e] = ds;
      }

    // dK_w += dS^T Q (B8, scale applied at the end).
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      const uint32_t a[4] = {sm80::pack2<T>(acc_s[2 * kk][0], acc_s[2 * kk][1]),
                             sm80::pack2<T>(acc_s[2 * kk][2], acc_s[2 * kk][3]),
                             sm80::pack2<T>(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]),
                             sm80::pack2<T>(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3])};
      // dS^T to shared memory for dQ (the same rounded values the dK GEMM uses).
      const int r = warp * 16 + g, c = kk * 16 + 2 * t;
      *reinterpret_cast<uint32_t*>(sdS + r * kDsStride + c) = a[0];
      *reinterpret_cast<uint32_t*>(sdS + (r + 8) * kDsStride + c) = a[1];
      *reinterpret_cast<uint32_t*>(sdS + r * kDsStride + c + 8) = a[2];
      *reinterpret_cast<uint32_t*>(sdS + (r + 8) * kDsStride + c + 8) = a[3];
#pragma unroll
      for (int nn = 0; nn < kDh / 16; ++nn) {
        uint32_t bq[4];
        sm80::ldmatrix_x4_trans(bq, sQ_base + ((kk * 16 + bt_row) * kS + col0 + nn * 16 + bt_col) * 2);
        sm80::mma_16816<T>(acc_dk[2 * nn], a, bq[0], bq[1]);
        sm80::mma_16816<T>(acc_dk[2 * nn + 1], a, bq[2], bq[3]);
      }
    }
    __syncthreads();  // sdS complete

    // dQ_i += dS K_j (B9): warp w owns query rows [16 (w % 4), +16) and
    // columns [kDq (w / 4), +kDq) of this CTA's kDh.
    const int rg = warp % 4, cq = col0 + (warp / 4) * kDq;
    uint32_t ads[kBlockN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
      sm80::ldmatrix_x4_trans(ads[kk], sdS_base + ((kk * 16 + at_row) * kDsStride + rg * 16 + at_col) * 2);
    int* sem = nullptr;
    if (p.deterministic) {
      // Contributions to dQ_i are added in decreasing key-block order: wait until
      // the key blocks above this one that see Q block m have added theirs.
      int64_t j_top = s.nk - 1;
      if (wr >= 0) j_top = min(j_top, i_last + off + wr);
      const int64_t n_last = j_top / kBlockN;
      sem = p.dq_sem + ((half * p.batch + b) * p.heads_q + h) * p.num_m_blocks + m;
      if (tid == 0)
        while (ld_acquire(sem) != n_last - n_block) {
        }
      __syncthreads();
    }
    // Thread pairs (t, t ^ 1) swap halves so each adds 4 consecutive floats of
    // one row: even t row g, odd t row g + 8.
    const bool odd = t & 1;
    float* dqa = p.dq_accum + ((b * p.heads_q + h) * p.seqlen_q_pad + i0 + rg * 16 + g + (odd ? 8 : 0)) *
                                  p.head_dim_pad;
#pragma unroll
    for (int chunk = 0; chunk < kDq / 16; ++chunk) {
      float acc[2][4];
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t bk[4];
        sm80::ldmatrix_x4_trans(bk, sK_base + ((kk * 16 + bt_row) * kS + cq + chunk * 16 + bt_col) * 2);
        sm80::mma_16816<T>(acc[0], ads[kk], bk[0], bk[1]);
        sm80::mma_16816<T>(acc[1], ads[kk], bk[2], bk[3]);
      }
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const float s0 = odd ? acc[n][0] : acc[n][2], s1 = odd ? acc[n][1] : acc[n][3];
        const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1), r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
        const int c = cq + chunk * 16 + n * 8 + 2 * (t & ~1);
        if (odd)
          red_add_f32x4(dqa + c, r0, r1, acc[n][2], acc[n][3]);
        else
          red_add_f32x4(dqa + c, acc[n][0], acc[n][1], r0, r1);
      }
    }
    if (p.deterministic) {
      __threadfence();
      __syncthreads();
      if (tid == 0) atomicAdd(sem, 1);
    }
  }
  sm80::cp_async_wait<0>();  // copies in flight when no Q block was visited

  // Epilogue: dK = scale * acc_dk, dV = acc_dv, in the dtype (rows past the
  // sequence's key rows dropped; varlen rows in [seqused_k, k_rows) get zeros).
#pragma unroll
  for (int half_row = 0; half_row < 2; ++half_row) {
    const int64_t j = j0 + warp * 16 + g + half_row * 8;
    if (j >= s.k_rows) continue;
    T* dk = static_cast<T*>(p.dk) + s.k_batch * p.dk_batch_stride + (s.k_start + j) * p.dk_row_stride +
            hk * p.dk_head_stride;
    T* dv = static_cast<T*>(p.dv) + s.k_batch * p.dv_batch_stride + (s.k_start + j) * p.dv_row_stride +
            hk * p.dv_head_stride;
#pragma unroll
    for (int n = 0; n < kOT; ++n) {
      const int c = col0 + n * 8 + 2 * t;
      if (c >= p.head_dim) continue;
      *reinterpret_cast<uint32_t*>(dk + c) =
          sm80::pack2<T>(acc_dk[n][2 * half_row] * p.scale, acc_dk[n][2 * half_row + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dv + c) = sm80::pack2<T>(acc_dv[n][2 * half_row], acc_dv[n][2 * half_row + 1]);
    }
  }
}

#if defined(__CUDACC__)  // the host emulator (scripts/fa2_emu) compiles only the kernels
// Runs the three kernels for one instantiated head dim (fa2_bwd_hdimNNN_*.cu).
// Preprocess and convert_dq are instantiated once, in fa2_bwd_steps.cu.
template <typename T, int kD>
Status launch(const KernelParams& params, cudaStream_t stream) {
  constexpr int kWarps = bwd_warps(kD), kSplit = bwd_split(kD), kStages = bwd_stages(kD);
  constexpr int kBlockN = bwd_block_n(kD);
  KernelParams p = params;
  p.num_n_blocks = (p.seqlen_k + kBlockN - 1) / kBlockN;

  Status st = launch_preprocess<T>(p, stream);
  if (!st.ok()) return st;

  constexpr size_t smem = smem_bytes<kD, kBlockN, kStages>();
  auto kernel = kernel_is_varlen(p) ? bwd_main<T, kD, kWarps, kSplit, kStages, true>
                                    : bwd_main<T, kD, kWarps, kSplit, kStages, false>;
  FA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const dim3 grid((unsigned)(p.num_n_blocks * kSplit), (unsigned)p.heads_kv, (unsigned)p.batch);
  kernel<<<grid, 32 * kWarps, smem, stream>>>(p);
  FA_CUDA_CHECK_LAUNCH("fa2 bwd main");

  return launch_convert_dq<T>(p, stream);
}
#endif

}  // namespace fa2bwd
}  // namespace cuda
}  // namespace flashattn
