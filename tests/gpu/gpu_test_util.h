// GPU test helpers: RAII device buffers and a testing::Problem mirrored on the
// device. Plain C++ + the CUDA runtime API (no kernels), header-only.
//
//   testing::Problem prob(shape, seed);        // host tensors, poisoned outputs
//   testing::GpuProblem g(prob);               // copies q, k, v, dout; poisons o, lse, dq, dk, dv
//   FwdParams p = g.fwd_params();              // device pointers, device = kCUDA
//   p.kernel = Kernel::kFA1;
//   ASSERT_TRUE(forward(p).ok());
//   g.copy_outputs_to_host(prob);               // prob.o, prob.lse (and dq/dk/dv) now hold the results
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

namespace flashattn {
namespace testing {

// True on an sm_90 GPU (the Hopper kernels' tests skip elsewhere).
inline bool is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

// Aborts the current test (ASSERT-style) when a CUDA runtime call fails.
#define FA_TEST_CUDA(expr)                                                                 \
  do {                                                                                     \
    cudaError_t _e = (expr);                                                               \
    ASSERT_EQ(_e, cudaSuccess) << #expr << ": " << cudaGetErrorName(_e) << " " << cudaGetErrorString(_e); \
  } while (0)

// One cudaMalloc'd allocation, freed on destruction. Movable, not copyable.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { allocate(bytes); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Returns false (and holds nothing) when cudaMalloc fails.
  bool allocate(size_t bytes) {
    release();
    if (bytes == 0) return true;
    if (cudaMalloc(&ptr_, bytes) != cudaSuccess) {
      cudaGetLastError();
      ptr_ = nullptr;
      return false;
    }
    bytes_ = bytes;
    return true;
  }
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

  cudaError_t upload(const void* host, size_t bytes) { return cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice); }
  cudaError_t download(void* host, size_t bytes) const {
    return cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost);
  }
  // All bytes 0xff: NaN for fp32, fp16 and bf16 alike (catches unwritten outputs).
  cudaError_t poison() { return cudaMemset(ptr_, 0xff, bytes_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A HostTensor's bytes on the device.
inline DeviceBuffer to_device(const HostTensor& t) {
  DeviceBuffer b(t.bytes.size());
  if (b.get()) b.upload(t.data(), t.bytes.size());
  return b;
}
inline cudaError_t to_host(const DeviceBuffer& b, HostTensor& t) { return b.download(t.data(), t.bytes.size()); }

// The tensors of a testing::Problem on the device (contiguous, same layout).
// Inputs are copied, outputs are poisoned with NaN.
struct GpuProblem {
  DeviceBuffer q, k, v, o, lse, dout, dq, dk, dv;
  BwdParams params;  // the problem's params with device pointers and device = kCUDA

  explicit GpuProblem(const Problem& prob, bool with_backward = false) {
    q = to_device(prob.q);
    k = to_device(prob.k);
    v = to_device(prob.v);
    o.allocate(prob.o.bytes.size());
    lse.allocate(prob.lse.size() * sizeof(float));
    o.poison();
    lse.poison();
    params = prob.params;
    params.q = q.get();
    params.k = k.get();
    params.v = v.get();
    params.o = o.get();
    params.lse = lse.as<float>();
    params.dout = params.dq = params.dk = params.dv = nullptr;
    if (with_backward) {
      dout = to_device(prob.dout);
      dq.allocate(prob.dq.bytes.size());
      dk.allocate(prob.dk.bytes.size());
      dv.allocate(prob.dv.bytes.size());
      dq.poison();
      dk.poison();
      dv.poison();
      params.dout = dout.get();
      params.dq = dq.get();
      params.dk = dk.get();
      params.dv = dv.get();
    }
    params.device = Device::kCUDA;
    params.device_index = -1;
    params.stream = nullptr;
  }
  // Did every allocation succeed?
  bool ok() const { return q.get() && k.get() && v.get() && o.get() && lse.get(); }

  FwdParams fwd_params() const { return static_cast<const FwdParams&>(params); }

  // Copies o and lse (and dq/dk/dv when allocated) back into the host problem.
  cudaError_t copy_outputs_to_host(Problem& prob) const {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return e;
    if ((e = to_host(o, prob.o)) != cudaSuccess) return e;
    if ((e = lse.download(prob.lse.data(), prob.lse.size() * sizeof(float))) != cudaSuccess) return e;
    if (dq.get()) {
      if ((e = to_host(dq, prob.dq)) != cudaSuccess) return e;
      if ((e = to_host(dk, prob.dk)) != cudaSuccess) return e;
      if ((e = to_host(dv, prob.dv)) != cudaSuccess) return e;
    }
    return cudaSuccess;
  }
};

// O and LSE of a host problem (copied back from the GPU) against the float64
// oracle with the tolerance rule: at most 2x the naive input-precision error.
inline void expect_forward_matches_oracle(const Problem& pb, const std::string& what) {
  const auto ref = cpu::reference_forward_f64(pb.params);
  const auto low = lowprec_forward(pb.params);
  const double tol = 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(pb.shape.dtype);
  EXPECT_LE(max_abs_diff(ref.out, pb.o), tol) << what << " O";
  const double tol_lse = 2 * max_abs_diff_lse(ref.lse, low.lse) + 1e-3;
  EXPECT_LE(max_abs_diff_lse(ref.lse, pb.lse), tol_lse) << what << " LSE";
}

}  // namespace testing
}  // namespace flashattn
