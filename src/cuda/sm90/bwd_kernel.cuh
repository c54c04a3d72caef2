// The Hopper backward main kernel (sm_90a): wgmma + TMA + warp specialization.
// docs/05-backward.md has the math (equation numbers Bn below); the FA2 rung
// (fa2/fa2_bwd_kernel.cuh) is the same algorithm on mma.sync, and its
// bwd_preprocess (Delta) and bwd_convert_dq run before and after this kernel.
//
// One CTA per (key block of 128 keys, kv head, batch), 3 warpgroups:
//   WG0: producer. Warp 0 loads K_j, V_j once (TMA), then for every
//        (query head of the kv group, Q block that sees the key block): Q_i and
//        dO_i (TMA, 64 rows) plus LSE_i and Delta_i (plain loads, 64 floats)
//        into a 2-stage ring guarded by full / empty mbarriers.
//   WG1, WG2: consumers, each owning 64 of the 128 keys. Per Q block, in
//   issue order (each GEMM its own commit group, so the math of one step runs
//   while the tensor cores do the previous GEMM):
//     S^T  = K_w Q^T            wgmma m64n64k16 ss (K, Q K-major)            (B1)
//     dP^T = V_w dO^T           wgmma m64n64k16 ss (V, dO K-major)           (B4)
//     P^T  = exp2(S^T scale log2e - LSE log2e), masked   [while dP^T runs]  (B2)
//     dV  += P^T dO             wgmma m64nDk16 rs (P^T from registers, dO MN-major) (B5)
//     dS^T = P^T (dP^T - Delta) [x softcap derivative]   [while dV runs]    (B6, B7)
//     dS^T -> shared memory ([128 keys][64 queries], 128B-swizzled by hand)
//     dK  += dS^T Q             wgmma m64nDk16 rs (dS^T from registers, Q MN-major) (B8)
//     dQ_i += dS K              wgmma m64n64k16 ss, both operands MN-major  (B9)
//       d128: WG w computes dQ columns [64w, 64w + 64) over all 128 keys (the
//             two warpgroups' dS^T halves meet in shared memory: named barrier);
//       d64:  WG w computes all 64 columns over its own 64 keys; both add.
//     dQ goes to the fp32 dq_accum with red.global.add.v4.f32 (unscaled, like
//     the FA2 rung: bwd_convert_dq multiplies by the scale).
//   Epilogue: dK * scale and dV in the dtype, rows >= seqlen_k and columns >=
//   head_dim dropped.
//
// Accumulator layout of wgmma m64nNk16 (per warp w of the warpgroup, rows
// 16w..16w+15): lane owns rows lane/4 and lane/4 + 8; register 4j + {0,1} /
// {2,3} holds columns 8j + 2(lane%4) + {0,1} of the first / second row.
// Shared-memory tiles are [rows][64-column chunk] with 128-byte rows, the
// 16-byte unit c of row r stored at c ^ (r % 8) (TMA SWIZZLE_128B), every tile
// 1024-byte aligned; a tile with head_dim > 64 is head_dim / 64 such chunks.
// Included only by the hopper_bwd_hdimNNN instantiation files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>

#include "cuda/cuda_utils.cuh"
#include "cuda/sm90/bwd_params.cuh"
#include "cuda/sm90/ptx.cuh"
#include "cuda/sm90/wgmma.cuh"

