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
  Mask mask;
  TileScheduler sched;
  bool pingpong = false;  // warpgroup ping-pong (overlap kernels only), see consumer.cuh
  // Dynamic tile scheduler (tile_scheduler.cuh): {next tile - gridDim.x, finished
  // CTAs}, zero at launch and left zero; nullptr = static round-robin.
  int* tile_counter = nullptr;
};

// Everything one launch needs; built by hopper_fwd.cu, consumed by the
// instantiation files (launch_hopper_fwd<D, BF16> in kernel.cuh).
struct LaunchArgs {
  CUtensorMap tm_q, tm_k, tm_v;
  KernelParams params;
  int grid = 0;
  cudaStream_t stream = nullptr;
  bool no_overlap = false;  // experiment switches (FLASHATTN_HOPPER_VARIANT), see hopper_fwd.cu
};
template <int kHeadDim, bool kBF16> Status launch_hopper_fwd(const LaunchArgs& a);

}}}  // namespace flashattn::cuda::sm90
