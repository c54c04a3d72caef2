// FlashAttention-2 backward: host side. Checks what the kernels can't do, picks
// the instantiated head dim (the smallest compiled one >= head_dim; the extra
// columns are zero-filled in shared memory and never written back), allocates
// the fp32 workspace on the stream and launches (fa2_bwd_kernel.cuh). Varlen
// requests use the same workspace shape: seqlen_q is the longest sequence.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "common/mask.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/fa2/fa2_bwd_launch.h"

namespace flashattn {
namespace cuda {
namespace {

using fa2bwd::KernelParams;
using LaunchFn = Status (*)(const KernelParams&, cudaStream_t);

template <typename T>
LaunchFn pick_launcher(int64_t head_dim, int64_t* padded) {
#define FA2_BWD_TRY(D)                                         \
  if (head_dim <= D) {                                         \
    *padded = D;                                               \
    return &fa2bwd::launch<T, D>;                              \
  }
#if FLASHATTN_HAS_HDIM_64
  FA2_BWD_TRY(64)
#endif
#if FLASHATTN_HAS_HDIM_96
  FA2_BWD_TRY(96)
#endif
#if FLASHATTN_HAS_HDIM_128
  FA2_BWD_TRY(128)
#endif
#if FLASHATTN_HAS_HDIM_192
  FA2_BWD_TRY(192)
#endif
#if FLASHATTN_HAS_HDIM_256
  FA2_BWD_TRY(256)
#endif
#undef FA2_BWD_TRY
  (void)head_dim;
  *padded = 0;
  return nullptr;
}

}  // namespace

Status fa2_backward(const BwdParams& p) {
  if (p.dtype == DType::kFloat32)
    return Status::Unsupported("the fa2 backward runs on tensor cores and needs float16 or bfloat16 inputs; "
                               "float32 is not supported (cast to bf16/fp16, or use the CPU backward)");
  int device = 0, major = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) return Status::Unsupported("the fa2 backward needs an sm_80 or newer GPU (mma.sync bf16/fp16)");
  // Varlen (cu_seqlens_q/k, seqused_k) is read by the kVarlen kernels; a paged
  // cache is not (the backward of a KV cache is rarely wanted: it is inference state).
  if (p.block_table)
    return Status::Unsupported("the fa2 backward does not read block_table (paged KV cache); "
                               "the CPU reference backward handles it");
  if (p.batch > 65535 || p.heads_kv > 65535)
    return Status::Unsupported("the fa2 backward launches batch and heads_kv as grid dimensions: at most 65535 each");

  int64_t head_dim_pad = 0;
  LaunchFn launch = p.dtype == DType::kBFloat16 ? pick_launcher<__nv_bfloat16>(p.head_dim, &head_dim_pad)
                                                : pick_launcher<__half>(p.head_dim, &head_dim_pad);
  if (launch == nullptr)
    return Status::Unsupported("the fa2 backward has no kernel for head_dim " + std::to_string(p.head_dim) +
                               " in this build: add a head dim >= it to FLASHATTN_HEADDIMS (64;96;128;192;256)");

  KernelParams k = fa2bwd::make_params(p, head_dim_pad);

  // Workspace: D, the fp32 dQ accumulator and (deterministic) the per-Q-block semaphores.
  const int64_t split = fa2bwd::bwd_split(static_cast<int>(head_dim_pad));
  const int64_t n_delta = p.batch * p.heads_q * k.seqlen_q_pad;
  const int64_t n_accum = n_delta * head_dim_pad;
  const int64_t n_sem = p.deterministic ? split * p.batch * p.heads_q * k.num_m_blocks : 0;
  const size_t bytes = (size_t)(n_delta + n_accum) * sizeof(float) + (size_t)n_sem * sizeof(int);
  cudaStream_t stream = as_stream(p.stream);
  void* ws = nullptr;
  FA_CUDA_CHECK(cudaMallocAsync(&ws, bytes, stream));
  k.delta = static_cast<float*>(ws);
  k.dq_accum = k.delta + n_delta;
  k.dq_sem = reinterpret_cast<int*>(k.dq_accum + n_accum);
  Status st = cuda_status(cudaMemsetAsync(k.dq_accum, 0, (size_t)n_accum * sizeof(float) + n_sem * sizeof(int),
                                          stream),
                          "cudaMemsetAsync(dq workspace)");
  if (st.ok()) st = launch(k, stream);
  const cudaError_t free_err = cudaFreeAsync(ws, stream);
  if (st.ok()) st = cuda_status(free_err, "cudaFreeAsync(workspace)");
  return st;
}

}  // namespace cuda
}  // namespace flashattn