namespace flashattn { namespace cuda { namespace sm90 { namespace bwd {

constexpr int kThreads = 384;       // WG0 producer, WG1 + WG2 consumers
constexpr int kConsumerWarps = 8;   // arrivals on an empty barrier
constexpr int kProducerLanes = 32;  // arrivals on a full barrier (warp 0 of WG0)
constexpr float kLog2e = 1.4426950408889634f;

template <int kHeadDim_, bool kBF16_>
struct Traits {
  static constexpr int kHeadDim = kHeadDim_;  // padded head dim: 64 or 128
  static constexpr bool kBF16 = kBF16_;
  static constexpr int kBlockM = bwd::kBlockM;  // query rows per Q block (64)
  static constexpr int kBlockN = bwd::kBlockN;  // keys per CTA (128), 64 per consumer warpgroup
  static constexpr int kStages = 2;    // Q / dO / LSE / Delta ring
  static constexpr int kChunks = kHeadDim / 64;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;  // Q or dO tile of one stage
  static constexpr int kKBytes = kBlockN * kHeadDim * 2;  // K or V tile
  static constexpr int kDsBytes = kBlockN * kBlockM * 2;  // dS^T tile
  // dQ = dS K per warpgroup: 64 query rows x 64 columns either way (32 registers).
  static constexpr bool kDqSplitCols = kHeadDim == 128;
  static constexpr int kDqKSteps = kDqSplitCols ? kBlockN / 16 : 64 / 16;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "the Hopper backward has head dims 64 and 128");
  static_assert(kQBytes % 1024 == 0 && kKBytes % 1024 == 0 && kDsBytes % 1024 == 0,
                "tiles must keep the 1024-byte swizzle alignment");
};

template <class Tr>
struct SharedStorage {
  alignas(1024) uint8_t k[Tr::kKBytes];
  alignas(1024) uint8_t v[Tr::kKBytes];
  alignas(1024) uint8_t q[Tr::kStages][Tr::kQBytes];
  alignas(1024) uint8_t dout[Tr::kStages][Tr::kQBytes];
  // dS^T of the whole key block, double-buffered by Q-block parity: with the
  // per-iteration barrier between the consumers, a warpgroup can be at most one
  // iteration ahead, so it never overwrites a buffer the other one still reads.
  alignas(1024) uint8_t ds[2][Tr::kDsBytes];
  float lse2[Tr::kStages][Tr::kBlockM];   // LSE * log2(e); +inf for rows that see nothing or are padding
  float delta[Tr::kStages][Tr::kBlockM];  // rowsum(dO * O)
  uint64_t kv_full;                       // K and V landed
  uint64_t full[Tr::kStages];             // Q, dO (TMA bytes) + LSE, Delta (32 producer-lane arrivals)
  uint64_t empty[Tr::kStages];            // consumers are done with the stage (8 warp arrivals)
};

// Shared-memory address of a member, from the storage's address `base`.
#define FA_SMEM(base, member) ((base) + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, member)))

// +1024: the dynamic smem base is only 16-byte aligned; the kernel rounds it up.
template <class Tr>
constexpr int smem_bytes() {
  return static_cast<int>(sizeof(SharedStorage<Tr>)) + 1024;
}

// The Q blocks whose rows see at least one key of key block n_block (the mask
// of common/mask.h inverted, as in the FA2 rung), times the query heads of the
// kv group: iteration it is query head hk * group + it / num_m, Q block
// m_begin + it % num_m. Producer and consumers walk the same sequence.
struct QBlocks {
  int m_begin = 0, num_m = 0, total = 0;
};
template <class Tr>
__device__ __forceinline__ QBlocks q_blocks(const MainParams& p, int n_block) {
  QBlocks qb;
  const int64_t j0 = static_cast<int64_t>(n_block) * Tr::kBlockN;
  const int64_t j_last = min(j0 + Tr::kBlockN, static_cast<int64_t>(p.seqlen_k)) - 1;
  const int64_t off = static_cast<int64_t>(p.seqlen_k) - p.seqlen_q;  // bottom-right alignment
  int64_t i_lo = 0, i_hi = p.seqlen_q - 1;
  if (p.mask.window_right >= 0) i_lo = max(i_lo, j0 - off - p.mask.window_right);
  if (p.mask.window_left >= 0) i_hi = min(i_hi, j_last - off + p.mask.window_left);
  if (i_lo > i_hi) return qb;
  qb.m_begin = static_cast<int>(i_lo / Tr::kBlockM);
  qb.num_m = static_cast<int>(i_hi / Tr::kBlockM) + 1 - qb.m_begin;
  qb.total = qb.num_m * p.group;
  return qb;
}

// Shared-memory descriptors: make_desc of the tile's address, plus the byte
// offset of the sub-tile in the start-address field (addresses stay < 256 KB,
// so the 14-bit field never carries).
// K-major operand (rows of head_dim): rows [row0, row0 + 64) of a tile with
// `rows` rows, k-step kk (16 head-dim columns): chunk kk / 4, +32 B per step
// inside the 128-byte row (the forward's desc_q / desc_k).
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t tile, int rows, int row0, int kk) {
  return make_desc(tile, 16, 1024) + (static_cast<uint32_t>((kk / 4) * rows * 128 + row0 * 128 + (kk % 4) * 32) >> 4);
}
// MN-major operand (the K dimension runs down the rows, M or N along them):
// K rows [k0, k0 + 16) of a tile with `rows` rows; 64-element M/N chunks are
// rows * 128 bytes apart (LBO), 8-row groups 1024 bytes (SBO) (the forward's desc_v).
__device__ __forceinline__ uint64_t desc_mnmajor(uint32_t tile, int rows, int k0) {
  return make_desc(tile, rows * 128, 1024) + (static_cast<uint32_t>(k0 * 128) >> 4);
}
// The shared-memory address of the storage, hidden from the optimizer once per
// iteration: otherwise it hoists ~30 loop-invariant descriptors out of the loop
// and spills them (the accumulators leave ~48 registers for everything else).
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// Explicit shared-memory accesses with 32-bit addresses (the SharedStorage
// reference comes from an aligned integer, so plain C++ accesses would be
// generic ones with 64-bit addresses).
// Inverse of pack2: (lo, hi) of a bf16x2 / f16x2 register.
__device__ __forceinline__ float2 unpack2(uint32_t v, bool bf16) {
  if (bf16) return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
  __half2 h;
  memcpy(&h, &v, 4);
  return __half22float2(h);
}

__device__ __forceinline__ float2 ld_shared_f32x2(uint32_t addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(addr) : "memory");
  return v;
}
// *(row_addr ^ flip) = v: the 128B swizzle of a store, computed at the store
// (kept inside the asm so the compiler can't hoist 16 addresses per buffer).
__device__ __forceinline__ void st_shared_xor_u32(uint32_t row_addr, uint32_t flip, uint32_t v) {
  asm volatile(
      "{\n.reg .b32 a;\nxor.b32 a, %0, %1;\nst.shared.b32 [a], %2;\n}" ::"r"(row_addr), "r"(flip), "r"(v)
      : "memory");
}

// dst[0..3] += (a, b, c, d); dst 16-byte aligned.
__device__ __forceinline__ void red_add_f32x4(float* dst, float a, float b, float c, float d) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(a), "f"(b), "f"(c), "f"(d)
               : "memory");
}

