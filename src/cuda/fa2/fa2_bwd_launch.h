// Declaration of the per-head-dim launchers of the FlashAttention-2 backward;
// each is explicitly instantiated in its own fa2_bwd_hdimNNN_<dtype>.cu file
// (built only when NNN is in FLASHATTN_HEADDIMS).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {
namespace cuda {
namespace fa2bwd {

constexpr int kBlockM = 64;  // query rows per Q block (Br)

// Tile configuration per instantiated head dim, shared by the host (workspace
// sizes) and the kernels. Key rows per CTA (Bc) = 16 per warp.
//   d <= 128: 8 warps, Bc = 128, Q/dO double-buffered (one CTA per SM).
//   d >  128: 4 warps, Bc = 64, single-buffered, two CTAs per key block that each
//             own half of the output columns (the dK + dV accumulators would not
//             fit in registers otherwise).
constexpr int bwd_warps(int head_dim_pad) { return head_dim_pad > 128 ? 4 : 8; }
constexpr int bwd_block_n(int head_dim_pad) { return 16 * bwd_warps(head_dim_pad); }
constexpr int bwd_split(int head_dim_pad) { return head_dim_pad > 128 ? 2 : 1; }
constexpr int bwd_stages(int head_dim_pad) { return head_dim_pad > 128 ? 1 : 2; }
constexpr float kLog2e = 1.4426950408889634f;

// Everything the kernels read; built once on the host (fa2_bwd.cu).
struct KernelParams {
  const void* q;
  const void* k;
  const void* v;
  const void* o;
  const void* dout;
  void* dq;
  void* dk;
  void* dv;
  const float* lse;  // [batch, heads_q, seqlen_q], natural log (varlen: seqlen_q = the maximum)
  float* delta;      // workspace [batch, heads_q, seqlen_q_pad]
  float* dq_accum;   // workspace [batch, heads_q, seqlen_q_pad, head_dim_pad], fp32 (varlen too: per sequence)
  int* dq_sem;       // workspace [split, batch, heads_q, num_m_blocks] (deterministic only)

  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;

  int64_t batch, seqlen_q, seqlen_k, heads_q, heads_kv, group;
  int64_t head_dim;      // real head dim (multiple of 8)
  int64_t head_dim_pad;  // instantiated head dim (row length of dq_accum)
  int64_t seqlen_q_pad;  // seqlen_q rounded up to kBlockM
  int64_t num_m_blocks;
  int64_t num_n_blocks;  // set by launch() from the tile configuration
  int64_t window_left, window_right;  // effective (causal folded in), -1 = unbounded

  float scale;         // softmax scale
  float scale_log2;    // scale * log2(e) (no softcap)
  float softcap;       // 0 = off
  float softcap_in;    // scale / softcap
  float softcap_log2;  // softcap * log2(e)
  bool deterministic;

  // Variable-length batches (params.h), read only by the kVarlen instantiations:
  // cu_seqlens_q/k (set together) make q/o/dout/dq resp. k/v/dk/dv packed rows
  // (batch strides ignored); seqused_k caps the keys of each sequence. seqlen_q /
  // seqlen_k are then the maxima, and the LSE / workspaces keep their dense shape.
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  const int32_t* seqused_k;
};

// Whether a request needs the kVarlen instantiations (bwd_main reads per-sequence
// lengths; preprocess and convert_dq need them only for packed query rows).
inline bool kernel_is_varlen(const KernelParams& p) { return p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k; }

template <typename T, int kD>
Status launch(const KernelParams& p, cudaStream_t stream);

// Shared with other main kernels (the Hopper backward, sm90/hopper_bwd.cu),
// which reuse the params, the workspace layout and the first and last kernels
// (fa2_bwd_steps.cu). make_params: everything but the workspace pointers and
// num_n_blocks, for an instantiated head dim head_dim_pad (the dq_accum row).
// launch_preprocess: D = rowsum(dO * O) into p.delta; launch_convert_dq:
// dq = scale * dq_accum in the dtype. T = __half or __nv_bfloat16.
KernelParams make_params(const BwdParams& p, int64_t head_dim_pad);
template <typename T>
Status launch_preprocess(const KernelParams& p, cudaStream_t stream);
template <typename T>
Status launch_convert_dq(const KernelParams& p, cudaStream_t stream);

}  // namespace fa2bwd
}  // namespace cuda
}  // namespace flashattn
