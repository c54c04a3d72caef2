// CUDA side of the API boundary: device checks, then one switch that picks the
// rung for Kernel::kAuto. Each rung lives in its own file.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace flashattn {
namespace cuda {
namespace {

// Every pointer must be device memory of the device we run on (a host pointer
// would crash the kernel; memory of another GPU would be silently slow or fault).
Status check_device_pointer(const char* name, const void* ptr, int device) {
  if (ptr == nullptr) return Status::Ok();
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    return Status::Invalid(std::string(name) + " is not a CUDA pointer, but device is CUDA");
  }
  if (attr.type == cudaMemoryTypeHost || attr.type == cudaMemoryTypeUnregistered)
    return Status::Invalid(std::string(name) + " points to host memory, but device is CUDA: pass device memory");
  if (attr.type == cudaMemoryTypeDevice && attr.device != device)
    return Status::Invalid(std::string(name) + " lives on CUDA device " + std::to_string(attr.device) +
                           " but the call runs on device " + std::to_string(device));
  return Status::Ok();
}

Status check_device(int device_index, int* resolved) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return Status::Cuda("device is CUDA but no CUDA GPU is available");
  }
  if (device_index >= count)
    return Status::Invalid("device_index " + std::to_string(device_index) + " but only " + std::to_string(count) +
                           " CUDA device(s) exist");
  if (device_index < 0) FA_CUDA_CHECK(cudaGetDevice(&device_index));
  *resolved = device_index;
  return Status::Ok();
}

Status check_fwd_pointers(const FwdParams& p, int device) {
  for (auto [name, ptr] : {std::pair<const char*, const void*>{"q", p.q}, {"k", p.k}, {"v", p.v}, {"o", p.o},
                           {"lse", p.lse}}) {
    Status st = check_device_pointer(name, ptr, device);
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

int compute_capability(int device) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major * 10 + minor;
}

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

namespace {
__global__ void fill_neg_inf(float* x, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = -INFINITY;
}
}  // namespace

Status fill_varlen_lse_padding(const FwdParams& p, void* stream) {
  if (p.cu_seqlens_q == nullptr || p.lse == nullptr) return Status::Ok();
  const int64_t n = p.batch * p.heads_q * p.seqlen_q;
  if (n == 0) return Status::Ok();
  const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 1024));
  fill_neg_inf<<<blocks, 256, 0, as_stream(stream)>>>(p.lse, n);
  FA_CUDA_CHECK_LAUNCH("varlen lse fill");
  return Status::Ok();
}

bool hopper_available(int device_index) {
#if FLASHATTN_HAS_SM90
  return compute_capability(device_index) == 90;
#else
  (void)device_index;
  return false;
#endif
}

