// The MMA + softmax consumer: one warpgroup owns 64 query rows of the 128-row
// tile. Per KV block:
//   S = Q K^T      wgmma m64nBNk16, Q and K from 128B-swizzled smem (K-major)
//   mask / softcap, online softmax in registers (a row lives in one quad of 4
//   threads: two shuffles reduce it), O rescaled by exp2(m_old - m_new)
//   O += P V       wgmma m64nDk16, P from registers (the S accumulator layout
//                  re-packed as the A fragment), V from smem (MN-major)
// Accumulator layout (per warp, 16 rows): thread lane owns rows lane/4 and
// lane/4 + 8; register 4j + {0,1} / {2,3} holds columns 8j + 2(lane%4) + {0,1}.
#pragma once

#include "cuda/sm90/block_mask.cuh"
#include "cuda/sm90/epilogue.cuh"
#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/ptx.cuh"
#include "cuda/sm90/traits.cuh"
#include "cuda/sm90/wgmma.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <class Tr>
struct Consumer {
  static constexpr int D = Tr::kHeadDim;
  static constexpr int BN = Tr::kBlockN;
  static constexpr int BM = Tr::kBlockM;
  using MmaS = Wgmma<BN, Tr::kBF16>;
  using MmaO = Wgmma<D, Tr::kBF16>;

  // A descriptor for an operand at byte offset `off` from the one `base`
  // describes: only the start-address field (bits 0-13, address >> 4) changes and
  // smem addresses stay below 2^18, so it is one 32-bit add on the low word.
  // The low word passes through an empty asm at every GEMM issue so ptxas does
  // not hoist all 16-32 descriptors of the KV loop into registers (at head dim
  // 256 that spilled them).
  struct DescBase {
    uint32_t lo, hi;
    __device__ __forceinline__ DescBase(uint64_t d) : lo(static_cast<uint32_t>(d)), hi(static_cast<uint32_t>(d >> 32)) {
      asm volatile("" : "+r"(lo));
    }
    __device__ __forceinline__ uint64_t at(uint32_t off) const {
      return (static_cast<uint64_t>(hi) << 32) | (lo + (off >> 4));
    }
  };
  // Q rows of warpgroup wg (its 64-row slice), k-step kk (16 columns): chunk kk/4, +32 B inside it.
  static __device__ __forceinline__ uint32_t q_off(int kk) { return (kk / 4) * BM * 128 + (kk % 4) * 32; }
  static __device__ __forceinline__ uint32_t k_off(int kk) { return (kk / 4) * BN * 128 + (kk % 4) * 32; }
  // V as the B operand of P V: keys 16kk..16kk+15 (rows of 128 B), head-dim chunks LBO apart.
  static __device__ __forceinline__ uint32_t v_off(int kk) { return kk * 16 * 128; }

