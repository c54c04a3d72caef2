// Small CUDA helpers shared by every kernel file: error checking into Status,
// 16-bit type traits, device selection.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {
namespace cuda {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return Status::Cuda(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// Return a Status from the enclosing function when a CUDA call fails.
#define FA_CUDA_CHECK(expr)                                                     \
  do {                                                                          \
    cudaError_t _err = (expr);                                                  \
    if (_err != cudaSuccess) return ::flashattn::cuda::cuda_status(_err, #expr); \
  } while (0)

// After a launch: configuration errors show up here.
#define FA_CUDA_CHECK_LAUNCH(name) FA_CUDA_CHECK(cudaGetLastError())

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// dtype -> CUDA element type.
template <DType D> struct ElementOf;
template <> struct ElementOf<DType::kFloat32> { using type = float; };
template <> struct ElementOf<DType::kFloat16> { using type = __half; };
template <> struct ElementOf<DType::kBFloat16> { using type = __nv_bfloat16; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Makes params.device_index current for the duration of a call.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device_index) {
    cudaGetDevice(&previous_);
    if (device_index >= 0 && device_index != previous_) {
      cudaSetDevice(device_index);
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Runs a setup call once per device. cudaFuncSetAttribute (the dynamic shared
// memory opt-in) applies to the current device's copy of a kernel only, so a
// process-wide "done" flag would leave every other GPU without it and their
// launches would fail (a multi-GPU ring then hangs in the peer's receive).
// One static instance per kernel: `static PerDeviceOnce once; FA_CUDA_CHECK(once.run(...));`
class PerDeviceOnce {
 public:
  template <class F>
  cudaError_t run(F&& setup) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    if (device < 0 || device >= kMaxDevices) return setup();  // past the table: every call
    if (done_[device].load(std::memory_order_acquire)) return cudaSuccess;
    err = setup();  // two threads may both run it: setting an attribute twice is harmless
    if (err == cudaSuccess) done_[device].store(true, std::memory_order_release);
    return err;
  }

 private:
  static constexpr int kMaxDevices = 64;
  std::atomic<bool> done_[kMaxDevices]{};
};

}  // namespace cuda
}  // namespace flashattn
