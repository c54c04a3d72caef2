// Host side of the decode kernel for one head dim: split heuristic, partials
// workspace and combine counters, the launch. Instantiated once per head dim (decode_hdimNNN.cu).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "common/mask.h"
#include "cuda/decode/decode_kernel.cuh"
#include "cuda/stream_scratch.h"

namespace flashattn {
namespace cuda {
namespace decode {

// Number of splits. num_splits > 0 forces it (at most kMaxSplits).
//
// Otherwise the rule: decode reads every K/V byte once and does next to no
// math, so all that matters is that every SM keeps streaming until the end.
// `ctas` = batch * heads_kv * row_tiles CTAs exist without splitting; `slots` =
// SMs * CTAs resident per SM is one wave.
//  1. ctas >= slots: no split. The machine is full already; splitting would only
//     add partial-O traffic and the combine.
//  2. Else aim at kTargetWaves (1) wave: splits = ceil(slots / ctas). Measured on
//     the H100 (docs/07-inference.md): B=1, 32k and 128k keys, 32 splits beat the
//     64 of a two-wave rule by 10 % and 4 % (2283 vs 2074, 2773 vs 2667 GB/s) and
//     128 splits lost 14-20 %: with the combine fused, each extra split costs a
//     partial-O write and a longer merge, while the one-wave CTAs already stream
//     at full rate.
//  3. Every split keeps >= kMinSplitBlocks key blocks (256 keys = 64 KB of K/V
//     at D = 128): enough to fill the cp.async pipeline a few times over, and
//     the fp32 partial it writes (<= 8 KB per row tile) stays small against it.
//  4. Even out: with w = ceil(key_blocks / splits) blocks for the longest split,
//     use ceil(key_blocks / w) splits -- the same longest split, so the same
//     time, with no near-empty splits and fewer partials to merge (e.g. 512
//     blocks, 66 splits -> w = 8 -> 64 splits of exactly 8 blocks).
// seqlen_k is the capacity: a KV cache's real lengths live on the device.
constexpr int kTargetWaves = 1;
constexpr int kMinSplitBlocks = 4;
inline int choose_splits(int forced, int64_t ctas, int64_t seqlen_k, int sms, int ctas_per_sm) {
  if (forced > 0) return std::min(forced, kMaxSplits);
  const int64_t slots = static_cast<int64_t>(std::max(sms, 1)) * std::max(ctas_per_sm, 1);
  if (ctas >= slots) return 1;
  const int64_t key_blocks = std::max<int64_t>((seqlen_k + kBlockN - 1) / kBlockN, 1);
  int64_t splits = (kTargetWaves * slots + ctas - 1) / ctas;
  splits = std::min<int64_t>({splits, std::max<int64_t>(key_blocks / kMinSplitBlocks, 1), kMaxSplits});
  const int64_t w = (key_blocks + splits - 1) / splits;
  splits = (key_blocks + w - 1) / w;
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

template <typename T, int D>
Status run_decode_typed(const FwdParams& p) {
  const cudaStream_t stream = as_stream(p.stream);
  const Mask mask = make_mask(p);
  DecodeArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.o = p.o;
  a.lse = p.lse;
  a.q_bs = p.q_batch_stride; a.q_rs = p.q_row_stride; a.q_hs = p.q_head_stride;
  a.k_bs = p.k_batch_stride; a.k_rs = p.k_row_stride; a.k_hs = p.k_head_stride;
  a.v_bs = p.v_batch_stride; a.v_rs = p.v_row_stride; a.v_hs = p.v_head_stride;
  a.o_bs = p.o_batch_stride; a.o_rs = p.o_row_stride; a.o_hs = p.o_head_stride;
  a.cu_q = p.cu_seqlens_q;
  a.cu_k = p.cu_seqlens_k;
  a.seqused_k = p.seqused_k;
  a.block_table = p.block_table;
  a.bt_bs = p.block_table_batch_stride;
  a.page_size = static_cast<int>(p.page_size);
  a.num_pages = static_cast<int>(p.num_pages);
  a.batch = static_cast<int>(p.batch);
  a.heads_q = static_cast<int>(p.heads_q);
  a.heads_kv = static_cast<int>(p.heads_kv);
  a.group = static_cast<int>(p.heads_q / p.heads_kv);
  a.seqlen_q = static_cast<int>(p.seqlen_q);
  a.seqlen_k = static_cast<int>(p.seqlen_k);
  a.rows = a.group * a.seqlen_q;
  a.row_tiles = (a.rows + kTileRows - 1) / kTileRows;
  a.scale = effective_scale(p);
  a.scale_log2 = a.scale * kLog2e;
  a.softcap = p.softcap;
  a.window_left = static_cast<int>(std::min<int64_t>(mask.window_left, 1 << 30));
  a.window_right = static_cast<int>(std::min<int64_t>(mask.window_right, 1 << 30));

  constexpr int kSmem = smem_bytes<D>();
  auto split_kernel = decode_split_kernel<T, D>;
  static PerDeviceOnce smem_opt_in;  // per instantiation and device
  FA_CUDA_CHECK(smem_opt_in.run(
      [&] { return cudaFuncSetAttribute(split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem); }));
  // SM count and CTAs per SM, queried once per device (decode calls are short:
  // the host cost of each call matters).
  constexpr int kMaxDevices = 64;
  static int cached_sms[kMaxDevices] = {}, cached_per_sm[kMaxDevices] = {};
  int device = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  int sms = device < kMaxDevices ? cached_sms[device] : 0, per_sm = device < kMaxDevices ? cached_per_sm[device] : 0;
  if (sms == 0) {
    FA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    FA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, split_kernel, kThreads, kSmem));
    if (device < kMaxDevices) {
      cached_per_sm[device] = per_sm;
      cached_sms[device] = sms;
    }
  }
  const int64_t ctas = p.batch * p.heads_kv * a.row_tiles;
  a.splits = choose_splits(p.num_splits, ctas, p.seqlen_k, sms, per_sm);

  void* workspace = nullptr;
  // Arrival counters of the fused combine, one per group: each launch leaves
  // them at 0 again, so they are zeroed once per stream (stream_scratch.h).
  StreamScratch counters;
  if (a.splits > 1) {
    const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
    const size_t bytes = static_cast<size_t>(a.splits) * rows * (D + 1) * sizeof(float);
    Status st = stream_scratch(ScratchTag::kDecodeCounters, stream, static_cast<size_t>(ctas) * sizeof(unsigned int),
                               0, &counters);
    if (!st.ok()) return st;
    a.counters = reinterpret_cast<unsigned int*>(counters.base);
    FA_CUDA_CHECK(cudaMallocAsync(&workspace, bytes, stream));
    a.o_part = static_cast<float*>(workspace);
    a.lse_part = a.o_part + static_cast<int64_t>(a.splits) * rows * D;
  }
  const dim3 grid(static_cast<unsigned>(p.heads_kv * a.row_tiles), a.splits, static_cast<unsigned>(p.batch));
  split_kernel<<<grid, kThreads, kSmem, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (workspace) {
    cudaError_t ferr = cudaFreeAsync(workspace, stream);
    if (err == cudaSuccess) err = ferr;
  }
  const cudaError_t rerr = release_stream_scratch(counters, stream);
  if (err == cudaSuccess) err = rerr;
  return cuda_status(err, "decode kernels");
}

template <int D>
Status run_decode(const FwdParams& p) {
  if (p.dtype == DType::kBFloat16) return run_decode_typed<__nv_bfloat16, D>(p);
  return run_decode_typed<__half, D>(p);
}

}  // namespace decode
}  // namespace cuda
}  // namespace flashattn
