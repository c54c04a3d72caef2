// What the Hopper forward kernel needs besides the three TMA descriptors.
#pragma once

#include <cuda.h>  // CUtensorMap (header only: the driver is reached via cudaGetDriverEntryPoint)
#include <cuda_runtime.h>

#include <cstdint>

#include "common/mask.h"
#include "flashattn/status.h"
#include "cuda/sm90/tile_scheduler.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

struct KernelParams {
  void* o = nullptr;        // [batch, seqlen_q, heads_q, head_dim]
  float* lse = nullptr;     // [batch, heads_q, seqlen_q] or nullptr
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;  // elements
  int seqlen_q = 0;
  int head_dim = 0;         // real head dim (<= the padded kernel head dim)
  int group = 1;            // heads_q / heads_kv
  // Scores: x = acc (no softcap) or x = tanh(acc * softcap_in) (softcap), the
  // softmax runs on x * score_scale; exp2 uses x * score_scale_log2.
  float softcap_in = 0.0f;  // scale / softcap, 0 = no softcap
  float score_scale = 0.0f;       // scale, or softcap when softcapping
  float score_scale_log2 = 0.0f;  // score_scale * log2(e)
  Mask mask;  // seqlen_q / seqlen_k: the maxima when varlen (tile_seq has each sequence's)
  TileScheduler sched;
  // Variable-length batches / KV-cache lengths (params.h): packed q/o rows by
  // cu_seqlens_q, packed k/v rows by cu_seqlens_k, used keys by seqused_k.
  const int* cu_seqlens_q = nullptr;
  const int* cu_seqlens_k = nullptr;
  const int* seqused_k = nullptr;
  bool pingpong = false;  // warpgroup ping-pong (overlap kernels only), see consumer.cuh
  bool reverse_kv = false;  // visit a tile's KV blocks last to first (experiment, see kv_block)
  // Dynamic schedule: {next tile to claim - gridDim.x, CTAs done}, zero at the
  // launch and zero again after it (the last CTA resets them; stream_scratch.h).
  // nullptr: the static round robin (`static_sched` experiment).
  int* tile_counter = nullptr;
};

// The i-th KV block a tile visits out of [n_begin, n_end): in order, or last first
// (`reverse_kv`: a causal tile's masked diagonal block then comes first, in the
// prologue that no GEMM overlaps anyway). Producer and consumers use the same order.
__device__ __forceinline__ int kv_block(const KernelParams& p, int n_begin, int n_end, int i) {
  return p.reverse_kv ? n_end - 1 - i : n_begin + i;
}

// Where sequence b lives and what it may see: the TMA coordinates of its first
// query / key row (row, batch) and its mask with its own lengths (bottom-right
// alignment per sequence). Dense batches read nothing from memory here.
struct TileSeq {
  int q_row0 = 0, q_batch = 0;
  int k_row0 = 0, k_batch = 0;
  int len_q = 0, len_k = 0;
  // 32-bit lengths keep the consumers' registers low; the 64-bit Mask is
  // rebuilt where it is used (window sizes stay in the kernel parameters).
  __device__ __forceinline__ Mask mask(const KernelParams& p) const {
    Mask m = p.mask;
    m.seqlen_q = len_q;
    m.seqlen_k = len_k;
    return m;
  }
};
__device__ __forceinline__ TileSeq tile_seq(const KernelParams& p, int b) {
  TileSeq s;
  s.len_q = static_cast<int>(p.mask.seqlen_q);
  s.len_k = static_cast<int>(p.mask.seqlen_k);
  if (p.cu_seqlens_q != nullptr) {
    s.q_row0 = p.cu_seqlens_q[b];
    s.len_q = p.cu_seqlens_q[b + 1] - s.q_row0;
  } else {
    s.q_batch = b;
  }
  if (p.cu_seqlens_k != nullptr) {
    s.k_row0 = p.cu_seqlens_k[b];
    s.len_k = p.cu_seqlens_k[b + 1] - s.k_row0;
  } else {
    s.k_batch = b;
  }
  if (p.seqused_k != nullptr) s.len_k = p.seqused_k[b];
  return s;
}

// Tile index -> coordinates. A CTA meets its tiles in increasing index order
// (its first is blockIdx.x, each later one is claimed from the counter or is
// t + gridDim.x), which the varlen cursor relies on. Only the producer walks;
// it hands each tile's coordinates to the consumers (producer.cuh).
//   Dense: t is decoded by the TileScheduler (its tile grid has no empty tiles).
//   Varlen: t numbers only the live tiles (those that start before their
//   sequence's end), sequence by sequence, in each m_block descending with the
//   heads fastest. A grid sized for the longest sequence would be mostly empty
//   tiles, and a round robin over it deals the live ones unevenly: with 22 query
//   blocks and 132 CTAs every CTA always got the same m_block, and the CTAs of the
//   late blocks (live only in long sequences) idled -- half the throughput on
//   the ragged bench batch. The cursor moves forward only (t grows), so the walk
//   reads each cu_seqlens_q entry once per CTA.
struct TileWalk {
  int seq = -1;  // varlen cursor: the live tiles of sequences <= seq end before `end`
  int end = 0;   // (in each sequence m_block-major, descending, with the heads fastest)

  // The coordinates of tile t (never smaller than the last call's); false when
  // there is no such tile.
  __device__ __forceinline__ bool at(const KernelParams& p, int block_m, int t, int& m_block, int& head, int& b) {
    if (p.cu_seqlens_q == nullptr) {
      if (t >= p.sched.total()) return false;
      p.sched.decode(t, m_block, head, b);
      return true;
    }
    while (t >= end) {
      if (++seq >= p.sched.batch) return false;
      const int len_q = p.cu_seqlens_q[seq + 1] - p.cu_seqlens_q[seq];
      end += (len_q + block_m - 1) / block_m * p.sched.heads;
    }
    // Counted from the sequence's end: its last m_block first.
    const int from_end = end - 1 - t;
    m_block = from_end / p.sched.heads;
    head = p.sched.heads - 1 - from_end % p.sched.heads;
    b = seq;
    return true;
  }
};

// Everything one launch needs; built by hopper_fwd.cu, consumed by the
// instantiation files (launch_hopper_fwd<D, BF16> in kernel.cuh).
struct LaunchArgs {
  CUtensorMap tm_q, tm_k, tm_v;
  KernelParams params;
  int grid = 0;
  cudaStream_t stream = nullptr;
  int block_m = 128;        // query rows per tile of the launched kernel (192: the d64 `wg3` variant)
  bool no_overlap = false;  // experiment switches (FLASHATTN_HOPPER_VARIANT), see hopper_fwd.cu
  bool sync_handoff = false;  // d64: the tile handoff racecheck can follow (traits.cuh)
};
template <int kHeadDim, bool kBF16> Status launch_hopper_fwd(const LaunchArgs& a);

}}}  // namespace flashattn::cuda::sm90
