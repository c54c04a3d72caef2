// FlashAttention-2 forward entry point: checks what the tensor-core kernel can
// do, resolves the scale / mask / GQA group into Fa2FwdArgs and dispatches to
// the smallest compiled kernel head dim >= the real head dim (the padded
// columns are zero-filled in shared memory and never stored).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>

#include "common/mask.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/fa2/fa2_fwd.h"

namespace flashattn {
namespace cuda {
namespace {

constexpr bool head_dim_compiled(int d) {
  switch (d) {
#if FLASHATTN_HAS_HDIM_64
    case 64: return true;
#endif
#if FLASHATTN_HAS_HDIM_96
    case 96: return true;
#endif
#if FLASHATTN_HAS_HDIM_128
    case 128: return true;
#endif
#if FLASHATTN_HAS_HDIM_192
    case 192: return true;
#endif
#if FLASHATTN_HAS_HDIM_256
    case 256: return true;
#endif
    default: return false;
  }
}

std::string compiled_head_dims() {
  std::string s;
  for (int d : kFa2HeadDims)
    if (head_dim_compiled(d)) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return s.empty() ? "none" : s;
}

template <typename Element>
Status run_head_dim(int kernel_dim, const Fa2FwdArgs& a, cudaStream_t stream) {
  switch (kernel_dim) {
#if FLASHATTN_HAS_HDIM_64
    case 64: return run_fa2_fwd<64, Element>(a, stream);
#endif
#if FLASHATTN_HAS_HDIM_96
    case 96: return run_fa2_fwd<96, Element>(a, stream);
#endif
#if FLASHATTN_HAS_HDIM_128
    case 128: return run_fa2_fwd<128, Element>(a, stream);
#endif
#if FLASHATTN_HAS_HDIM_192
    case 192: return run_fa2_fwd<192, Element>(a, stream);
#endif
#if FLASHATTN_HAS_HDIM_256
    case 256: return run_fa2_fwd<256, Element>(a, stream);
#endif
    default: return Status::Internal("fa2_forward: no kernel for head dim " + std::to_string(kernel_dim));
  }
}

}  // namespace

Status fa2_forward(const FwdParams& p) {
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::Unsupported(std::string("fa2 runs on tensor cores in float16/bfloat16 only (got ") +
                               dtype_name(p.dtype) + "); use kernel fa1 or auto for float32");
  int device = 0, major = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) return Status::Unsupported("fa2 needs an sm_80 or newer GPU (mma.sync m16n8k16, cp.async)");
  if (p.block_table) return Status::Unsupported("fa2 forward does not support a paged KV cache (block_table)");
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr))
    return Status::Invalid("fa2 forward: cu_seqlens_q and cu_seqlens_k must be set together");
  if (effective_head_dim_v(p) != p.head_dim)
    return Status::Unsupported("fa2 forward needs head_dim_v == head_dim");
  const float scale = effective_scale(p);
  if (!(scale > 0.0f)) return Status::Unsupported("fa2 forward needs softmax_scale > 0");
  if (p.heads_q > 65535 || p.batch > 65535)
    return Status::Unsupported("fa2 forward launches one CTA row per head and batch: heads_q and batch must be "
                               "<= 65535");

  int kernel_dim = 0;
  for (int d : kFa2HeadDims)
    if (d >= p.head_dim && head_dim_compiled(d)) {
      kernel_dim = d;
      break;
    }
  if (kernel_dim == 0)
    return Status::Unsupported("fa2 forward: no compiled kernel for head_dim " + std::to_string(p.head_dim) +
                               " (compiled head dims: " + compiled_head_dims() +
                               "; configure with -DFLASHATTN_HEADDIMS)");

  Fa2FwdArgs a;
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.o = p.o;
  a.lse = p.lse;
  a.q_batch_stride = p.q_batch_stride;
  a.q_row_stride = p.q_row_stride;
  a.q_head_stride = p.q_head_stride;
  a.k_batch_stride = p.k_batch_stride;
  a.k_row_stride = p.k_row_stride;
  a.k_head_stride = p.k_head_stride;
  a.v_batch_stride = p.v_batch_stride;
  a.v_row_stride = p.v_row_stride;
  a.v_head_stride = p.v_head_stride;
  a.o_batch_stride = p.o_batch_stride;
  a.o_row_stride = p.o_row_stride;
  a.o_head_stride = p.o_head_stride;
  a.cu_seqlens_q = p.cu_seqlens_q;  // device arrays, read by the kernel
  a.cu_seqlens_k = p.cu_seqlens_k;
  a.seqused_k = p.seqused_k;
  a.batch = static_cast<int>(p.batch);
  a.seqlen_q = static_cast<int>(p.seqlen_q);
  a.seqlen_k = static_cast<int>(p.seqlen_k);
  a.heads_q = static_cast<int>(p.heads_q);
  a.group = static_cast<int>(p.heads_q / p.heads_kv);
  a.head_dim = static_cast<int>(p.head_dim);
  constexpr float kLog2e = 1.4426950408889634f;
  if (p.softcap > 0.0f) {
    a.softcap_pre = scale / p.softcap;
    a.scale_log2 = p.softcap * kLog2e;
  } else {
    a.softcap_pre = 0.0f;
    a.scale_log2 = scale * kLog2e;
  }
  // Mask edges that lie outside the problem are no edges (-1): the kernel then
  // neither skips nor masks on that side.
  const Mask m = make_mask(p);
  a.window_left = m.window_left >= p.seqlen_k ? -1 : m.window_left;
  a.window_right = m.window_right >= p.seqlen_q ? -1 : m.window_right;

  cudaStream_t stream = as_stream(p.stream);
  const Status fill = fill_varlen_lse_padding(p, stream);
  if (!fill.ok()) return fill;
  return p.dtype == DType::kFloat16 ? run_head_dim<__half>(kernel_dim, a, stream)
                                    : run_head_dim<__nv_bfloat16>(kernel_dim, a, stream);
}

}  // namespace cuda
}  // namespace flashattn