// A 64x64 accumulator (keys x queries) re-packed as the A fragments of four
// k16 steps over the queries (the forward's pack_p).
template <bool kBF16>
__device__ __forceinline__ void pack_frag(const float (&acc)[32], uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) a[kk][r] = pack2(acc[8 * kk + 2 * r], acc[8 * kk + 2 * r + 1], kBF16);
}

// ---- producer (warp 0 of WG0) -------------------------------------------------
template <class Tr>
__device__ __forceinline__ void producer(SharedStorage<Tr>& s, const MainParams& p, const QBlocks& qb, int n_block,
                                         int hk, int b, const void* tm_q, const void* tm_k, const void* tm_v,
                                         const void* tm_do, int lane) {
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;
  if (qb.total == 0) return;  // nothing to load; the consumers write dK = dV = 0
  if (lane == 0) {
    mbar_arrive_expect_tx(&s.kv_full, 2 * Tr::kKBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.k + c * BN * 128, tm_k, &s.kv_full, c * 64, n_block * BN, hk, b);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.v + c * BN * 128, tm_v, &s.kv_full, c * 64, n_block * BN, hk, b);
  }
  int stage = 0;
  uint32_t phase = 0;
  for (int it = 0; it < qb.total; ++it) {
    const int h = hk * p.group + it / qb.num_m;
    const int i0 = (qb.m_begin + it % qb.num_m) * BM;
    const int64_t bh = static_cast<int64_t>(b) * p.heads_q + h;
    mbar_wait(&s.empty[stage], phase ^ 1);
#pragma unroll
    for (int r = lane; r < BM; r += 32) {
      const int i = i0 + r;
      const float l = i < p.seqlen_q ? p.lse[bh * p.seqlen_q + i] : -INFINITY;
      // A row that sees nothing (LSE = -inf) or a padding row: P = exp2(x - inf) = 0, never NaN.
      s.lse2[stage][r] = l == -INFINITY ? INFINITY : l * kLog2e;
      s.delta[stage][r] = p.delta[bh * p.seqlen_q_pad + i];
    }
    if (lane == 0) {
      // Lane 0 arrives after its own LSE/Delta stores, the other lanes below;
      // the phase completes when all 32 arrived and the TMA bytes landed.
      mbar_arrive_expect_tx(&s.full[stage], 2 * Tr::kQBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(s.q[stage] + c * BM * 128, tm_q, &s.full[stage], c * 64, i0, h, b);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(s.dout[stage] + c * BM * 128, tm_do, &s.full[stage], c * 64, i0, h, b);
    } else {
      mbar_arrive(&s.full[stage]);
    }
    if (++stage == Tr::kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
}

// ---- consumers (WG1, WG2) -------------------------------------------------------
// Byte offset of consumer thread ctid's first dS^T store in the tile: row
// key_row = 64 wg + 16 warp + g, plus (g << 4) + 4t (see the stores).
__device__ __forceinline__ uint32_t ds_thread_offset(uint32_t ctid) {
  const uint32_t lane = ctid % 32, g = lane / 4, t = lane % 4;
  const uint32_t key_row = 64 * (ctid / 128) + 16 * ((ctid % 128) / 32) + g;
  return key_row * 128 + (g << 4) + 4 * t;
}

// The Q-block columns [lo, hi] (query rows i0 + lo .. i0 + hi) that key `key`
// sees, from common/mask.h inverted:
//   key < key_end(q)    <=>  q >= key - off - window_right  (and key < seqlen_k)
//   key >= key_begin(q) <=>  q <= key - off + window_left
// clamped to [-1, 64] / [-2, 64]; lo > hi when it sees none of them.
__device__ __forceinline__ void visible_queries(const MainParams& p, int64_t key, int i0, int& lo, int& hi) {
  const int64_t off = static_cast<int64_t>(p.seqlen_k) - p.seqlen_q;
  int64_t l = -1, h = 64;
  if (p.mask.window_right >= 0) l = max(l, key - off - p.mask.window_right - i0);
  if (p.mask.window_left >= 0) h = min(h, key - off + p.mask.window_left - i0);
  if (key >= p.seqlen_k) h = -2;
  lo = static_cast<int>(min(l, int64_t{64}));
  hi = static_cast<int>(max(h, int64_t{-2}));
}

// st = S^T -> P^T (B2) of the 64 x 64 block, in the log2 domain; column
// 8j + 2t + {0,1} of the accumulator is query 8j + 2t + {0,1}.
//   no softcap: x = S scale log2e;  softcap: x = tanh(S scale / softcap) softcap log2e
//   invisible (query, key) pairs: x = -inf;  P = exp2(x - LSE log2e)
template <bool kSoftcap>
__device__ __forceinline__ void compute_p(const MainParams& p, float (&st)[32], uint32_t lse2, int t, bool need_mask,
                                          int64_t key, int i0) {
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    if constexpr (kSoftcap) {
      // tanh(y) = 1 - 2 / (exp(2y) + 1): branch-free, ~1e-7 absolute error, +-1 at the ends.
      const float th = 1.0f - __fdividef(2.0f, fast_exp2(st[i] * p.softcap_in * (2.0f * kLog2e)) + 1.0f);
      st[i] = th * p.softcap_log2;
    } else {
      st[i] *= p.scale_log2;
    }
  }
  if (need_mask) {
    // The thread's keys are `key` and key + 8 (registers 4j + {0,1} and 4j + {2,3}).
    int lo[2], hi[2];
    visible_queries(p, key, i0, lo[0], hi[0]);
    visible_queries(p, key + 8, i0, lo[1], hi[1]);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = 8 * j + 2 * t + (e & 1);
        if (!(qc >= lo[e >> 1] && qc <= hi[e >> 1])) st[4 * j + e] = -INFINITY;
      }
  }
  const uint32_t lse_addr = lse2 + 8 * t;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 l2 = ld_shared_f32x2(lse_addr + 32 * j);
#pragma unroll
    for (int e = 0; e < 4; ++e) st[4 * j + e] = fast_exp2(st[4 * j + e] - ((e & 1) ? l2.y : l2.x));
  }
}

