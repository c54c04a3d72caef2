// Host side of the Hopper backward: what it supports (everything else returns
// kUnsupported with the reason, so kAuto falls back to FA2), the TMA maps of
// q, k, v and dout, the fp32 workspace of the FA2 backward (Delta and
// dq_accum, same layout), and the three launches:
//   fa2bwd::launch_preprocess (Delta = rowsum(dO * O))
//   -> the main kernel (bwd_kernel.cuh, instantiated in hopper_bwd_hdimNNN.cu)
//   -> fa2bwd::launch_convert_dq (dq = scale * dq_accum), or with the bulk dQ
//      (deterministic, or the bulk variant) convert_dq_swizzled below (the
//      dq_offset layout inside each Q block).
// FLASHATTN_HOPPER_BWD_VARIANT (experiments; unset in normal use) is a comma
// list of: bulk (dQ through shared memory + one bulk reduce per tile; the
// default at head dim 128), atomic (head dim 128: dQ atomics from registers instead),
// dqfirst (dQ GEMM before dK), dq32 (d64: 32 dQ columns per warpgroup over all
// keys). deterministic=true always uses the bulk dQ.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "common/mask.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/fa2/fa2_bwd_launch.h"
#include "cuda/sm90/bwd_params.cuh"
#include "cuda/sm90/tma_map.h"

