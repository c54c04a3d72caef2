// FlashAttention-2 forward (sm_80 tensor cores): the arguments the kernel gets,
// the one tile-size function shared by the host heuristic and the templates,
// and the per-(head dim, dtype) launchers instantiated in fa2_fwd_hdimNNN_*.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashattn/status.h"

namespace flashattn {
namespace cuda {

// Everything the kernel reads, resolved on the host (scale, mask, GQA group).
struct Fa2FwdArgs {
  const void* q = nullptr;  // [batch, seqlen_q, heads_q, head_dim]
  const void* k = nullptr;  // [batch, seqlen_k, heads_kv, head_dim]
  const void* v = nullptr;  // [batch, seqlen_k, heads_kv, head_dim]
  void* o = nullptr;        // [batch, seqlen_q, heads_q, head_dim]
  float* lse = nullptr;     // [batch, heads_q, seqlen_q] or nullptr
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;  // elements
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  // Variable-length batches / KV cache (params.h semantics), device int32 arrays or
  // nullptr. With cu_seqlens_q (resp. _k) q and o (resp. k and v) are packed rows and
  // their batch strides are ignored; seqused_k caps the keys of each sequence.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;
  // seqlen_q / seqlen_k: the (maximum) lengths; seqlen_q is also the LSE row stride.
  int batch = 0, seqlen_q = 0, seqlen_k = 0, heads_q = 0;
  int group = 1;     // heads_q / heads_kv: query head h reads kv head h / group
  int head_dim = 0;  // the real head dim (<= the kernel's, the rest is zero-filled)
  // Exponent scale in the log2 domain: p = exp2(s * scale_log2 - max * scale_log2),
  // scale_log2 = softmax_scale * log2(e), or softcap * log2(e) when soft-capping
  // (then s = tanh(q.k * softcap_pre), softcap_pre = softmax_scale / softcap).
  float scale_log2 = 0.0f;
  float softcap_pre = 0.0f;  // 0 = no softcap
  // Bottom-right aligned window (src/common/mask.h), causal folded into
  // window_right = 0; -1 = unbounded (also for windows wider than the problem).
  int64_t window_left = -1, window_right = -1;
};

// Tile shape of the forward kernel for one (rounded-up) head dim. Used by the
// launcher and the kernel templates alike. Register budget per thread: the O
// accumulator is block_m * head_dim / (32 * warps) floats, S is
// block_m * block_n / (32 * warps); together they must stay well under 255.
struct Fa2FwdTile {
  int block_m, block_n, warps;
  int min_blocks = 1;  // __launch_bounds__ minimum CTAs per SM (caps registers)
};
constexpr Fa2FwdTile fa2_fwd_tile(int head_dim) {
  // Measured on H100 with bench/tune/fa2_tune.cu (flashattn-fa2-tune), docs/04-fa2.md:
  // hdim 64: 128 x 64, 4 warps, 3 CTAs per SM (registers capped at 168: O 64 + S 64):
  //          +10-17 % over 2 CTAs per SM non-causal, +3-6 % causal; 128 x 128 spills.
  // hdim 96/128: 128 x 64, 4 warps: O 96/128 + S 64 regs; two CTAs per SM. Best of
  //          128x32, 64x64, 64x128, 128x128/8 warps, 256x64/8 warps at N = 2k and 8k.
  // hdim 192: 128 x 64, 8 warps (1 m-tile per warp): O 96 + S 32 regs.
  // hdim 256: 64 x 64, 4 warps: O 128 + S 32 regs, ~101 KB smem, two CTAs per SM.
  return head_dim <= 64    ? Fa2FwdTile{128, 64, 4, 3}
         : head_dim <= 128 ? Fa2FwdTile{128, 64, 4, 1}
         : head_dim <= 192 ? Fa2FwdTile{128, 64, 8, 1}
                           : Fa2FwdTile{64, 64, 4, 1};
}

// Head dims with a compiled kernel (the real head dim is rounded up to one).
constexpr int kFa2HeadDims[] = {64, 96, 128, 192, 256};

// Launches the forward for one kernel head dim and element type (__half or
// __nv_bfloat16). Defined in fa2_fwd_launch.cuh, instantiated per file.
template <int kHeadDim, typename Element>
Status run_fa2_fwd(const Fa2FwdArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace flashattn
