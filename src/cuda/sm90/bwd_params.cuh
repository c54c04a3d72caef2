// What the Hopper backward main kernel needs besides its four TMA descriptors;
// built by hopper_bwd.cu, consumed by the instantiation files
// (launch_hopper_bwd<D, BF16> in bwd_kernel.cuh). The preprocess (Delta) and
// the dQ conversion are the FA2 backward's kernels (fa2_bwd_launch.h).
#pragma once

#include <cuda.h>  // CUtensorMap (header only)
#include <cuda_runtime.h>

#include <cstdint>

#include "common/mask.h"
#include "flashattn/status.h"

namespace flashattn { namespace cuda { namespace sm90 { namespace bwd {

// Tile of the main kernel, shared with the host (grid, TMA boxes): a CTA owns
// kBlockN keys and walks Q blocks of kBlockM rows (= fa2bwd::kBlockM, the row
// padding of the delta / dq_accum workspace).
constexpr int kBlockM = 64;
constexpr int kBlockN = 128;

// Kernel variants (bit flags; bwd_kernel.cuh's header says what they change).
constexpr int kFlagBulkDq = 1;   // dQ through shared memory + one bulk reduce per tile
constexpr int kFlagDet = 2;      // deterministic dQ (implies kFlagBulkDq)
constexpr int kFlagDqFirst = 4;  // dQ GEMM issued before dK, its output overlaps dK
constexpr int kFlagDq32 = 8;     // d64: each consumer warpgroup computes 32 dQ columns over all 128 keys
// dq_accum layout with kFlagBulkDq: inside each 64-row Q block (64 x D floats,
// contiguous as in the row-major layout) element (r, c) sits at float
//   (c / 32) * 2048 + r * 32 + (((c % 32) / 4) ^ (r % 8)) * 4 + c % 4
// (32-column chunks, rows of 128 bytes, 16-byte units swizzled by the row).
__host__ __device__ constexpr int64_t dq_offset(int r, int c) {
  return (c / 32) * 2048 + r * 32 + ((((c % 32) / 4) ^ (r % 8)) * 4) + c % 4;
}

struct MainParams {
  void* dk = nullptr;           // [batch, seqlen_k, heads_kv, head_dim]
  void* dv = nullptr;           // [batch, seqlen_k, heads_kv, head_dim]
  const float* lse = nullptr;   // [batch, heads_q, seqlen_q], natural log (-inf: row sees nothing)
  const float* delta = nullptr; // [batch, heads_q, seqlen_q_pad], rowsum(dO * O), 0 on padded rows
  float* dq_accum = nullptr;    // [batch, heads_q, seqlen_q_pad, kHeadDim] fp32, unscaled dS K
  int* dq_sem = nullptr;        // kFlagDet: [batch, heads_q, seqlen_q_pad / 64, writers], zeroed
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;  // elements
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;
  int seqlen_q = 0, seqlen_k = 0;
  int seqlen_q_pad = 0;  // seqlen_q rounded up to the 64-row Q block
  int heads_q = 0;
  int group = 1;         // heads_q / heads_kv
  int head_dim = 0;      // real head dim (<= the padded kernel head dim)
  float scale = 0.0f;         // softmax scale (dK is scaled in the epilogue, dQ by bwd_convert_dq)
  float scale_log2 = 0.0f;    // scale * log2(e), no softcap
  float softcap_in = 0.0f;    // scale / softcap, 0 = no softcap
  float softcap_log2 = 0.0f;  // softcap * log2(e)
  Mask mask;
};

struct LaunchArgs {
  CUtensorMap tm_q, tm_k, tm_v, tm_do;  // boxes: 64 columns x 64 rows (q, dout), x 128 rows (k, v)
  MainParams params;
  dim3 grid;  // (key blocks of 128, heads_kv, batch)
  int flags = 0;  // kFlag* bits
  cudaStream_t stream = nullptr;
};

template <int kHeadDim, bool kBF16>
Status launch_hopper_bwd(const LaunchArgs& a);

}}}}  // namespace flashattn::cuda::sm90::bwd
