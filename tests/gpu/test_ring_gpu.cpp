// Ring attention on one GPU: W threads share the GPU, one rank each, with the
// thread transport (tests/common/ring_case.cpp) — the CUDA merge/accumulate
// path and the kernels' LSE, checked against single-device attention. With
// NCCL compiled in, a 1-rank NCCL ring runs too (the multi-GPU runs need a
// multi-GPU machine: issue 7).
#include "flashattn/ring.h"
#include "ring_case.h"
#if FLASHATTN_WITH_NCCL
#include <nccl.h>
#endif

namespace flashattn {
namespace testing {
namespace {

class RingGpu : public ::testing::TestWithParam<RingCase> {};
TEST_P(RingGpu, MatchesSingleDevice) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  check_ring_case(GetParam(), Device::kCUDA);
}

INSTANTIATE_TEST_SUITE_P(Ring, RingGpu,
                         ::testing::Values(RingCase{1, false, true, 4, 2, DType::kBFloat16},
                                           RingCase{2, true, true, 8, 2, DType::kBFloat16},
                                           RingCase{3, true, true, 4, 1, DType::kFloat16},
                                           RingCase{4, false, false, 4, 4, DType::kBFloat16}),
                         [](const auto& info) { return case_name(info.param); });

// One rank per GPU over NCCL, on every GPU of the machine (needs 2+ GPUs: issue 7).
TEST(RingGpu, NcclAllGpus) {
  FLASHATTN_SKIP_WITHOUT_GPU();
#if FLASHATTN_WITH_NCCL
  const int gpus = cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "needs 2+ GPUs (this machine has " << gpus << ")";
  for (bool causal : {false, true}) check_ring_case(RingCase{gpus, true, causal, 8, 2, DType::kBFloat16}, Device::kCUDA, gpus);
#else
  GTEST_SKIP() << "built without NCCL";
#endif
}

TEST(RingGpu, NcclOneRank) {
  FLASHATTN_SKIP_WITHOUT_GPU();
#if FLASHATTN_WITH_NCCL
  ncclComm_t comm;
  int dev = 0;
  ASSERT_EQ(ncclCommInitAll(&comm, 1, &dev), ncclSuccess);
  auto transport = make_nccl_ring(comm);
  ASSERT_NE(transport, nullptr);
  EXPECT_EQ(transport->world_size(), 1);
  Shape s;
  s.seqlen_q = s.seqlen_k = 64;
  s.heads_q = 4;
  s.heads_kv = 2;
  s.head_dim = 64;
  s.causal = true;
  s.dtype = DType::kBFloat16;
  Problem pb(s, 7);
  // One rank: the ring is ordinary attention (O, LSE) through NCCL self-exchange.
  void *q, *k, *v, *o;
  float* lse;
  cudaMalloc(&q, pb.q.bytes.size());
  cudaMalloc(&k, pb.k.bytes.size());
  cudaMalloc(&v, pb.v.bytes.size());
  cudaMalloc(&o, pb.o.bytes.size());
  cudaMalloc(&lse, pb.lse.size() * 4);
  cudaMemcpy(q, pb.q.data(), pb.q.bytes.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(k, pb.k.data(), pb.k.bytes.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(v, pb.v.data(), pb.v.bytes.size(), cudaMemcpyHostToDevice);
  FwdParams p = pb.params;
  p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse;
  p.device = Device::kCUDA;
  Status st = ring_forward(p, *transport, /*zigzag=*/true);
  ASSERT_TRUE(st.ok()) << st.message;
  cudaMemcpy(pb.o.data(), o, pb.o.bytes.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(pb.lse.data(), lse, pb.lse.size() * 4, cudaMemcpyDeviceToHost);
  auto ref = cpu::reference_forward_f64(pb.params);
  auto low = lowprec_forward(pb.params);
  EXPECT_LE(max_abs_diff(ref.out, pb.o), 3 * max_abs_diff(ref.out, low.out) + tolerance_floor(s.dtype));
  for (void* ptr : {q, k, v, o}) cudaFree(ptr);
  cudaFree(lse);
  ncclCommDestroy(comm);
#else
  GTEST_SKIP() << "built without NCCL";
#endif
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