namespace flashattn { namespace cuda {
namespace sm90 { namespace bwd {
namespace {

static_assert(kBlockM == fa2bwd::kBlockM, "the workspace rows are padded to the FA2 backward's Q block");

// dq = scale * dq_accum for the dq_offset layout (kFlagBulkDq): one thread per
// 8 columns of a row (two 16-byte units of one 128-byte row of a chunk).
template <typename T, int D>
__global__ void convert_dq_swizzled(fa2bwd::KernelParams p) {
  const int64_t chunks = p.head_dim / 8;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.batch * p.seqlen_q * p.heads_q * chunks) return;
  const int c = static_cast<int>(idx % chunks) * 8;
  const int64_t h = (idx / chunks) % p.heads_q;
  const int64_t i = (idx / (chunks * p.heads_q)) % p.seqlen_q;
  const int64_t b = idx / (chunks * p.heads_q * p.seqlen_q);
  const int r = static_cast<int>(i % kBlockM);
  const float* blk = p.dq_accum + ((b * p.heads_q + h) * p.seqlen_q_pad + (i - r)) * D;
  const float4 lo = *reinterpret_cast<const float4*>(blk + dq_offset(r, c));
  const float4 hi = *reinterpret_cast<const float4*>(blk + dq_offset(r, c + 4));
  const float f[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  T* dst = static_cast<T*>(p.dq) + b * p.dq_batch_stride + i * p.dq_row_stride + h * p.dq_head_stride + c;
  alignas(16) T out[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = from_float<T>(f[e] * p.scale);
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(out);
}

// Variant flags from FLASHATTN_HOPPER_BWD_VARIANT (read at every call, so a
// test can switch it) and `deterministic`.
int variant_flags(bool deterministic, int head_dim_pad) {
  const char* gate = std::getenv("FLASHATTN_HOPPER_BWD_EXPERIMENTS");
  const bool experimental = gate != nullptr && std::string(gate) == "1";
  const char* env = experimental ? std::getenv("FLASHATTN_HOPPER_BWD_VARIANT") : nullptr;
  const std::string v = "," + std::string(env ? env : "") + ",";
  auto has = [&](const char* name) { return v.find("," + std::string(name) + ",") != std::string::npos; };
  // Head dim 128 adds dQ with the bulk reduce by default: the deterministic kernel
  // (bulk dQ + ordering) measured 18 % faster than the per-thread atomics on the
  // H100 (2026-11-25, N = 8k, causal and not); `atomic` restores them (like every
  // variant here, only with FLASHATTN_HOPPER_BWD_EXPERIMENTS=1).
  const bool bulk = has("bulk") || (head_dim_pad == 128 && !has("atomic"));
  int flags = (bulk ? kFlagBulkDq : 0) | (has("dqfirst") ? kFlagDqFirst : 0);
  if (has("dq32") && head_dim_pad == 64) flags |= kFlagDq32;
  if (deterministic) flags |= kFlagBulkDq | kFlagDet;
  return flags;
}

template <int D, typename T>
Status run(const BwdParams& p) {
  constexpr bool kBF16 = std::is_same_v<T, __nv_bfloat16>;
  fa2bwd::KernelParams k = fa2bwd::make_params(p, D);
  if (k.seqlen_q_pad > INT_MAX) return Status::Unsupported("hopper backward: seqlen_q too large");

  LaunchArgs a{};
  Status st = make_tma_map(&a.tm_q, "q", p.q, p.dtype, p.head_dim, p.seqlen_q, p.heads_q, p.batch, p.q_row_stride,
                           p.q_head_stride, p.q_batch_stride, kBlockM);
  if (st.ok())
    st = make_tma_map(&a.tm_do, "dout", p.dout, p.dtype, p.head_dim, p.seqlen_q, p.heads_q, p.batch,
                      p.dout_row_stride, p.dout_head_stride, p.dout_batch_stride, kBlockM);
  if (st.ok())
    st = make_tma_map(&a.tm_k, "k", p.k, p.dtype, p.head_dim, p.seqlen_k, p.heads_kv, p.batch, p.k_row_stride,
                      p.k_head_stride, p.k_batch_stride, kBlockN);
  if (st.ok())
    st = make_tma_map(&a.tm_v, "v", p.v, p.dtype, p.head_dim, p.seqlen_k, p.heads_kv, p.batch, p.v_row_stride,
                      p.v_head_stride, p.v_batch_stride, kBlockN);
  if (!st.ok()) return st;

  MainParams& m = a.params;
  m.dk = p.dk;
  m.dv = p.dv;
  m.lse = p.lse;
  m.dk_batch_stride = p.dk_batch_stride, m.dk_row_stride = p.dk_row_stride, m.dk_head_stride = p.dk_head_stride;
  m.dv_batch_stride = p.dv_batch_stride, m.dv_row_stride = p.dv_row_stride, m.dv_head_stride = p.dv_head_stride;
  m.seqlen_q = static_cast<int>(p.seqlen_q);
  m.seqlen_k = static_cast<int>(p.seqlen_k);
  m.seqlen_q_pad = static_cast<int>(k.seqlen_q_pad);
  m.heads_q = static_cast<int>(p.heads_q);
  m.group = static_cast<int>(p.heads_q / p.heads_kv);
  m.head_dim = static_cast<int>(p.head_dim);
  m.scale = k.scale;
  m.scale_log2 = k.scale_log2;
  m.softcap_in = k.softcap_in;
  m.softcap_log2 = k.softcap_log2;
  m.mask = make_mask(p);
  a.grid = dim3(static_cast<unsigned>((p.seqlen_k + kBlockN - 1) / kBlockN), static_cast<unsigned>(p.heads_kv),
                static_cast<unsigned>(p.batch));
  a.stream = as_stream(p.stream);
  a.flags = variant_flags(p.deterministic, D);
  const bool bulk = (a.flags & kFlagBulkDq) != 0;

  // Workspace (the FA2 backward's layout): Delta [batch, heads_q, seqlen_q_pad]
  // and the fp32 dQ accumulator [batch, heads_q, seqlen_q_pad, D], zeroed;
  // deterministic: the semaphores [batch, heads_q, seqlen_q_pad / 64, writers], zeroed.
  const int64_t n_delta = p.batch * p.heads_q * k.seqlen_q_pad;
  const int64_t n_accum = n_delta * D;
  // One semaphore per (Q block, writer) where the writers own disjoint columns, else one per Q block.
  const int writers = (D == 128 || (a.flags & kFlagDq32)) ? 2 : 1;
  const int64_t n_sem = (a.flags & kFlagDet) ? (n_delta / kBlockM) * writers : 0;
  void* ws = nullptr;
  FA_CUDA_CHECK(cudaMallocAsync(&ws, static_cast<size_t>(n_delta + n_accum + n_sem) * sizeof(float), a.stream));
  k.delta = static_cast<float*>(ws);
  k.dq_accum = k.delta + n_delta;
  m.delta = k.delta;
  m.dq_accum = k.dq_accum;
  m.dq_sem = n_sem > 0 ? reinterpret_cast<int*>(k.dq_accum + n_accum) : nullptr;
  st = cuda_status(cudaMemsetAsync(k.dq_accum, 0, static_cast<size_t>(n_accum + n_sem) * sizeof(float), a.stream),
                   "cudaMemsetAsync(dq_accum)");
  if (st.ok()) st = fa2bwd::launch_preprocess<T>(k, a.stream);
  if (st.ok()) st = launch_hopper_bwd<D, kBF16>(a);
  if (st.ok()) {
    if (bulk) {
      const int64_t n = p.batch * p.seqlen_q * p.heads_q * (p.head_dim / 8);
      if (n > 0) {
        convert_dq_swizzled<T, D><<<static_cast<unsigned>((n + 255) / 256), 256, 0, a.stream>>>(k);
        st = cuda_status(cudaGetLastError(), "convert_dq_swizzled");
      }
    } else {
      st = fa2bwd::launch_convert_dq<T>(k, a.stream);
    }
  }
  const cudaError_t free_err = cudaFreeAsync(ws, a.stream);
  if (st.ok()) st = cuda_status(free_err, "cudaFreeAsync(workspace)");
  return st;
}

template <typename T>
Status run_dtype(const BwdParams& p) {
#if FLASHATTN_HAS_HDIM_64
  if (p.head_dim <= 64) return run<64, T>(p);
#endif
#if FLASHATTN_HAS_HDIM_128
  if (p.head_dim <= 128) return run<128, T>(p);
#endif
  return Status::Unsupported("hopper backward: no kernel compiled for head_dim " + std::to_string(p.head_dim) +
                             " (it has head dims 64 and 128: build with -DFLASHATTN_HEADDIMS including them; "
                             "fa2 covers the others)");
}

}  // namespace
}}  // namespace sm90::bwd

Status hopper_backward(const BwdParams& p) {
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::Unsupported("hopper backward: only float16 and bfloat16");
  if (p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.block_table)
    return Status::Unsupported("hopper backward: varlen and KV-cache inputs are not supported");
  if (p.head_dim_v != 0 && p.head_dim_v != p.head_dim)
    return Status::Unsupported("hopper backward: head_dim_v must equal head_dim");
  // deterministic = true runs the bulk-dQ kernel with per-Q-block semaphores
  // (bwd_kernel.cuh). Its first H100 runs hung: the bulk-dQ register split asked
  // for more registers than the launch's pool (fixed 2026-11-25 night; passed on
  // the H100 2026-11-25, 10 bit-identical reruns per case). The other variants
  // (FLASHATTN_HOPPER_BWD_VARIANT) stay behind FLASHATTN_HOPPER_BWD_EXPERIMENTS=1.
  if (p.batch > 65535 || p.heads_kv > 65535)
    return Status::Unsupported("hopper backward: batch and heads_kv are grid dimensions: at most 65535 each");
  return p.dtype == DType::kBFloat16 ? sm90::bwd::run_dtype<__nv_bfloat16>(p) : sm90::bwd::run_dtype<__half>(p);
}

}}  // namespace flashattn::cuda
