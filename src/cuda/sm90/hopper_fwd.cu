// Host side of the Hopper forward: what it supports (everything else returns
// kUnsupported with the reason, so kAuto falls back to FA2), the TMA tensor
// maps built from the real strides, and the dispatch to the head-dim
// instantiations (hopper_fwd_hdimNNN.cu).
#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/mask.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/traits.cuh"

namespace flashattn { namespace cuda {
namespace sm90 {

namespace {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver the runtime already loaded (no -lcuda).
Status get_encode_fn(EncodeTiledFn* fn) {
  static EncodeTiledFn cached = nullptr;
  if (cached == nullptr) {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q{};
    FA_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || ptr == nullptr)
      return Status::Unsupported("hopper: the driver has no cuTensorMapEncodeTiled");
    cached = reinterpret_cast<EncodeTiledFn>(ptr);
  }
  *fn = cached;
  return Status::Ok();
}

// 4D map over [batch, seqlen, heads, dim] with the caller's strides, read in
// boxes of 64 columns (128 B, the 128B-swizzle width) x box_rows rows.
Status make_map(CUtensorMap* map, const char* name, const void* ptr, DType dtype, int64_t dim, int64_t seqlen,
                int64_t heads, int64_t batch, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                int box_rows) {
  EncodeTiledFn encode = nullptr;
  Status st = get_encode_fn(&encode);
  if (!st.ok()) return st;
  const int64_t sizes[3] = {seqlen, heads, batch};
  const int64_t strides[3] = {row_stride, head_stride, batch_stride};
  cuuint64_t gdim[4] = {static_cast<cuuint64_t>(dim), 0, 0, 0};
  cuuint64_t gstride[3];
  for (int i = 0; i < 3; ++i) {
    gdim[i + 1] = static_cast<cuuint64_t>(sizes[i]);
    int64_t bytes = strides[i] * 2;
    if (sizes[i] == 1) bytes = 16 * ((dim * 2 + 15) / 16);  // never stepped over; any legal value
    if (bytes <= 0 || bytes % 16 != 0 || bytes >= (int64_t{1} << 40))
      return Status::Unsupported(std::string("hopper: ") + name +
                                 " has a zero or unsupported stride for TMA (broadcast strides are not supported)");
    gstride[i] = static_cast<cuuint64_t>(bytes);
  }
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t estride[4] = {1, 1, 1, 1};
  const CUresult r =
      encode(map, dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
             const_cast<void*>(ptr), gdim, gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return Status::Unsupported(std::string("hopper: cuTensorMapEncodeTiled refused ") + name + " (CUresult " +
                               std::to_string(static_cast<int>(r)) + ")");
  return Status::Ok();
}

template <int D>
Status run(const FwdParams& p) {
  using Tr = Traits<D, false>;
  LaunchArgs a{};
  // Experiment switches for docs/06-hopper.md (leave-one-out timings), a comma list
  // of no_overlap, no_pingpong, no_persistent, stages3, bn176, overlap_d256. Unset in normal use.
  const char* variant_env = std::getenv("FLASHATTN_HOPPER_VARIANT");
  const std::string variant = "," + std::string(variant_env ? variant_env : "") + ",";
  auto has = [&](const char* name) { return variant.find("," + std::string(name) + ",") != std::string::npos; };
  const bool no_persistent = has("no_persistent");
  // Head dims <= 128 run the intra-warpgroup overlap and the ping-pong of the two
  // consumer warpgroups (head dim 256 has no registers for the overlap).
  a.no_overlap = has("no_overlap");
  a.stages3 = has("stages3");
  a.overlap_d256 = has("overlap_d256");
  a.block_n = D == 128 && has("bn176") ? 176 : Tr::kBlockN;

  Status st = make_map(&a.tm_q, "q", p.q, p.dtype, p.head_dim, p.seqlen_q, p.heads_q, p.batch, p.q_row_stride,
                       p.q_head_stride, p.q_batch_stride, Tr::kBlockM);
  if (!st.ok()) return st;
  st = make_map(&a.tm_k, "k", p.k, p.dtype, p.head_dim, p.seqlen_k, p.heads_kv, p.batch, p.k_row_stride,
                p.k_head_stride, p.k_batch_stride, a.block_n);
  if (!st.ok()) return st;
  st = make_map(&a.tm_v, "v", p.v, p.dtype, p.head_dim, p.seqlen_k, p.heads_kv, p.batch, p.v_row_stride,
                p.v_head_stride, p.v_batch_stride, a.block_n);
  if (!st.ok()) return st;

  KernelParams& k = a.params;
  k.o = p.o;
  k.lse = p.lse;
  k.o_batch_stride = p.o_batch_stride;
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
  k.sched.num_m_blocks = static_cast<int>((p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM);
  k.sched.heads = static_cast<int>(p.heads_q);
  k.sched.batch = static_cast<int>(p.batch);
  k.sched.longest_first = k.mask.window_right >= 0;
  const int64_t tiles = static_cast<int64_t>(k.sched.num_m_blocks) * p.heads_q * p.batch;
  if (tiles > 0x7fffffff) return Status::Unsupported("hopper: more than 2^31 query tiles");

  int device = 0, sms = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  k.pingpong = !has("no_pingpong");
  a.grid = static_cast<int>(tiles < sms || no_persistent ? tiles : sms);
  a.stream = as_stream(p.stream);
  return p.dtype == DType::kBFloat16 ? launch_hopper_fwd<D, true>(a) : launch_hopper_fwd<D, false>(a);
}

}  // namespace
}  // namespace sm90

Status hopper_forward(const FwdParams& p) {
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::Unsupported("hopper: only float16 and bfloat16 (use fa1 for float32)");
  if (p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.block_table)
    return Status::Unsupported("hopper: varlen and KV-cache inputs are not supported yet");
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
