// Variable-length (packed) backward on the GPU: the FA2 backward's kVarlen kernels
// through flashattn::backward (cu_seqlens_q/k, seqused_k), against the float64
// oracle with the tolerance rule (tests/common/varlen_bwd_case.h). O and LSE come
// from the CPU oracle; dq / dk / dv start as NaN on the device, so every row of
// every sequence must be written (and rows of keys past seqused_k must be 0).
// Also: kernel auto runs varlen on fa2, the Hopper backward and paged KV refuse.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "bwd_test_util.h"
#include "gpu_test_util.h"
#include "test_util.h"
#include "varlen_bwd_case.h"

namespace flashattn {
namespace testing {
namespace {

double varlen_floor(const VarlenProblem& pb) {
  Shape s;
  s.seqlen_q = pb.max_q, s.seqlen_k = pb.max_k, s.dtype = pb.c.dtype;
  return bwd_floor(s);
}

DeviceBuffer index_to_device(const std::vector<int32_t>& x) {
  DeviceBuffer b(x.size() * sizeof(int32_t));
  if (b.get()) b.upload(x.data(), x.size() * sizeof(int32_t));
  return b;
}

// Uploads pb (O and LSE must be filled), runs the backward with `kernel` and, when
// it answers ok, copies dq / dk / dv back into pb. `edit` may change the device
// params before the call (the refusal tests).
template <typename Edit>
Status run_varlen_backward(VarlenProblem& pb, Kernel kernel, bool deterministic, Edit edit) {
  DeviceBuffer q = to_device(pb.q), k = to_device(pb.k), v = to_device(pb.v), o = to_device(pb.o),
               dout = to_device(pb.dout);
  DeviceBuffer lse(pb.lse.size() * sizeof(float));
  EXPECT_EQ(lse.upload(pb.lse.data(), lse.bytes()), cudaSuccess);
  DeviceBuffer cu_q = index_to_device(pb.cu_q), cu_k = index_to_device(pb.cu_k),
               used = index_to_device(pb.c.used_k);
  DeviceBuffer dq(pb.dq.bytes.size()), dk(pb.dk.bytes.size()), dv(pb.dv.bytes.size());
  EXPECT_EQ(dq.poison(), cudaSuccess);
  EXPECT_EQ(dk.poison(), cudaSuccess);
  EXPECT_EQ(dv.poison(), cudaSuccess);

  BwdParams p = pb.params;
  p.q = q.get(), p.k = k.get(), p.v = v.get(), p.o = o.get(), p.dout = dout.get(), p.lse = lse.as<float>();
  p.dq = dq.get(), p.dk = dk.get(), p.dv = dv.get();
  if (pb.params.cu_seqlens_q) p.cu_seqlens_q = cu_q.as<int32_t>(), p.cu_seqlens_k = cu_k.as<int32_t>();
  p.seqused_k = pb.c.used_k.empty() ? nullptr : used.as<int32_t>();
  p.device = Device::kCUDA;
  p.kernel = kernel;
  p.deterministic = deterministic;
  edit(p);
  const Status st = backward(p);
  if (!st.ok()) return st;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(to_host(dq, pb.dq), cudaSuccess);
  EXPECT_EQ(to_host(dk, pb.dk), cudaSuccess);
  EXPECT_EQ(to_host(dv, pb.dv), cudaSuccess);
  return st;
}
Status run_varlen_backward(VarlenProblem& pb, Kernel kernel, bool deterministic = false) {
  return run_varlen_backward(pb, kernel, deterministic, [](BwdParams&) {});
}

// Ragged batches: empty and one-row sequences, Nq != Nk both ways, several Q
// blocks (Br = 64) and key blocks (Bc = 128 at d <= 128, 64 above).
std::vector<VarlenCase> cases() {
  const std::vector<std::vector<int32_t>> q_lens = {{5, 0, 70, 1, 3}, {300, 17, 129}, {1, 64, 0, 200}};
  const std::vector<std::vector<int32_t>> k_lens = {{9, 4, 140, 1, 0}, {517, 17, 64}, {1, 0, 33, 260}};
  const int64_t dims[] = {64, 128, 40, 96, 192, 256};
  std::vector<VarlenCase> out;
  int idx = 0;
  for (size_t l = 0; l < q_lens.size(); ++l)
    for (int64_t d : dims)
      for (int mode = 0; mode < 6; ++mode, ++idx) {
        if (d > 128 && mode % 2) continue;  // fewer cases for the large head dims (oracle time)
        VarlenCase c;
        c.q_lens = q_lens[l], c.k_lens = k_lens[l];
        c.head_dim = d;
        c.dtype = idx % 2 ? DType::kFloat16 : DType::kBFloat16;
        c.heads_q = 2, c.heads_kv = 1;
        if (idx % 3 == 1) c.heads_q = 4, c.heads_kv = 2;
        if (idx % 3 == 2) c.heads_q = 3, c.heads_kv = 3;
        if (mode == 1) c.causal = true;
        if (mode == 2) c.window_left = 40, c.window_right = 7;
        if (mode == 3) c.softcap = 5.0f, c.causal = true;
        if (mode == 4 || mode == 5) {  // seqused_k: at most the keys each sequence owns
          c.causal = mode == 5;
          for (int32_t n : c.k_lens) c.used_k.push_back(n * 2 / 3);
        }
        out.push_back(c);
      }
  // Dense batches with seqused_k alone (no cu_seqlens): keys capped per sequence.
  for (int mode = 0; mode < 4; ++mode) {
    VarlenCase c;
    c.packed = false;
    c.q_lens = {70, 70, 70}, c.k_lens = {150, 150, 150}, c.used_k = {0, 1, 131};
    if (mode >= 2) c.q_lens = {200, 200, 200}, c.k_lens = {65, 65, 65}, c.used_k = {64, 30, 65};
    c.head_dim = mode % 2 ? 128 : 64;
    c.dtype = mode % 2 ? DType::kBFloat16 : DType::kFloat16;
    c.heads_q = 4, c.heads_kv = 2;
    c.causal = mode == 1 || mode == 2;
    out.push_back(c);
  }
  return out;
}

TEST(FA2VarlenBwd, Cases) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  int ran = 0, skipped = 0;
  uint64_t seed = 1;
  for (const VarlenCase& c : cases()) {
    VarlenProblem pb(c, seed++);
    const Status fwd = pb.host_forward();
    ASSERT_TRUE(fwd.ok()) << fwd.message;
    const Status st = run_varlen_backward(pb, Kernel::kFA2);
    if (st.code == StatusCode::kUnsupported && c.head_dim != 64 && c.head_dim != 128) {
      ++skipped;  // head dim not compiled in this build
      continue;
    }
    ASSERT_TRUE(st.ok()) << c.name() << ": " << st.message;
    const VarlenCheck r = check_varlen_backward(pb, varlen_floor(pb));
    EXPECT_TRUE(r.ok) << r.report;
    printf("  %s\n", r.report.c_str());
    ++ran;
  }
  printf("FA2VarlenBwd.Cases: %d ran, %d skipped (head dim not compiled)\n", ran, skipped);
  EXPECT_GT(ran, 0);
}

VarlenCase small_case(DType dt) {
  VarlenCase c;
  c.q_lens = {5, 0, 130, 1}, c.k_lens = {9, 3, 200, 0};
  c.heads_q = 4, c.heads_kv = 2, c.head_dim = 64, c.dtype = dt, c.causal = true;
  return c;
}

// Deterministic: three runs give bit-identical gradients, and correct ones.
TEST(FA2VarlenBwd, Deterministic) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  VarlenProblem pb(small_case(DType::kBFloat16), 77);
  ASSERT_TRUE(pb.host_forward().ok());
  std::vector<uint8_t> first[3];
  for (int run = 0; run < 3; ++run) {
    const Status st = run_varlen_backward(pb, Kernel::kFA2, /*deterministic=*/true);
    ASSERT_TRUE(st.ok()) << st.message;
    if (run == 0) {
      first[0] = pb.dq.bytes, first[1] = pb.dk.bytes, first[2] = pb.dv.bytes;
      const VarlenCheck r = check_varlen_backward(pb, varlen_floor(pb));
      EXPECT_TRUE(r.ok) << r.report;
    } else {
      EXPECT_TRUE(pb.dq.bytes == first[0]) << "dq differs in run " << run;
      EXPECT_TRUE(pb.dk.bytes == first[1]) << "dk differs in run " << run;
      EXPECT_TRUE(pb.dv.bytes == first[2]) << "dv differs in run " << run;
    }
  }
}

// Kernel auto: the Hopper backward refuses varlen, auto runs fa2 (on any GPU).
TEST(FA2VarlenBwd, AutoRunsVarlen) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  VarlenProblem pb(small_case(DType::kFloat16), 78);
  ASSERT_TRUE(pb.host_forward().ok());
  const Status st = run_varlen_backward(pb, Kernel::kAuto);
  ASSERT_TRUE(st.ok()) << st.message;
  const VarlenCheck r = check_varlen_backward(pb, varlen_floor(pb));
  EXPECT_TRUE(r.ok) << r.report;
}