// dpt = dP^T -> dS^T = P^T (dP^T - Delta) (B6), P from the packed fragments of
// the dV GEMM (16 registers instead of the 32 of st, which would not fit next
// to dK, dV and the in-flight fragments at head dim 128).
template <bool kBF16>
__device__ __forceinline__ void compute_ds(const uint32_t (&pp)[4][4], float (&dpt)[32], uint32_t delta2, int t) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 dl = ld_shared_f32x2(delta2 + 8 * t + 32 * j);
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // registers 4j + 2h + {0,1}: one packed pair
      const float2 pv = unpack2(pp[j / 2][(j % 2) * 2 + h], kBF16);
      dpt[4 * j + 2 * h] = pv.x * (dpt[4 * j + 2 * h] - dl.x);
      dpt[4 * j + 2 * h + 1] = pv.y * (dpt[4 * j + 2 * h + 1] - dl.y);
    }
  }
}
// The same with softcap (B7): times 1 - tanh^2, tanh recovered from the fp32 P
// as in the FA2 rung: log2 P = x - LSE log2e, x = tanh softcap log2e (P = 0: dS = 0).
__device__ __forceinline__ void compute_ds_softcap(const MainParams& p, const float (&st)[32], float (&dpt)[32],
                                                   uint32_t lse2, uint32_t delta2, int t) {
  const float inv_softcap_log2 = __frcp_rn(p.softcap_log2);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 dl = ld_shared_f32x2(delta2 + 8 * t + 32 * j);
    const float2 l2 = ld_shared_f32x2(lse2 + 8 * t + 32 * j);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float pv = st[4 * j + e];
      const float th = (__log2f(pv) + ((e & 1) ? l2.y : l2.x)) * inv_softcap_log2;
      const float ds = pv * (dpt[4 * j + e] - ((e & 1) ? dl.y : dl.x)) * (1.0f - th * th);
      dpt[4 * j + e] = pv > 0.0f ? ds : 0.0f;
    }
  }
}