Status forward(const FwdParams& p) {
  int device = 0;
  Status st = check_device(p.device_index, &device);
  if (!st.ok()) return st;
  st = check_fwd_pointers(p, device);
  if (!st.ok()) return st;
  DeviceGuard guard(device);
  // Varlen / KV cache / split-KV (docs/07-inference.md): only the decode kernel
  // reads cu_seqlens, seqused_k and block_table, so such requests go there (kAuto)
  // or are refused (a pinned rung). num_splits alone is a hint: a dense request
  // the decode kernel can't take falls through to the dense rungs.
  const bool kv_layout = p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.block_table;
  // Dense decode-shaped requests (few query rows per kv head against a longer
  // cache) are memory-bound: the split-KV kernel reads K/V once at full
  // bandwidth, where the prefill rungs would idle most of their 64-128-row tiles.
  const bool decode_shaped = p.kernel == Kernel::kAuto && p.seqlen_q * (p.heads_q / p.heads_kv) <= 64 &&
                             p.seqlen_k >= 4 * p.seqlen_q;
  if (kv_layout || p.num_splits > 0 || decode_shaped) {
    for (auto [name, ptr] : {std::pair<const char*, const void*>{"cu_seqlens_q", p.cu_seqlens_q},
                             {"cu_seqlens_k", p.cu_seqlens_k}, {"seqused_k", p.seqused_k},
                             {"block_table", p.block_table}}) {
      st = check_device_pointer(name, ptr, device);
      if (!st.ok()) return st;
    }
    // FA2 and the Hopper kernel read cu_seqlens_q/k and seqused_k themselves (not
    // block_table): the varlen prefill path when the decode kernel refuses (too
    // many query rows). Hopper also needs total_q / total_k (params.h).
    const bool fa2_reads_layout = !p.block_table && compute_capability(device) >= 80;
    if (kv_layout && p.kernel == Kernel::kFA2 && fa2_reads_layout) return fa2_forward(p);
#if FLASHATTN_HAS_SM90
    if (kv_layout && p.kernel == Kernel::kHopper && hopper_available(device)) return hopper_forward(p);
#endif
    if (kv_layout && p.kernel != Kernel::kAuto)
      return Status::Unsupported(std::string("kernel ") + kernel_name(p.kernel) +
                                 " does not read cu_seqlens / seqused_k / block_table; use kernel auto "
                                 "(the split-KV decode kernel, or hopper / fa2 for varlen prefill without pages)");
    if (p.kernel == Kernel::kAuto) {
      st = decode_forward(p);
      if (kv_layout && st.code == StatusCode::kUnsupported && fa2_reads_layout && p.dtype != DType::kFloat32) {
#if FLASHATTN_HAS_SM90
        if (hopper_available(device)) {
          st = hopper_forward(p);
          if (st.code != StatusCode::kUnsupported) return st;
        }
#endif
        return fa2_forward(p);
      }
      if (kv_layout || st.code != StatusCode::kUnsupported) return st;
    }
  }
  switch (p.kernel) {
    case Kernel::kNaive: return naive_forward(p);
    case Kernel::kFA1: return fa1_forward(p);
    case Kernel::kFA2: return fa2_forward(p);
    case Kernel::kHopper:
      if (!hopper_available(device))
        return Status::Unsupported("the hopper kernel needs an sm_90 GPU and a build with 90a in FLASHATTN_CUDA_ARCHS");
#if FLASHATTN_HAS_SM90
      return hopper_forward(p);
#endif
    default: break;
  }
  // kAuto: the Hopper kernel where it runs and supports the request, else FA2.
  // Short causal problems go to FA2 first: measured on an H100 (docs/results.md,
  // 2026-11-25) FA2 beat the Hopper kernel for causal N <= 1024 at every head dim
  // (e.g. N=512 d128: 201 vs 170 TFLOPS) and lost from N = 2048 on.
  const bool short_causal = (p.causal || p.window_right == 0) && p.seqlen_q <= 1024;
  if (short_causal && p.dtype != DType::kFloat32 && compute_capability(device) >= 80) {
    st = fa2_forward(p);
    if (st.code != StatusCode::kUnsupported) return st;
  }
#if FLASHATTN_HAS_SM90
  if (p.dtype != DType::kFloat32 && hopper_available(device)) {
    st = hopper_forward(p);
    if (st.code != StatusCode::kUnsupported) return st;
  }
#endif
  if (p.dtype != DType::kFloat32 && compute_capability(device) >= 80) {
    st = fa2_forward(p);
    if (st.code != StatusCode::kUnsupported) return st;
  }
  // fp32, or a shape the tensor-core rungs refuse: the CUDA-core rung.
  return fa1_forward(p);
}

Status backward(const BwdParams& p) {
  int device = 0;
  Status st = check_device(p.device_index, &device);
  if (!st.ok()) return st;
  st = check_fwd_pointers(p, device);
  if (!st.ok()) return st;
  for (auto [name, ptr] : {std::pair<const char*, const void*>{"dout", p.dout}, {"dq", p.dq}, {"dk", p.dk},
                           {"dv", p.dv}}) {
    st = check_device_pointer(name, ptr, device);
    if (!st.ok()) return st;
  }
  DeviceGuard guard(device);
  // Varlen (cu_seqlens_q/k, seqused_k): the fa2 backward reads them; the Hopper
  // backward refuses them (kAuto then runs fa2). Paged KV (block_table): none.
  for (auto [name, ptr] : {std::pair<const char*, const void*>{"cu_seqlens_q", p.cu_seqlens_q},
                           {"cu_seqlens_k", p.cu_seqlens_k}, {"seqused_k", p.seqused_k}}) {
    st = check_device_pointer(name, ptr, device);
    if (!st.ok()) return st;
  }
  if (p.block_table)
    return Status::Unsupported("no CUDA backward for a paged KV cache (block_table); the CPU reference backward "
                               "handles it");
  switch (p.kernel) {
    case Kernel::kFA2:
      return fa2_backward(p);
    case Kernel::kHopper:
#if FLASHATTN_HAS_SM90
      if (hopper_available(device)) return hopper_backward(p);
#endif
      return Status::Unsupported("the hopper kernel needs an sm_90 GPU and a build with 90a in FLASHATTN_CUDA_ARCHS");
    case Kernel::kAuto:
      // The Hopper backward where it runs and supports the request (head dim
      // <= 128, fp16/bf16, dense: hopper_bwd.cu), else FA2.
#if FLASHATTN_HAS_SM90
      if (p.dtype != DType::kFloat32 && hopper_available(device)) {
        const Status hst = hopper_backward(p);
        if (hst.code != StatusCode::kUnsupported) return hst;
      }
#endif
      return fa2_backward(p);
    default:
      return Status::Unsupported(std::string("no CUDA backward for kernel ") + kernel_name(p.kernel) +
                                 "; use auto, fa2 or hopper");
  }
}

Status softmax(const SoftmaxParams& p) {
  int device = 0;
  Status st = check_device(p.device_index, &device);
  if (!st.ok()) return st;
  st = check_device_pointer("x", p.x, device);
  if (!st.ok()) return st;
  st = check_device_pointer("y", p.y, device);
  if (!st.ok()) return st;
  DeviceGuard guard(device);
  return softmax_forward(p);
}

}  // namespace cuda
}  // namespace flashattn
