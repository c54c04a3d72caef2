// The parts of the FA2 backward that other backward main kernels reuse: the
// kernel params of a BwdParams, and the first and last kernels (bwd_preprocess,
// bwd_convert_dq). The FA2 backward (fa2bwd::launch) and the Hopper backward
// (sm90/hopper_bwd.cu) run preprocess -> their main kernel -> convert; a packed
// (varlen) q picks the kVarlen instantiations. The template kernels are
// instantiated here, for every arch of the build, so that no file compiled for
// fewer archs (sm90/ is 90a only) instantiates them too.
#include "common/mask.h"
#include "cuda/fa2/fa2_bwd_kernel.cuh"

namespace flashattn {
namespace cuda {
namespace fa2bwd {

KernelParams make_params(const BwdParams& p, int64_t head_dim_pad) {
  const Mask mask = make_mask(p);
  KernelParams k{};
  k.q = p.q;
  k.k = p.k;
  k.v = p.v;
  k.o = p.o;
  k.dout = p.dout;
  k.dq = p.dq;
  k.dk = p.dk;
  k.dv = p.dv;
  k.lse = p.lse;
  k.q_batch_stride = p.q_batch_stride, k.q_row_stride = p.q_row_stride, k.q_head_stride = p.q_head_stride;
  k.k_batch_stride = p.k_batch_stride, k.k_row_stride = p.k_row_stride, k.k_head_stride = p.k_head_stride;
  k.v_batch_stride = p.v_batch_stride, k.v_row_stride = p.v_row_stride, k.v_head_stride = p.v_head_stride;
  k.o_batch_stride = p.o_batch_stride, k.o_row_stride = p.o_row_stride, k.o_head_stride = p.o_head_stride;
  k.do_batch_stride = p.dout_batch_stride, k.do_row_stride = p.dout_row_stride;
  k.do_head_stride = p.dout_head_stride;
  k.dq_batch_stride = p.dq_batch_stride, k.dq_row_stride = p.dq_row_stride, k.dq_head_stride = p.dq_head_stride;
  k.dk_batch_stride = p.dk_batch_stride, k.dk_row_stride = p.dk_row_stride, k.dk_head_stride = p.dk_head_stride;
  k.dv_batch_stride = p.dv_batch_stride, k.dv_row_stride = p.dv_row_stride, k.dv_head_stride = p.dv_head_stride;
  k.batch = p.batch;
  k.seqlen_q = p.seqlen_q;
  k.seqlen_k = p.seqlen_k;
  k.heads_q = p.heads_q;
  k.heads_kv = p.heads_kv;
  k.group = p.heads_q / p.heads_kv;
  k.head_dim = p.head_dim;
  k.head_dim_pad = head_dim_pad;
  k.num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  k.seqlen_q_pad = k.num_m_blocks * kBlockM;
  k.window_left = mask.window_left;
  k.window_right = mask.window_right;
  k.scale = effective_scale(p);
  k.scale_log2 = k.scale * kLog2e;
  k.softcap = p.softcap;
  k.softcap_in = p.softcap > 0.0f ? k.scale / p.softcap : 0.0f;
  k.softcap_log2 = p.softcap * kLog2e;
  k.deterministic = p.deterministic;
  k.cu_seqlens_q = p.cu_seqlens_q;
  k.cu_seqlens_k = p.cu_seqlens_k;
  k.seqused_k = p.seqused_k;
  return k;
}

template <typename T>
Status launch_preprocess(const KernelParams& p, cudaStream_t stream) {
  const int rows_per_block = 256 / 32;
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q_pad;
  const unsigned blocks = (unsigned)((rows + rows_per_block - 1) / rows_per_block);
  if (p.cu_seqlens_q)
    bwd_preprocess<T, true><<<blocks, 256, 0, stream>>>(p);
  else
    bwd_preprocess<T, false><<<blocks, 256, 0, stream>>>(p);
  FA_CUDA_CHECK_LAUNCH("bwd preprocess");
  return Status::Ok();
}

template <typename T>
Status launch_convert_dq(const KernelParams& p, cudaStream_t stream) {
  const int64_t chunks = p.batch * p.seqlen_q * p.heads_q * (p.head_dim / 8);
  const unsigned blocks = (unsigned)((chunks + 255) / 256);
  if (p.cu_seqlens_q)
    bwd_convert_dq<T, true><<<blocks, 256, 0, stream>>>(p);
  else
    bwd_convert_dq<T, false><<<blocks, 256, 0, stream>>>(p);
  FA_CUDA_CHECK_LAUNCH("bwd convert dq");
  return Status::Ok();
}

template Status launch_preprocess<__half>(const KernelParams&, cudaStream_t);
template Status launch_preprocess<__nv_bfloat16>(const KernelParams&, cudaStream_t);
template Status launch_convert_dq<__half>(const KernelParams&, cudaStream_t);
template Status launch_convert_dq<__nv_bfloat16>(const KernelParams&, cudaStream_t);

}  // namespace fa2bwd
}  // namespace cuda
}  // namespace flashattn