template <class Tr>
__device__ __forceinline__ void consumer(SharedStorage<Tr>& s, const MainParams& p, const QBlocks& qb, int n_block,
                                         int hk, int b) {
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  using Mma64 = Wgmma<64, Tr::kBF16>;  // S^T, dP^T (64 keys x 64 queries), dQ (64 queries x 64 columns)
  using MmaD = Wgmma<D, Tr::kBF16>;    // dK, dV (64 keys x D)
  const int ctid = threadIdx.x - 128;
  const int wg = ctid / 128;
  const int warp = (ctid % 128) / 32;
  const int lane = ctid % 32;
  const int g = lane / 4, t = lane % 4;
  const int key_row = 64 * wg + 16 * warp + g;  // the thread's first key row in the block (second: + 8)
  const int64_t j0 = static_cast<int64_t>(n_block) * BN;
  const bool softcap = p.softcap_in != 0.0f;

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;

  if (qb.total > 0) mbar_wait(&s.kv_full, 0);
  int stage = 0;
  uint32_t phase = 0;
  for (int it = 0; it < qb.total; ++it) {
    const int h = hk * p.group + it / qb.num_m;
    const int i0 = (qb.m_begin + it % qb.num_m) * BM;
    mbar_wait(&s.full[stage], phase);
    const uint32_t sb = opaque(smem_addr(&s));
    const uint32_t sk = FA_SMEM(sb, k), sv = FA_SMEM(sb, v);
    const uint32_t sq = FA_SMEM(sb, q) + stage * Tr::kQBytes, sdo = FA_SMEM(sb, dout) + stage * Tr::kQBytes;

    // S^T = K_w Q^T (B1) and dP^T = V_w dO^T (B4): 64 keys x 64 queries each,
    // two commit groups: P is computed while dP^T is still on the tensor cores.
    float st[32], dpt[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Mma64::ss(st, desc_kmajor(sk, BN, 64 * wg, kk), desc_kmajor(sq, BM, 0, kk), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Mma64::ss(dpt, desc_kmajor(sv, BN, 64 * wg, kk), desc_kmajor(sdo, BM, 0, kk), kk > 0);
    wgmma_commit();
    wgmma_wait<1>();  // S^T done
    fence_regs(st);

    // Does this (Q block, key block) pair need the element mask? Rows past
    // seqlen_q need none (their LSE is +inf); keys past seqlen_k always do.
    const int64_t i_last = min(i0 + BM, p.seqlen_q) - 1;
    const bool need_mask = j0 + BN > p.seqlen_k ||
                           (p.mask.has_mask() && !(p.mask.key_begin(i_last) <= j0 && p.mask.key_end(i0) >= j0 + BN));
    const uint32_t lse2 = FA_SMEM(sb, lse2) + stage * BM * 4, delta2 = FA_SMEM(sb, delta) + stage * BM * 4;
    if (softcap)
      compute_p<true>(p, st, lse2, t, need_mask, j0 + key_row, i0);
    else
      compute_p<false>(p, st, lse2, t, need_mask, j0 + key_row, i0);
    uint32_t pp[4][4];
    pack_frag<Tr::kBF16>(st, pp);

    // dV += P^T dO (B5): k = the 64 queries, 4 steps of 16; runs while dS is computed.
    fence_regs(dv);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) MmaD::rs(dv, pp[kk], desc_mnmajor(sdo, BM, 16 * kk), 1);
    wgmma_commit();

    if (softcap) {
      wgmma_wait<0>();  // dP^T and dV done (the fp32 P stays live instead of the fragments)
      fence_regs(dpt);
      compute_ds_softcap(p, st, dpt, lse2, delta2, t);
    } else {
      wgmma_wait<1>();  // dP^T done, dV may still run
      fence_regs(dpt);
      compute_ds<Tr::kBF16>(pp, dpt, delta2, t);
    }
    uint32_t pds[4][4];
    pack_frag<Tr::kBF16>(dpt, pds);

    // dS^T -> shared memory: row = key (k dimension of dQ = dS K), 64 queries of
    // 128 bytes per row, 16-byte unit j of row r at j ^ (r % 8). Here r % 8 = g,
    // so the address of unit j is (row + (g << 4) + 4t) ^ (j << 4); rows r and
    // r + 8 are 1024 bytes apart. (Bank-conflict free: unit j ^ g differs per g.)
    const uint32_t ds = FA_SMEM(sb, ds) + (it & 1) * Tr::kDsBytes;
    const uint32_t ds_row = ds + ds_thread_offset(opaque(ctid));  // (recomputed: else ptxas spills it)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      st_shared_xor_u32(ds_row, j << 4, pds[j / 2][(j % 2) * 2]);
      st_shared_xor_u32(ds_row + 1024, j << 4, pds[j / 2][(j % 2) * 2 + 1]);
    }
    fence_proxy_async();  // the generic-proxy stores above, read next by wgmma

    // dK += dS^T Q (B8).
    fence_regs(dk);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) MmaD::rs(dk, pds[kk], desc_mnmajor(sq, BM, 16 * kk), 1);
    wgmma_commit();

    // dQ_i = dS K_j (B9): A = dS (64 queries x keys) read from the dS^T tile as
    // MN-major, B = K (keys x 64 columns) MN-major.
    if constexpr (Tr::kDqSplitCols)
      named_bar_sync(1, 256);  // both halves of dS^T are in shared memory
    else
      named_bar_sync(2 + wg, 128);  // this warpgroup's half is
    const int key0 = Tr::kDqSplitCols ? 0 : 64 * wg;
    const uint32_t kcols = sk + (Tr::kDqSplitCols ? wg * BN * 128 : 0);
    float dq[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Tr::kDqKSteps; ++kk)
      Mma64::ss_tA(dq, desc_mnmajor(ds, BN, key0 + 16 * kk), desc_mnmajor(kcols, BN, key0 + 16 * kk), kk > 0);
    wgmma_commit();

    wgmma_wait<1>();  // dV, dK done: Q, dO, LSE, Delta of this stage are free
    fence_regs(dv);
    fence_regs(dk);
    __syncwarp();
    if (lane == 0) mbar_arrive(&s.empty[stage]);
    wgmma_wait<0>();
    fence_regs(dq);

    // dq_accum += dQ. Thread pairs (t, t ^ 1) swap halves so each adds 4
    // consecutive floats of one row: even t row g, odd t row g + 8.
    const bool odd = t & 1;
    float* dst = p.dq_accum +
                 ((static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q_pad + i0 + 16 * warp + g + (odd ? 8 : 0)) * D +
                 (Tr::kDqSplitCols ? 64 * wg : 0);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float s0 = odd ? dq[4 * j + 0] : dq[4 * j + 2];
      const float s1 = odd ? dq[4 * j + 1] : dq[4 * j + 3];
      const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1);
      const float r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
      const int c = 8 * j + 2 * (t & ~1);
      if (odd)
        red_add_f32x4(dst + c, r0, r1, dq[4 * j + 2], dq[4 * j + 3]);
      else
        red_add_f32x4(dst + c, dq[4 * j + 0], dq[4 * j + 1], r0, r1);
    }

    if (++stage == Tr::kStages) {
      stage = 0;
      phase ^= 1;
    }
  }

  // Epilogue: dK = scale * dK, dV in the dtype (B8: the scale of dS is applied here).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = j0 + key_row + 8 * r;
    if (key >= p.seqlen_k) continue;
    uint8_t* dkp = static_cast<uint8_t*>(p.dk) + 2 * (b * p.dk_batch_stride + key * p.dk_row_stride +
                                                      hk * p.dk_head_stride);
    uint8_t* dvp = static_cast<uint8_t*>(p.dv) + 2 * (b * p.dv_batch_stride + key * p.dv_row_stride +
                                                      hk * p.dv_head_stride);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const int col = 8 * j + 2 * t;
      if (col < p.head_dim) {
        *reinterpret_cast<uint32_t*>(dkp + 2 * col) =
            pack2(dk[4 * j + 2 * r] * p.scale, dk[4 * j + 2 * r + 1] * p.scale, Tr::kBF16);
        *reinterpret_cast<uint32_t*>(dvp + 2 * col) = pack2(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1], Tr::kBF16);
      }
    }
  }
}

