// Host side of the Hopper forward: what it supports (everything else returns
// kUnsupported with the reason, so kAuto falls back to FA2), the TMA tensor
// maps built from the real strides, and the dispatch to the head-dim
// instantiations (hopper_fwd_hdimNNN.cu).
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/mask.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/tma_map.h"
#include "cuda/sm90/traits.cuh"
#include "cuda/stream_scratch.h"

namespace flashattn { namespace cuda {
namespace sm90 {

namespace {

template <int D>
Status run(const FwdParams& p) {
  using Tr = Traits<D, false>;
  LaunchArgs a{};
  // Experiment switches for docs/06-hopper.md (leave-one-out timings), a comma list
  // of no_overlap, no_pingpong, no_persistent, wg3, no_l2_groups, reverse_kv, static_sched,
  // sync_handoff.
  // Unset in normal use.
  const char* variant_env = std::getenv("FLASHATTN_HOPPER_VARIANT");
  const std::string variant = "," + std::string(variant_env ? variant_env : "") + ",";
  auto has = [&](const char* name) { return variant.find("," + std::string(name) + ",") != std::string::npos; };
  const bool no_persistent = has("no_persistent");
  // By default: the intra-warpgroup overlap and the ping-pong of the two consumer
  // warpgroups (ping-pong needs the overlapped loop; see consumer.cuh).
  a.no_overlap = has("no_overlap");
  // Head dim 64: three consumer warpgroups, 192-row tiles (experiment).
  a.block_m = D == 64 && has("wg3") ? 192 : Tr::kBlockM;
  // Head dim 64, two consumer warpgroups: the symmetric tile handoff (experiment).
  a.sync_handoff = D == 64 && a.block_m == 128 && has("sync_handoff");

  // Packed (varlen) tensors are one sequence of total rows with batch 1; the
  // kernel adds each sequence's first row to its TMA coordinates (tile_seq).
  const bool packed_q = p.cu_seqlens_q != nullptr, packed_k = p.cu_seqlens_k != nullptr;
  const int64_t q_rows = packed_q ? p.total_q : p.seqlen_q, q_batch = packed_q ? 1 : p.batch;
  const int64_t k_rows = packed_k ? p.total_k : p.seqlen_k, k_batch = packed_k ? 1 : p.batch;
  Status st = make_tma_map(&a.tm_q, "q", p.q, p.dtype, p.head_dim, q_rows, p.heads_q, q_batch, p.q_row_stride,
                           p.q_head_stride, p.q_batch_stride, a.block_m);
  if (!st.ok()) return st;
  st = make_tma_map(&a.tm_k, "k", p.k, p.dtype, p.head_dim, k_rows, p.heads_kv, k_batch, p.k_row_stride,
                    p.k_head_stride, p.k_batch_stride, Tr::kBlockN);
  if (!st.ok()) return st;
  st = make_tma_map(&a.tm_v, "v", p.v, p.dtype, p.head_dim, k_rows, p.heads_kv, k_batch, p.v_row_stride,
                    p.v_head_stride, p.v_batch_stride, Tr::kBlockN);
  if (!st.ok()) return st;

  KernelParams& k = a.params;
  k.o = p.o;
  k.lse = p.lse;
  k.o_batch_stride = packed_q ? 0 : p.o_batch_stride;
  k.cu_seqlens_q = p.cu_seqlens_q;
  k.cu_seqlens_k = p.cu_seqlens_k;
  k.seqused_k = p.seqused_k;
  k.o_row_stride = p.o_row_stride;
  k.o_head_stride = p.o_head_stride;
  k.seqlen_q = static_cast<int>(p.seqlen_q);
  k.head_dim = static_cast<int>(p.head_dim);
  k.group = static_cast<int>(p.heads_q / p.heads_kv);
  const float scale = effective_scale(p);
  if (p.softcap > 0.0f) {
    k.softcap_in = scale / p.softcap;
    k.score_scale = p.softcap;
  } else {
    k.softcap_in = 0.0f;
    k.score_scale = scale;
  }
  k.score_scale_log2 = k.score_scale * 1.4426950408889634f;
  k.mask = make_mask(p);
  k.sched.num_m_blocks = static_cast<int>((p.seqlen_q + a.block_m - 1) / a.block_m);
  k.sched.heads = static_cast<int>(p.heads_q);
  k.sched.batch = static_cast<int>(p.batch);
  k.sched.longest_first = k.mask.window_right >= 0;
  const int64_t tiles = static_cast<int64_t>(k.sched.num_m_blocks) * p.heads_q * p.batch;
  // Tile indices are int, and a CTA's next index (claimed, or t + grid) can reach
  // tiles + grid - 1 <= 2 * tiles - 1.
  if (tiles > 0x3fffffff) return Status::Unsupported("hopper: more than 2^30 query tiles");

  int device = 0, sms = 0, l2_bytes = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  // Longest-first order in groups of heads whose K/V fill about half the L2
  // (tile_scheduler.cuh); query heads of one KV head share it. `no_l2_groups`:
  // one group (the plain longest-first order), for the leave-one-out timing.
  const int64_t bh_count = p.heads_q * p.batch;
  const int64_t kv_bytes_per_q_head = std::max<int64_t>(1, 2 * p.seqlen_k * D * 2 / (p.heads_q / p.heads_kv));
  int64_t l2_heads = has("no_l2_groups") ? bh_count : l2_bytes / 2 / kv_bytes_per_q_head;
  // Tests force small groups (several groups and a short last one on small shapes).
  if (const char* forced = std::getenv("FLASHATTN_HOPPER_L2_HEADS")) l2_heads = std::atoll(forced);
  k.sched.l2_heads = static_cast<int>(std::clamp<int64_t>(l2_heads, 1, bh_count));
  k.pingpong = !has("no_pingpong");
  k.reverse_kv = has("reverse_kv");
  a.grid = static_cast<int>(tiles < sms || no_persistent ? tiles : sms);
  a.stream = as_stream(p.stream);
  st = fill_varlen_lse_padding(p, a.stream);  // LSE rows past each sequence's end: -inf
  if (!st.ok()) return st;
  // Dynamic schedule (producer.cuh): the tile counter, zero at the launch and left
  // zero by it. A grid of one CTA per tile has nothing to claim.
  StreamScratch counter;
  if (a.grid < tiles && !has("static_sched")) {
    st = stream_scratch(ScratchTag::kHopperTileCounter, a.stream, 2 * sizeof(int), 0, &counter);
    if (!st.ok()) return st;
    k.tile_counter = reinterpret_cast<int*>(counter.base);
  }
  st = p.dtype == DType::kBFloat16 ? launch_hopper_fwd<D, true>(a) : launch_hopper_fwd<D, false>(a);
  const cudaError_t release_err = release_stream_scratch(counter, a.stream);
  if (st.ok()) st = cuda_status(release_err, "releasing the tile counter");
  return st;
}

}  // namespace
}  // namespace sm90

Status hopper_forward(const FwdParams& p) {
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::Unsupported("hopper: only float16 and bfloat16 (use fa1 for float32)");
  if (p.block_table) return Status::Unsupported("hopper: no paged KV cache (block_table); the decode kernel reads it");
  if (p.cu_seqlens_q && (p.total_q <= 0 || (p.total_k <= 0 && p.cu_seqlens_k)))
    return Status::Unsupported("hopper: a varlen request needs total_q and total_k (the packed tensors' rows) to bound "
                               "its TMA reads");
  if (p.head_dim_v != 0 && p.head_dim_v != p.head_dim)
    return Status::Unsupported("hopper: head_dim_v must equal head_dim");
  // The smallest compiled kernel whose (padded) head dim covers the request;
  // TMA zero-fills the padding columns, which add nothing to Q K^T.
#if FLASHATTN_HAS_HDIM_64
  if (p.head_dim <= 64) return sm90::run<64>(p);
#endif
#if FLASHATTN_HAS_HDIM_128
  if (p.head_dim <= 128) return sm90::run<128>(p);
#endif
#if FLASHATTN_HAS_HDIM_256
  if (p.head_dim <= 256) return sm90::run<256>(p);
#endif
  return Status::Unsupported("hopper: no kernel compiled for head_dim " + std::to_string(p.head_dim) +
                             " (build with -DFLASHATTN_HEADDIMS including 64, 128 or 256)");
}

}}  // namespace flashattn::cuda
