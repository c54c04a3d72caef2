// The API boundary: validate once, then hand the request to the CPU or CUDA backend.
#include "cpu/cpu_backend.h"
#include "flashattn/flashattn.h"
#if FLASHATTN_WITH_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace flashattn {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kUnsupported: return "unsupported";
    case StatusCode::kNotCompiled: return "not compiled";
    case StatusCode::kCudaError: return "CUDA error";
    case StatusCode::kInternal: return "internal error";
  }
  return "unknown status";
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown dtype";
}

int64_t dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

const char* device_name(Device device) {
  switch (device) {
    case Device::kCPU: return "CPU";
    case Device::kCUDA: return "CUDA";
  }
  return "unknown device";
}

const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::kAuto: return "auto";
    case Kernel::kReference: return "reference";
    case Kernel::kCpuFlash: return "cpu_flash";
    case Kernel::kNaive: return "naive";
    case Kernel::kFA1: return "fa1";
    case Kernel::kFA2: return "fa2";
    case Kernel::kHopper: return "hopper";
  }
  return "unknown kernel";
}

const char* softmax_variant_name(SoftmaxVariant variant) {
  switch (variant) {
    case SoftmaxVariant::kNaive: return "naive";
    case SoftmaxVariant::kSafe: return "safe";
    case SoftmaxVariant::kOnline: return "online";
  }
  return "unknown variant";
}

const char* version() { return "0.1.0"; }

bool cuda_compiled() { return FLASHATTN_WITH_CUDA != 0; }

int cuda_device_count() {
#if FLASHATTN_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

namespace {
void set_strides(int64_t seqlen, int64_t heads, int64_t dim, int64_t& bs, int64_t& rs, int64_t& hs) {
  hs = dim;
  rs = heads * dim;
  bs = seqlen * heads * dim;
}
}  // namespace

void set_contiguous_strides(FwdParams& p) {
  const int64_t dv = p.head_dim_v ? p.head_dim_v : p.head_dim;
  set_strides(p.seqlen_q, p.heads_q, p.head_dim, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  set_strides(p.seqlen_k, p.heads_kv, p.head_dim, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  set_strides(p.seqlen_k, p.heads_kv, dv, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  set_strides(p.seqlen_q, p.heads_q, dv, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
}

void set_contiguous_strides(BwdParams& p) {
  set_contiguous_strides(static_cast<FwdParams&>(p));
  const int64_t dv = p.head_dim_v ? p.head_dim_v : p.head_dim;
  set_strides(p.seqlen_q, p.heads_q, dv, p.dout_batch_stride, p.dout_row_stride, p.dout_head_stride);
  set_strides(p.seqlen_q, p.heads_q, p.head_dim, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  set_strides(p.seqlen_k, p.heads_kv, p.head_dim, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  set_strides(p.seqlen_k, p.heads_kv, dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
}

namespace {
bool uses_varlen_or_kvcache(const FwdParams& p) {
  return p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.block_table;
}
}  // namespace

Status forward(const FwdParams& p) {
  Status st = validate(p);
  if (!st.ok()) return st;
  if (p.device == Device::kCUDA) {
#if FLASHATTN_WITH_CUDA
    return cuda::forward(p);
#endif
  }
  if (p.kernel == Kernel::kReference) return cpu::reference_forward(p);
  // Varlen / KV-cache requests on the CPU run on the reference path (exact,
  // slow); docs/07-inference.md. kCpuFlash does not read those fields yet.
  if (uses_varlen_or_kvcache(p)) {
    if (p.kernel == Kernel::kCpuFlash)
      return Status::Unsupported("cpu_flash does not support cu_seqlens / seqused_k / block_table yet; "
                                 "use kernel auto or reference (the reference path handles them)");
    return cpu::reference_forward(p);
  }
  return cpu::flash_forward(p);
}

Status backward(const BwdParams& p) {
  Status st = validate(p);
  if (!st.ok()) return st;
  if (p.device == Device::kCUDA) {
#if FLASHATTN_WITH_CUDA
    return cuda::backward(p);
#endif
  }
  if (p.kernel == Kernel::kReference) return cpu::reference_backward(p);
  if (uses_varlen_or_kvcache(p)) {  // as in forward: the reference path
    if (p.kernel == Kernel::kCpuFlash)
      return Status::Unsupported("cpu_flash backward does not support cu_seqlens / seqused_k / block_table yet; "
                                 "use kernel auto or reference");
    return cpu::reference_backward(p);
  }
  return cpu::flash_backward(p);
}

Status softmax(const SoftmaxParams& p) {
  Status st = validate(p);
  if (!st.ok()) return st;
  if (p.device == Device::kCUDA) {
#if FLASHATTN_WITH_CUDA
    return cuda::softmax(p);
#endif
  }
  return cpu::softmax(p);
}

}  // namespace flashattn
