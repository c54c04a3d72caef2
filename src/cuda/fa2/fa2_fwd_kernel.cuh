// FlashAttention-2 forward kernel on sm_80 tensor cores (runs on Hopper too).
//
// One CTA per (query block of kBlockM rows, query head, batch). Each warp owns
// kMTiles x 16 query rows for the whole kernel, so the online-softmax row
// statistics never cross warps. The CTA walks the key blocks it can see from
// the last to the first (the masked blocks come first):
//
//   cp.async Q, K[last]
//   for n = last .. first:
//     wait K[n]; sync; cp.async V[n]                 (V load overlaps S = QK^T)
//     S = Q K[n]^T           ldmatrix + mma.m16n8k16, fp32 accumulators
//     softcap, mask (boundary blocks only), online softmax in the log2 domain
//     P = 16-bit(S) in registers (the C layout of S is the A layout of P)
//     wait V[n]; sync; cp.async K[n-1]              (K load overlaps O += PV)
//     O += P V[n]            ldmatrix.trans for V
//   O /= rowsum, LSE = max + log(rowsum); fully masked rows: O = 0, LSE = -inf
//
// Shared memory: Q [kBlockM][kPitch], K and V [kBlockN][kPitch], rows padded by
// 8 elements (16 bytes) so the 8 row addresses of an ldmatrix and of the
// epilogue writes fall in distinct banks. Tails (rows past seqlen, columns
// past the real head dim) are zero-filled by cp.async and never stored.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/fa2/fa2_fwd.h"
#include "cuda/fa2/mma_sm80.cuh"

namespace flashattn {
namespace cuda {
namespace fa2 {

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_, typename Element_, int kMinBlocks_ = 1,
          bool kLazyRescale_ = true>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  // __launch_bounds__ minimum CTAs per SM: > 1 caps the registers (65536 / (kThreads * n)).
  static constexpr int kMinBlocks = kMinBlocks_;
  // Lazy max (see the softmax step); false = move the max on every increase (A/B timing only).
  static constexpr bool kLazyRescale = kLazyRescale_;
  static constexpr int kMTiles = kBlockM / (16 * kWarps);  // 16-row m-tiles per warp
  static constexpr int kNTiles = kBlockN / 8;              // 8-key n-tiles of S
  static constexpr int kDTiles = kHeadDim / 8;             // 8-column n-tiles of O
  static constexpr int kChunks = kHeadDim / 8;             // 16-byte chunks per row
  static constexpr int kPitch = kHeadDim + 8;              // smem row pitch, elements
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kPitch * static_cast<int>(sizeof(Element));
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "tiles are multiples of 16");
  static_assert(kBlockM % (16 * kWarps) == 0, "each warp owns whole 16-row m-tiles");
  static_assert(kThreads >= kChunks, "a row of a tile is loaded in one pass");
};

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }
// A key index relative to a block, clamped to [-1, block] (fits int, keeps order).
__device__ __forceinline__ int clamp_rel(int64_t x, int block) {
  return static_cast<int>(x < -1 ? int64_t{-1} : (x > block ? int64_t{block} : x));
}

// cp.async one [kRows, kHeadDim] tile: rows >= rows_valid and columns >= head_dim
// are zero-filled. g points at row 0 of the tile (always a valid address).
template <class Tr, int kRows>
__device__ __forceinline__ void load_tile(typename Tr::Element* s, const typename Tr::Element* g, int64_t row_stride,
                                          int rows_valid, int head_dim, int tid) {
  using Element = typename Tr::Element;
  // Each thread keeps one 16-byte column chunk and walks the rows with a fixed
  // step: one pointer bumped per row. When kChunks does not divide kThreads
  // (head dims 96, 192) the last kThreads % kChunks threads idle.
  constexpr int kRowStep = Tr::kThreads / Tr::kChunks;
  constexpr int kIters = (kRows + kRowStep - 1) / kRowStep;
  const int r0 = tid / Tr::kChunks, c = tid % Tr::kChunks;
  if constexpr (Tr::kThreads % Tr::kChunks != 0) {
    if (r0 >= kRowStep) return;
  }
  const bool col_valid = c * 8 < head_dim;
  const Element* src = g + r0 * row_stride + c * 8;
  const uint32_t dst = sm80::smem_addr(s + r0 * Tr::kPitch + c * 8);
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    if (kRows % kRowStep != 0 && r0 + it * kRowStep >= kRows) break;
    const bool valid = col_valid && r0 + it * kRowStep < rows_valid;
    sm80::cp_async_16(dst + it * kRowStep * Tr::kPitch * static_cast<int>(sizeof(Element)), valid ? src : g, valid);
    src += kRowStep * row_stride;
  }
}

