// Every kernel family on every GPU of the machine, the first GPU first. Per-device
// state must not leak between devices: the dynamic shared-memory opt-in
// (cudaFuncSetAttribute) applies to one device's copy of a kernel, and a
// process-wide "already set" flag once made the second GPU's launches fail
// (seen as RingGpu.NcclAllGpus hanging in the full GPU suite on 2 H100s).
// Skips with fewer than 2 GPUs.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>

#include "bwd_test_util.h"
#include "gpu_test_util.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

// Buffers on `dev`, the call made from device 0 with params.device_index = dev
// (the API switches devices for the call), results checked against the oracle.
void forward_on(int dev, const Shape& s, Kernel kernel, const std::string& what) {
  FA_TEST_CUDA(cudaSetDevice(dev));
  Problem pb(s, 17);
  GpuProblem g(pb);
  ASSERT_TRUE(g.ok()) << "cudaMalloc failed on GPU " << dev;
  FA_TEST_CUDA(cudaSetDevice(0));
  FwdParams p = g.fwd_params();
  p.kernel = kernel;
  p.device_index = dev;
  const Status st = forward(p);
  ASSERT_TRUE(st.ok()) << what << " on GPU " << dev << ": " << st.message;
  FA_TEST_CUDA(cudaSetDevice(dev));
  ASSERT_EQ(g.copy_outputs_to_host(pb), cudaSuccess);
  expect_forward_matches_oracle(pb, what + " on GPU " + std::to_string(dev));
}

void backward_on(int dev, const Shape& s, Kernel kernel, const std::string& what) {
  FA_TEST_CUDA(cudaSetDevice(dev));
  Problem pb(s, 23);
  host_forward(pb);
  const Status st = run_gpu_backward(pb, kernel);
  ASSERT_TRUE(st.ok()) << what << " on GPU " << dev << ": " << st.message;
  check_against_oracle(pb, what + " on GPU " + std::to_string(dev));
}

TEST(MultiGpu, EveryKernelOnEveryDevice) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const int n = device_count();
  if (n < 2) GTEST_SKIP() << "needs 2+ GPUs (this machine has " << n << ")";
  Shape prefill;
  prefill.batch = 2, prefill.seqlen_q = 301, prefill.seqlen_k = 333;
  prefill.heads_q = 4, prefill.heads_kv = 2, prefill.head_dim = 128;
  prefill.dtype = DType::kBFloat16;
  Shape decode = prefill;  // Nq = 1 against a long cache: kAuto runs the split-KV decode kernel
  decode.seqlen_q = 1, decode.seqlen_k = 3000, decode.heads_q = 8;
  Shape grad = prefill;
  grad.batch = 1, grad.seqlen_q = grad.seqlen_k = 200, grad.head_dim = 64, grad.causal = true;
  for (int dev = 0; dev < n; ++dev) {
    FA_TEST_CUDA(cudaSetDevice(dev));
    const bool hopper = is_sm90();
    if (hopper) forward_on(dev, prefill, Kernel::kHopper, "hopper fwd");
    forward_on(dev, prefill, Kernel::kFA2, "fa2 fwd");
    forward_on(dev, decode, Kernel::kAuto, "decode");
    backward_on(dev, grad, Kernel::kAuto, hopper ? "hopper bwd (auto)" : "fa2 bwd (auto)");
  }
  FA_TEST_CUDA(cudaSetDevice(0));
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