TEST(FA2VarlenBwd, HopperRefusesVarlen) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  VarlenProblem pb(small_case(DType::kFloat16), 79);
  ASSERT_TRUE(pb.host_forward().ok());
  const Status st = run_varlen_backward(pb, Kernel::kHopper);
  EXPECT_EQ(st.code, StatusCode::kUnsupported) << st.message;
}

// A paged KV cache (block_table) has no CUDA backward: a clear refusal, not a crash.
TEST(FA2VarlenBwd, PagedIsUnsupported) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  VarlenCase c;
  c.q_lens = {3, 2}, c.k_lens = {16, 16};  // two pages of 16 keys: page b is sequence b
  c.heads_q = c.heads_kv = 1, c.head_dim = 64;
  VarlenProblem pb(c, 80);
  ASSERT_TRUE(pb.host_forward().ok());
  const std::vector<int32_t> table = {0, 1};
  DeviceBuffer d_table = index_to_device(table);
  for (Kernel kernel : {Kernel::kAuto, Kernel::kFA2}) {
    const Status st = run_varlen_backward(pb, kernel, false, [&](BwdParams& p) {
      p.block_table = d_table.as<int32_t>();
      p.block_table_batch_stride = 1;
      p.page_size = 16;
      p.num_pages = 2;
      p.k_batch_stride = p.v_batch_stride = p.dk_batch_stride = p.dv_batch_stride = 16 * p.k_row_stride;
      p.total_k = 0;
    });
    EXPECT_EQ(st.code, StatusCode::kUnsupported) << st.message;
    EXPECT_NE(st.message.find("block_table"), std::string::npos) << st.message;
  }
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