  // Softcap, then the element mask when the block is partial.
  static __device__ __forceinline__ void score_mod(const KernelParams& p, const BlockMask<BM, BN>& bm,
                                                   float (&sc)[BN / 2], int m_block, int n, int64_t row0,
                                                   int lane) {
    if (p.softcap_in != 0.0f) {
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) sc[i] = fast_tanh(sc[i] * p.softcap_in);
    }
    if (bm.partial(m_block, n)) {
      // Per row, the visible keys are one interval [key_begin, key_end) (mask.h);
      // shift it into this block's columns once, then one compare pair per element.
      const int64_t col0 = static_cast<int64_t>(n) * BN + 2 * (lane % 4);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = row0 + 8 * r;
        const int lo = clamp_col(bm.mask.key_begin(row) - col0);
        const int hi = clamp_col(bm.mask.key_end(row) - col0);
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = 8 * j + e;
            if (c < lo || c >= hi) sc[4 * j + 2 * r + e] = -INFINITY;
          }
      }
    }
  }

  // A key offset relative to a block, clamped to [-1, BN] so it fits an int and
  // compares the same against the block's columns 0..BN-1.
  static __device__ __forceinline__ int clamp_col(int64_t c) {
    return static_cast<int>(c < -1 ? -1 : (c > BN ? BN : c));
  }

  // Online softmax (online_softmax.h, equations (3)-(4)) on the thread's two
  // rows: sc becomes P (unnormalized), corr the factor O must be scaled by.
  // (The FA2 rung's lazy max -- rescale O only when a row's max grows by > 2^8 --
  // was tried here: a branch around the rescale of the wgmma accumulators made
  // the d128 kernel 20 % slower on the H100, so O is rescaled every block.)
  static __device__ __forceinline__ void softmax(float (&sc)[BN / 2], float (&row_max)[2], float (&row_sum)[2],
                                                 float (&corr)[2], float sl2) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(sc[4 * j + 2 * r], sc[4 * j + 2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with nothing visible so far keeps max -inf: subtract 0 instead (no NaN).
      const float m_scaled = mx == -INFINITY ? 0.0f : mx * sl2;
      corr[r] = fast_exp2(row_max[r] * sl2 - m_scaled);
      row_max[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        sc[4 * j + 2 * r] = fast_exp2(fmaf(sc[4 * j + 2 * r], sl2, -m_scaled));
        sc[4 * j + 2 * r + 1] = fast_exp2(fmaf(sc[4 * j + 2 * r + 1], sl2, -m_scaled));
        sum += sc[4 * j + 2 * r] + sc[4 * j + 2 * r + 1];
      }
      row_sum[r] = row_sum[r] * corr[r] + sum;
    }
  }

  static __device__ __forceinline__ void rescale_o(float (&o)[D / 2], const float (&corr)[2]) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[4 * j + 0] *= corr[0];
      o[4 * j + 1] *= corr[0];
      o[4 * j + 2] *= corr[1];
      o[4 * j + 3] *= corr[1];
    }
  }

  // The S accumulator layout re-packed as wgmma A fragments (16 keys each).
  static __device__ __forceinline__ void pack_p(const float (&sc)[BN / 2], uint32_t (&pa)[BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      pa[kk][0] = pack2(sc[8 * kk + 0], sc[8 * kk + 1], Tr::kBF16);
      pa[kk][1] = pack2(sc[8 * kk + 2], sc[8 * kk + 3], Tr::kBF16);
      pa[kk][2] = pack2(sc[8 * kk + 4], sc[8 * kk + 5], Tr::kBF16);
      pa[kk][3] = pack2(sc[8 * kk + 6], sc[8 * kk + 7], Tr::kBF16);
    }
  }

  static __device__ __forceinline__ void issue_s(const SharedStorage<Tr>& s, float (&sc)[BN / 2], int wg, int stage) {
    const DescBase q(make_desc(smem_addr(s.q) + wg * 64 * 128, 16, 1024));
    const DescBase k(make_desc(smem_addr(s.k[stage]), 16, 1024));
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) MmaS::ss(sc, q.at(q_off(kk)), k.at(k_off(kk)), kk > 0);
    wgmma_commit();
  }
  static __device__ __forceinline__ void issue_o(const SharedStorage<Tr>& s, float (&o)[D / 2],
                                                 uint32_t (&pa)[BN / 16][4], int stage) {
    fence_regs(o);
    wgmma_fence();
    const DescBase v(make_desc(smem_addr(s.v[stage]), BN * 128, 1024));
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) MmaO::rs(o, pa[kk], v.at(v_off(kk)), 1);
    wgmma_commit();
  }

  // Ping-pong (p.pingpong): the consumer warpgroups take turns, round robin, issuing
  // their GEMMs (named barrier 1 + wg, 256 threads: 128 wait, the previous
  // warpgroup's 128 arrive), so one warpgroup's softmax runs while another's GEMMs use the
  // tensor cores. Every GEMM-issue slot of a tile is one turn, and both
  // warpgroups run the same number of slots per tile; the kernel start gives
  // warpgroup 0 its first turn.
  static __device__ __forceinline__ void turn_begin(const KernelParams& p, int wg) {
    if (p.pingpong) named_bar_sync(1 + wg, 256);
  }
  static __device__ __forceinline__ void turn_end(const KernelParams& p, int wg) {
    if (p.pingpong) named_bar_arrive(1 + (wg + 1) % Tr::kConsumerWGs, 256);
  }

  // kOverlap (intra-warpgroup overlap): while O += P_{n-1} V_{n-1} runs on the
  // tensor cores, the softmax of block n runs on the FMA/MUFU units:
  //   issue S_n; issue O += P_{n-1} V_{n-1}; wait S_n (wait_group 1); softmax(S_n);
  //   wait O (wait_group 0); rescale O; P_n = S_n.
  // Without it every wgmma is waited for right away (the plain FA2 order).
  template <bool kOverlap>
  static __device__ void run(SharedStorage<Tr>& s, const KernelParams& p) {
    const int ctid = threadIdx.x - 128;
    const int wg = ctid / 128;
    const int warp_in_wg = (ctid % 128) / 32;
    const int lane = ctid % 32;
    const float sl2 = p.score_scale_log2;

    if (kOverlap && p.pingpong && wg == 0) named_bar_arrive(1, 256);  // warpgroup 0 goes first

    int stage = 0;
    uint32_t phase = 0;
    uint32_t tile_iter = 0;
    for (;; ++tile_iter) {
      // The producer schedules the tiles and hands each over (producer.cuh).
      named_bar_sync_unaligned(Tr::kTileFullBar, Tr::kTileBarThreads);
      const int4 tile = *reinterpret_cast<const int4*>(s.tile[Tr::kSyncHandoff ? tile_iter & 1 : 0]);
      if (tile.w == 0) break;  // no tile left
      if constexpr (!Tr::kSyncHandoff) named_bar_arrive_unaligned(Tr::kTileFreeBar, Tr::kTileBarThreads);
      mbar_wait(&s.q_full, tile_iter & 1);
      const int m_block = tile.x, head = tile.y, b = tile.z;
      const TileSeq seq = tile_seq(p, b);
      const BlockMask<BM, BN> bm{seq.mask(p)};
      int n_begin, n_end;
      bm.range(m_block, &n_begin, &n_end);
      const int64_t row0 = static_cast<int64_t>(m_block) * BM + wg * 64 + warp_in_wg * 16 + lane / 4;

      float o[D / 2];
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
      float row_max[2] = {-INFINITY, -INFINITY};
      float row_sum[2] = {0.0f, 0.0f};
      float corr[2];

      if (n_end <= n_begin) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&s.q_empty);
      }
      if constexpr (kOverlap) {
        if (n_end > n_begin) {
          uint32_t pa[BN / 16][4];
          {
            float sc[BN / 2];
            mbar_wait(&s.k_full[stage], phase);
            turn_begin(p, wg);
            issue_s(s, sc, wg, stage);
            turn_end(p, wg);
            wgmma_wait<0>();
            fence_regs(sc);
            __syncwarp();
            if (lane == 0) {
              mbar_arrive(&s.k_empty[stage]);
              if (n_end - n_begin == 1) mbar_arrive(&s.q_empty);
            }
            score_mod(p, bm, sc, m_block, kv_block(p, n_begin, n_end, 0), row0, lane);
            softmax(sc, row_max, row_sum, corr, sl2);
            pack_p(sc, pa);
          }
          int prev_stage = stage;
          uint32_t prev_phase = phase;
          if (++stage == Tr::kStages) {
            stage = 0;
            phase ^= 1;
          }
          for (int i = 1; i < n_end - n_begin; ++i) {
            const int n = kv_block(p, n_begin, n_end, i);
            float sc[BN / 2];
            mbar_wait(&s.k_full[stage], phase);
            mbar_wait(&s.v_full[prev_stage], prev_phase);
            turn_begin(p, wg);
            issue_s(s, sc, wg, stage);
            issue_o(s, o, pa, prev_stage);
            turn_end(p, wg);
            wgmma_wait<1>();  // S_n is done, O += P V may still run
            fence_regs(sc);
            __syncwarp();
            if (lane == 0) {
              mbar_arrive(&s.k_empty[stage]);
              if (i == n_end - n_begin - 1) mbar_arrive(&s.q_empty);
            }
            score_mod(p, bm, sc, m_block, n, row0, lane);
            softmax(sc, row_max, row_sum, corr, sl2);
            wgmma_wait<0>();
            fence_regs(o);
            __syncwarp();
            if (lane == 0) mbar_arrive(&s.v_empty[prev_stage]);
            rescale_o(o, corr);
            pack_p(sc, pa);
            prev_stage = stage;
            prev_phase = phase;
            if (++stage == Tr::kStages) {
              stage = 0;
              phase ^= 1;
            }
          }
          mbar_wait(&s.v_full[prev_stage], prev_phase);
          turn_begin(p, wg);
          issue_o(s, o, pa, prev_stage);
          turn_end(p, wg);
          wgmma_wait<0>();
          fence_regs(o);
          __syncwarp();
          if (lane == 0) mbar_arrive(&s.v_empty[prev_stage]);
        }
      } else {
        for (int i = 0; i < n_end - n_begin; ++i) {
          const int n = kv_block(p, n_begin, n_end, i);
          float sc[BN / 2];
          mbar_wait(&s.k_full[stage], phase);
          issue_s(s, sc, wg, stage);
          wgmma_wait<0>();
          fence_regs(sc);
          __syncwarp();
          if (lane == 0) {
            mbar_arrive(&s.k_empty[stage]);
            if (i == n_end - n_begin - 1) mbar_arrive(&s.q_empty);  // last use of Q in this tile
          }
          score_mod(p, bm, sc, m_block, n, row0, lane);
          softmax(sc, row_max, row_sum, corr, sl2);
          rescale_o(o, corr);
          uint32_t pa[BN / 16][4];
          pack_p(sc, pa);
          mbar_wait(&s.v_full[stage], phase);
          issue_o(s, o, pa, stage);
          wgmma_wait<0>();
          fence_regs(o);
          __syncwarp();
          if (lane == 0) mbar_arrive(&s.v_empty[stage]);
          if (++stage == Tr::kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
      epilogue<Tr>(p, seq, o, row_max, row_sum, row0, head, b, lane);
    }
  }
};

}}}  // namespace flashattn::cuda::sm90