template <class Tr>
__global__ void __launch_bounds__(kThreads, 1)
    hopper_bwd_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                      const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                      const __grid_constant__ MainParams p) {
  extern __shared__ uint8_t smem_raw[];
  auto& s = *reinterpret_cast<SharedStorage<Tr>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                                  ~static_cast<uintptr_t>(1023));
  const int n_block = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  if (threadIdx.x == 0) {
    prefetch_tensormap(&tm_q);
    prefetch_tensormap(&tm_k);
    prefetch_tensormap(&tm_v);
    prefetch_tensormap(&tm_do);
    mbar_init(&s.kv_full, 1);
    for (int i = 0; i < Tr::kStages; ++i) {
      mbar_init(&s.full[i], kProducerLanes);
      mbar_init(&s.empty[i], kConsumerWarps);
    }
    fence_barrier_init();
  }
  __syncthreads();

  // (Each role computes its Q-block range after the register reallocation:
  // values live across setmaxnreg were spilled.)
  if (threadIdx.x < 128) {
    setmaxnreg_dec<24>();
    if (threadIdx.x < 32)
      producer<Tr>(s, p, q_blocks<Tr>(p, n_block), n_block, hk, b, &tm_q, &tm_k, &tm_v, &tm_do, threadIdx.x);
  } else {
    // 128 x 24 + 256 x 240 = 64512 <= 65536 registers.
    setmaxnreg_inc<240>();
    consumer<Tr>(s, p, q_blocks<Tr>(p, n_block), n_block, hk, b);
  }
}

template <int kHeadDim, bool kBF16>
Status launch_hopper_bwd(const LaunchArgs& a) {
  using Tr = Traits<kHeadDim, kBF16>;
  constexpr int smem = smem_bytes<Tr>();
  static bool attr_set = false;
  if (!attr_set) {
    FA_CUDA_CHECK(
        cudaFuncSetAttribute(hopper_bwd_kernel<Tr>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    attr_set = true;
  }
  hopper_bwd_kernel<Tr><<<a.grid, kThreads, smem, a.stream>>>(a.tm_q, a.tm_k, a.tm_v, a.tm_do, a.params);
  FA_CUDA_CHECK_LAUNCH("hopper_bwd_kernel");
  return Status::Ok();
}

#undef FA_SMEM

}}}}  // namespace flashattn::cuda::sm90::bwd
