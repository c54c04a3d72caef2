// Shared by the GPU backward tests (test_bwd_gpu.cpp: FA2, test_hopper_bwd_gpu.cpp:
// Hopper): O/LSE from the oracle, one backward call, the tolerance check, and the
// strided (packed-QKV view) case.
//
// Tolerance: err(kernel) <= 2 * err(lowprec) + floor, floor = tolerance_floor(dtype)
// * max(1, sqrt(max(seqlen_q, seqlen_k) / 64)); test_bwd_gpu.cpp says why the sqrt.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "test_util.h"

namespace flashattn {
namespace testing {

inline double bwd_floor(const Shape& s) {
  const double n = static_cast<double>(std::max(s.seqlen_q, s.seqlen_k));
  return tolerance_floor(s.dtype) * std::max(1.0, std::sqrt(n / 64.0));
}

// Fills o and lse of the host problem with the oracle's forward (rounded to the dtype).
inline void host_forward(Problem& pb) {
  FwdParams f = pb.params;
  f.kernel = Kernel::kReference;
  f.device = Device::kCPU;
  Status st = forward(f);
  ASSERT_TRUE(st.ok()) << st.message;
}

// Runs the GPU backward with `kernel` on a problem whose o/lse are filled and
// copies dq/dk/dv back. Returns the status (outputs copied only when ok).
inline Status run_gpu_backward(Problem& pb, Kernel kernel, bool deterministic = false) {
  GpuProblem g(pb, /*with_backward=*/true);
  EXPECT_TRUE(g.ok());
  EXPECT_EQ(g.o.upload(pb.o.data(), pb.o.bytes.size()), cudaSuccess);
  EXPECT_EQ(g.lse.upload(pb.lse.data(), pb.lse.size() * sizeof(float)), cudaSuccess);
  BwdParams p = g.params;
  p.kernel = kernel;
  p.deterministic = deterministic;
  const Status st = backward(p);
  if (st.ok()) EXPECT_EQ(g.copy_outputs_to_host(pb), cudaSuccess);
  return st;
}

struct Oracle {
  cpu::RefBackward ref;
  LowPrecBackward low;
};
inline Oracle oracle(const Problem& pb) {
  return {cpu::reference_backward_f64(pb.params), lowprec_backward(pb.params)};
}

// dq, dk, dv of pb against the oracle with the tolerance rule, and one line per
// case: how much margin the rule leaves (kernel err / bound).
inline void check_against_oracle(const Problem& pb, const std::string& what, const Oracle& o) {
  const auto& ref = o.ref;
  const auto& low = o.low;
  const double floor = bwd_floor(pb.shape);
  const double e_dq = max_abs_diff(ref.dq, pb.dq), e_dk = max_abs_diff(ref.dk, pb.dk),
               e_dv = max_abs_diff(ref.dv, pb.dv);
  const double l_dq = max_abs_diff(ref.dq, low.dq), l_dk = max_abs_diff(ref.dk, low.dk),
               l_dv = max_abs_diff(ref.dv, low.dv);
  EXPECT_LE(e_dq, 2 * l_dq + floor) << what << " dq (lowprec " << l_dq << ")";
  EXPECT_LE(e_dk, 2 * l_dk + floor) << what << " dk (lowprec " << l_dk << ")";
  EXPECT_LE(e_dv, 2 * l_dv + floor) << what << " dv (lowprec " << l_dv << ")";
  printf("  %-60s dq %.2e/%.2e dk %.2e/%.2e dv %.2e/%.2e\n", what.c_str(), e_dq, 2 * l_dq + floor, e_dk,
         2 * l_dk + floor, e_dv, 2 * l_dv + floor);
}
inline void check_against_oracle(const Problem& pb, const std::string& what) {
  check_against_oracle(pb, what, oracle(pb));
}

// Views: q, k, v (and dq, dk, dv) as slices of packed [b, s, 3, h, d] buffers with
// an extra 8-element gap per row, dout with a padded batch stride (fp16, causal,
// 2 x 150 rows, 3 heads). Runs `kernel`; when it answers ok, checks the gradients
// against the oracle and that the row gaps were never written (still the 0xff
// poison). Returns the backward's status, so the caller can skip on a refusal.
inline Status strided_backward_case(Kernel kernel, int64_t head_dim) {
  Shape s;
  s.batch = 2;
  s.seqlen_q = s.seqlen_k = 150;
  s.heads_q = s.heads_kv = 3;
  s.head_dim = head_dim;
  s.causal = true;
  s.dtype = DType::kFloat16;
  Problem pb(s, 555);
  host_forward(pb);
  const int64_t H = s.heads_q, D = s.head_dim, S = s.seqlen_q, B = s.batch;
  const int64_t row = 3 * H * D + 8, bstride = S * row + 16;
  const int64_t esz = dtype_size(s.dtype);
  // Host packed buffers: slot 0 = q, 1 = k, 2 = v.
  std::vector<uint8_t> qkv(static_cast<size_t>(B * bstride * esz), 0);
  const HostTensor* src[3] = {&pb.q, &pb.k, &pb.v};
  for (int t = 0; t < 3; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t h = 0; h < H; ++h)
          std::memcpy(&qkv[(b * bstride + i * row + t * H * D + h * D) * esz],
                      src[t]->bytes.data() + ((b * S + i) * H + h) * D * esz, D * esz);
  const int64_t do_bstride = S * H * D + 64;
  std::vector<uint8_t> dout(static_cast<size_t>(B * do_bstride * esz), 0);
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(&dout[b * do_bstride * esz], pb.dout.bytes.data() + b * S * H * D * esz, S * H * D * esz);

  DeviceBuffer d_qkv(qkv.size()), d_dqkv(qkv.size()), d_dout(dout.size()), d_o(pb.o.bytes.size()),
      d_lse(pb.lse.size() * sizeof(float));
  EXPECT_EQ(d_qkv.upload(qkv.data(), qkv.size()), cudaSuccess);
  EXPECT_EQ(d_dout.upload(dout.data(), dout.size()), cudaSuccess);
  EXPECT_EQ(d_o.upload(pb.o.data(), pb.o.bytes.size()), cudaSuccess);
  EXPECT_EQ(d_lse.upload(pb.lse.data(), pb.lse.size() * sizeof(float)), cudaSuccess);
  EXPECT_EQ(d_dqkv.poison(), cudaSuccess);
  if (::testing::Test::HasFailure()) return Status::Ok();  // already failed; nothing to check

  BwdParams p = pb.params;
  auto* base = static_cast<uint8_t*>(d_qkv.get());
  auto* dbase = static_cast<uint8_t*>(d_dqkv.get());
  p.q = base, p.k = base + H * D * esz, p.v = base + 2 * H * D * esz;
  p.dq = dbase, p.dk = dbase + H * D * esz, p.dv = dbase + 2 * H * D * esz;
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = bstride;
  p.dq_batch_stride = p.dk_batch_stride = p.dv_batch_stride = bstride;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = row;
  p.dq_row_stride = p.dk_row_stride = p.dv_row_stride = row;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = D;
  p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = D;
  p.dout = d_dout.get();
  p.dout_batch_stride = do_bstride;
  p.o = d_o.get();
  p.lse = d_lse.as<float>();
  p.device = Device::kCUDA;
  p.kernel = kernel;
  const Status st = backward(p);
  if (!st.ok()) return st;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> dqkv(qkv.size());
  EXPECT_EQ(d_dqkv.download(dqkv.data(), dqkv.size()), cudaSuccess);
  HostTensor* dst[3] = {&pb.dq, &pb.dk, &pb.dv};
  for (int t = 0; t < 3; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t h = 0; h < H; ++h)
          std::memcpy(dst[t]->bytes.data() + ((b * S + i) * H + h) * D * esz,
                      &dqkv[(b * bstride + i * row + t * H * D + h * D) * esz], D * esz);
  check_against_oracle(pb, s.name() + "_strided");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i)
      for (int64_t e = 3 * H * D; e < row; ++e) {
        EXPECT_EQ(dqkv[(b * bstride + i * row + e) * esz], 0xff) << "write past a row";
        if (dqkv[(b * bstride + i * row + e) * esz] != 0xff) return st;  // one report is enough
      }
  return st;
}

}  // namespace testing
}  // namespace flashattn