template <class Tr, bool kIsLocal, bool kHasSoftcap, bool kVarlen>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) fwd_kernel(const Fa2FwdArgs args) {
  using Element = typename Tr::Element;
  constexpr int kBlockM = Tr::kBlockM, kBlockN = Tr::kBlockN, kMTiles = Tr::kMTiles, kNTiles = Tr::kNTiles,
                kDTiles = Tr::kDTiles, kPitch = Tr::kPitch;
  constexpr int kE = static_cast<int>(sizeof(Element));

  extern __shared__ __align__(16) unsigned char smem[];
  Element* sQ = reinterpret_cast<Element*>(smem);  // [kBlockM][kPitch]
  Element* sK = sQ + kBlockM * kPitch;             // [kBlockN][kPitch]
  Element* sV = sK + kBlockN * kPitch;             // [kBlockN][kPitch]

  // Longest (causal) query blocks first: they finish last otherwise.
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates
  // Lengths of this sequence and its first row in the packed tensors (varlen),
  // or the dense lengths and row 0.
  // (A template flag: the runtime version cost hdim 128 up to 16 bytes of spills.)
  const bool cu_q = kVarlen && args.cu_seqlens_q, cu_k = kVarlen && args.cu_seqlens_k;
  const int q_start = cu_q ? args.cu_seqlens_q[b] : 0;
  const int k_start = cu_k ? args.cu_seqlens_k[b] : 0;
  const int nq = cu_q ? args.cu_seqlens_q[b + 1] - q_start : args.seqlen_q;
  const int nk = kVarlen && args.seqused_k ? args.seqused_k[b]
                                           : (cu_k ? args.cu_seqlens_k[b + 1] - k_start : args.seqlen_k);
  const int d = args.head_dim;
  const int m0 = m_block * kBlockM;
  if (kVarlen && m0 >= nq) return;  // this sequence is shorter than the longest one
  const int m_last = min(m0 + kBlockM, nq) - 1;  // last real query row of the block
  const int64_t shift = static_cast<int64_t>(nk) - nq;  // bottom-right alignment

  // Key blocks [n_begin, n_end) that some row of this query block can see.
  int n_begin = 0, n_end = ceil_div(nk, kBlockN);
  if (kIsLocal) {
    if (args.window_right >= 0) {
      int64_t e = m_last + shift + args.window_right + 1;
      e = e < 0 ? 0 : (e > nk ? nk : e);
      n_end = min(n_end, ceil_div(static_cast<int>(e), kBlockN));
    }
    if (args.window_left >= 0) {
      int64_t s = m0 + shift - args.window_left;
      s = s < 0 ? 0 : (s > nk ? nk : s);
      n_begin = static_cast<int>(s) / kBlockN;
    }
  }

  // Tensor bases of this (batch, head). Recomputed where used from the kernel
  // parameters (constant bank) instead of being held in registers.
  const int hk = h / args.group;
  // Packed (varlen) tensors ignore the batch stride: rows start at q_start / k_start.
  const int64_t qb = cu_q ? 0 : b, kb = cu_k ? 0 : b;
  auto q_tile = [&]() {
    return static_cast<const Element*>(args.q) + qb * args.q_batch_stride +
           static_cast<int64_t>(q_start + m0) * args.q_row_stride + h * args.q_head_stride;
  };
  auto k_rows = [&](int row) {
    return static_cast<const Element*>(args.k) + kb * args.k_batch_stride + hk * args.k_head_stride +
           static_cast<int64_t>(k_start + row) * args.k_row_stride;
  };
  auto v_rows = [&](int row) {
    return static_cast<const Element*>(args.v) + kb * args.v_batch_stride + hk * args.v_head_stride +
           static_cast<int64_t>(k_start + row) * args.v_row_stride;
  };
  auto o_tile = [&]() {
    return static_cast<Element*>(args.o) + qb * args.o_batch_stride +
           static_cast<int64_t>(q_start + m0) * args.o_row_stride + h * args.o_head_stride;
  };
  // LSE is [batch, heads_q, seqlen_q] with the maximum seqlen_q as row count.
  auto lse_tile = [&]() { return args.lse + (static_cast<int64_t>(b) * args.heads_q + h) * args.seqlen_q + m0; };

  if (n_end <= n_begin) {  // no row of this block sees any key: O = 0, LSE = -inf
    Element* gO = o_tile();
    for (int idx = tid; idx < kBlockM * Tr::kChunks; idx += Tr::kThreads) {
      const int r = idx / Tr::kChunks, c = idx % Tr::kChunks;
      if (m0 + r < nq && c * 8 < d) *reinterpret_cast<uint4*>(gO + r * args.o_row_stride + c * 8) = uint4{0, 0, 0, 0};
    }
    if (args.lse)
      for (int r = tid; r < kBlockM; r += Tr::kThreads)
        if (m0 + r < nq) lse_tile()[r] = -INFINITY;
    return;
  }

  load_tile<Tr, kBlockM>(sQ, q_tile(), args.q_row_stride, nq - m0, d, tid);
  load_tile<Tr, kBlockN>(sK, k_rows((n_end - 1) * kBlockN), args.k_row_stride, nk - (n_end - 1) * kBlockN, d, tid);
  sm80::cp_async_commit();

  // Per-lane ldmatrix addresses (bytes). A operand (Q): lane -> row lane % 16,
  // column 8 * (lane / 16). B operand (K, not transposed): row (lane % 8) +
  // 8 * (lane / 16), column 8 * ((lane / 8) % 2). V (transposed): like A.
  const int warp_row0 = warp * kMTiles * 16;
  const uint32_t q_addr = sm80::smem_addr(sQ + (warp_row0 + lane % 16) * kPitch + (lane / 16) * 8);
  const uint32_t k_addr = sm80::smem_addr(sK + (lane % 8 + (lane / 16) * 8) * kPitch + ((lane / 8) % 2) * 8);
  const uint32_t v_addr = sm80::smem_addr(sV + (lane % 16) * kPitch + (lane / 16) * 8);

  float acc_o[kMTiles][kDTiles][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.0f;
  // Row statistics of rows g (index 0) and g + 8 (index 1) of each m-tile; the
  // row sum is this thread's partial (its 2 columns of every n-tile), reduced
  // over the 4 threads of the row only at the end.
  float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      row_max[mt][i] = -INFINITY;
      row_sum[mt][i] = 0.0f;
    }
  const float scale_log2 = args.scale_log2;

  for (int n = n_end - 1; n >= n_begin; --n) {
    const int key0 = n * kBlockN;
    sm80::cp_async_wait<0>();
    __syncthreads();  // K[n] (and Q) landed; every warp is done with V[n+1]
    load_tile<Tr, kBlockN>(sV, v_rows(key0), args.v_row_stride, nk - key0, d, tid);
    sm80::cp_async_commit();

    // S = Q K^T: [16 rows x 8 keys] tiles, acc_s[mt][nt].
    float acc_s[kMTiles][kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < Tr::kHeadDim / 16; ++ks) {
      uint32_t qa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) sm80::ldmatrix_x4(qa[mt], q_addr + (mt * 16 * kPitch + ks * 16) * kE);
#pragma unroll
      for (int np = 0; np < kNTiles / 2; ++np) {
        uint32_t kb[4];  // b0, b1 of keys np*16 .. +7, then of keys np*16+8 .. +15
        sm80::ldmatrix_x4(kb, k_addr + (np * 16 * kPitch + ks * 16) * kE);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          sm80::mma_16816<Element>(acc_s[mt][2 * np], qa[mt], kb[0], kb[1]);
          sm80::mma_16816<Element>(acc_s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    if (kHasSoftcap) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = sm80::tanh_approx(acc_s[mt][nt][e] * args.softcap_pre);
    }

    // Mask only the blocks that straddle the seqlen_k tail or a mask edge.
    bool need_mask = key0 + kBlockN > nk;
    if (kIsLocal) {
      if (args.window_right >= 0) need_mask |= m0 + shift + args.window_right + 1 < key0 + kBlockN;
      if (args.window_left >= 0) need_mask |= m_last + shift - args.window_left > key0;
    }
    if (need_mask) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          // Visible keys of this row, relative to key0: [lo, hi).
          const int64_t row = m0 + warp_row0 + mt * 16 + g + 8 * i;
          int64_t hi = nk;
          int64_t lo = 0;
          if (kIsLocal) {
            if (args.window_right >= 0) {
              const int64_t e = row + shift + args.window_right + 1;
              hi = e < hi ? e : hi;
            }
            if (args.window_left >= 0) {
              const int64_t s = row + shift - args.window_left;
              lo = s > 0 ? s : 0;
            }
          }
          const int hi_rel = clamp_rel(hi - key0, kBlockN);
          const int lo_rel = clamp_rel(lo - key0, kBlockN);
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int col = nt * 8 + 2 * t + e;
              if (col < lo_rel || col >= hi_rel) acc_s[mt][nt][2 * i + e] = -INFINITY;
            }
        }
    }

    // Online softmax (log2 domain, docs/04-fa2.md eq. (5)). The running max only moves
    // when the block's max exceeds it by more than kMaxSlack (log2 units): until then
    // p = exp2(s - stale max) <= 2^kMaxSlack, harmless in fp32 and in 16-bit P, and
    // the result is unchanged (O / rowsum and LSE use the same max). O is rescaled
    // only when some row of the warp moved its max -- after the first blocks, rarely.
    constexpr float kMaxSlack = Tr::kLazyRescale ? 8.0f : 0.0f;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) mx = fmaxf(mx, fmaxf(acc_s[mt][nt][2 * i], acc_s[mt][nt][2 * i + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float corr = 1.0f;
        // (The first visible block always moves it: row_max is -inf until then.)
        const bool moved = mx * scale_log2 > row_max[mt][i] * scale_log2 + kMaxSlack;
        if (moved) {
          corr = sm80::exp2_approx((row_max[mt][i] - mx) * scale_log2);  // 0 on the first block
          row_max[mt][i] = mx;
        }
        if (__any_sync(0xffffffffu, moved)) {  // warp-uniform: skip the O rescale when no row moved
#pragma unroll
          for (int dt = 0; dt < kDTiles; ++dt) {
            acc_o[mt][dt][2 * i] *= corr;
            acc_o[mt][dt][2 * i + 1] *= corr;
          }
        }
        // All keys so far masked: keep exponents finite (every p is exp2(-inf) = 0).
        const float max_scaled = row_max[mt][i] == -INFINITY ? 0.0f : row_max[mt][i] * scale_log2;
        float sum = row_sum[mt][i] * corr;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = sm80::exp2_approx(fmaf(acc_s[mt][nt][2 * i + e], scale_log2, -max_scaled));
            acc_s[mt][nt][2 * i + e] = p;
            sum += p;
          }
        row_sum[mt][i] = sum;
      }

    // P in 16 bits: the C fragments of n-tiles 2k, 2k+1 form the A fragment of k-step k.
    uint32_t pa[kMTiles][kNTiles / 2][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int ks = 0; ks < kNTiles / 2; ++ks) {
        pa[mt][ks][0] = sm80::pack2<Element>(acc_s[mt][2 * ks][0], acc_s[mt][2 * ks][1]);
        pa[mt][ks][1] = sm80::pack2<Element>(acc_s[mt][2 * ks][2], acc_s[mt][2 * ks][3]);
        pa[mt][ks][2] = sm80::pack2<Element>(acc_s[mt][2 * ks + 1][0], acc_s[mt][2 * ks + 1][1]);
        pa[mt][ks][3] = sm80::pack2<Element>(acc_s[mt][2 * ks + 1][2], acc_s[mt][2 * ks + 1][3]);
      }

    sm80::cp_async_wait<0>();
    __syncthreads();  // V[n] landed; every warp is done with K[n]
    if (n > n_begin) {
      load_tile<Tr, kBlockN>(sK, k_rows(key0 - kBlockN), args.k_row_stride, nk - key0 + kBlockN, d, tid);
      sm80::cp_async_commit();
    }

    // O += P V: V is [keys][dims] in smem, the B operand wants dims as columns: ldmatrix.trans.
#pragma unroll
    for (int ks = 0; ks < kBlockN / 16; ++ks)
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        uint32_t vb[4];  // b0, b1 of dims dp*16 .. +7, then of dims dp*16+8 .. +15
        sm80::ldmatrix_x4_trans(vb, v_addr + (ks * 16 * kPitch + dp * 16) * kE);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          sm80::mma_16816<Element>(acc_o[mt][2 * dp], pa[mt][ks], vb[0], vb[1]);
          sm80::mma_16816<Element>(acc_o[mt][2 * dp + 1], pa[mt][ks], vb[2], vb[3]);
        }
      }
  }

  // Epilogue. Each warp stages its own O rows in its own rows of sQ (no other
  // warp reads them), then writes them out with coalesced 16-byte stores.
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float sum = row_sum[mt][i];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int r = warp_row0 + mt * 16 + g + 8 * i;
      Element* srow = sQ + r * kPitch;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt)
        *reinterpret_cast<uint32_t*>(srow + dt * 8 + 2 * t) =
            sm80::pack2<Element>(acc_o[mt][dt][2 * i] * inv, acc_o[mt][dt][2 * i + 1] * inv);
      if (args.lse && t == 0 && m0 + r < nq)
        lse_tile()[r] = sum > 0.0f ? row_max[mt][i] * scale_log2 * kLn2 + logf(sum) : -INFINITY;
    }
  __syncwarp();
  Element* gO = o_tile();
  constexpr int kWarpRows = kMTiles * 16;
#pragma unroll
  for (int idx = lane; idx < kWarpRows * Tr::kChunks; idx += 32) {
    const int r = warp_row0 + idx / Tr::kChunks, c = idx % Tr::kChunks;
    if (m0 + r < nq && c * 8 < d)
      *reinterpret_cast<uint4*>(gO + r * args.o_row_stride + c * 8) =
          *reinterpret_cast<const uint4*>(sQ + r * kPitch + c * 8);
  }
}

}  // namespace fa2
}  // namespace cuda
}  // namespace flashattn
