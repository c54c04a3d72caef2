// Host side of the Hopper backward: what it supports (everything else returns
// kUnsupported with the reason, so kAuto falls back to FA2), the TMA maps of
// q, k, v and dout, the fp32 workspace of the FA2 backward (Delta and
// dq_accum, same layout), and the three launches:
//   fa2bwd::launch_preprocess (Delta = rowsum(dO * O))
//   -> the main kernel (bwd_kernel.cuh, instantiated in hopper_bwd_hdimNNN.cu)
//   -> fa2bwd::launch_convert_dq (dq = scale * dq_accum).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
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

  // Workspace (the FA2 backward's layout): Delta [batch, heads_q, seqlen_q_pad]
  // and the fp32 dQ accumulator [batch, heads_q, seqlen_q_pad, D], zeroed.
  const int64_t n_delta = p.batch * p.heads_q * k.seqlen_q_pad;
  const int64_t n_accum = n_delta * D;
  void* ws = nullptr;
  FA_CUDA_CHECK(cudaMallocAsync(&ws, static_cast<size_t>(n_delta + n_accum) * sizeof(float), a.stream));
  k.delta = static_cast<float*>(ws);
  k.dq_accum = k.delta + n_delta;
  m.delta = k.delta;
  m.dq_accum = k.dq_accum;
  st = cuda_status(cudaMemsetAsync(k.dq_accum, 0, static_cast<size_t>(n_accum) * sizeof(float), a.stream),
                   "cudaMemsetAsync(dq_accum)");
  if (st.ok()) st = fa2bwd::launch_preprocess<T>(k, a.stream);
  if (st.ok()) st = launch_hopper_bwd<D, kBF16>(a);
  if (st.ok()) st = fa2bwd::launch_convert_dq<T>(k, a.stream);
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
  if (p.deterministic)
    return Status::Unsupported("hopper backward: no deterministic mode (dQ is added with atomics); fa2 has one");
  if (p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.block_table)
    return Status::Unsupported("hopper backward: varlen and KV-cache inputs are not supported");
  if (p.head_dim_v != 0 && p.head_dim_v != p.head_dim)
    return Status::Unsupported("hopper backward: head_dim_v must equal head_dim");
  if (p.batch > 65535 || p.heads_kv > 65535)
    return Status::Unsupported("hopper backward: batch and heads_kv are grid dimensions: at most 65535 each");
  return p.dtype == DType::kBFloat16 ? sm90::bwd::run_dtype<__nv_bfloat16>(p) : sm90::bwd::run_dtype<__half>(p);
}

}}  // namespace flashattn::cuda
