// FlashAttention-2 forward (Kernel::kFA2) against the float64 oracle with the
// tolerance rule (2x the naive low-precision error + a floor), LSE included,
// over odd sequence lengths (Nq != Nk both ways), every head dim, GQA/MQA,
// causal / window / softcap, fully masked rows, batches and strided inputs.
// Outputs are poisoned (NaN) before each run, so unwritten elements fail.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "gpu_test_util.h"
#include "test_util.h"

namespace flashattn {
namespace testing {
namespace {

// Compares o (contiguous [b, nq, hq, d]) and lse of a finished run with the oracle.
void check_against_reference(const FwdParams& host_params, const HostTensor& o, const std::vector<float>& lse,
                             const std::string& name) {
  const auto ref = cpu::reference_forward_f64(host_params);
  const auto low = lowprec_forward(host_params);
  const double tol = 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(host_params.dtype);
  const double err = max_abs_diff(ref.out, o);
  EXPECT_LE(err, tol) << name << ": O error " << err << " > tolerance " << tol;
  const double lse_tol = 2 * max_abs_diff_lse(ref.lse, low.lse) + 1e-3;
  const double lse_err = max_abs_diff_lse(ref.lse, lse);
  EXPECT_LE(lse_err, lse_tol) << name << ": LSE error " << lse_err << " > tolerance " << lse_tol;
  // Fully masked rows: O exactly 0 (max_abs_diff already rejects NaN).
  const int64_t d = host_params.head_dim;
  for (int64_t b = 0; b < host_params.batch; ++b)
    for (int64_t h = 0; h < host_params.heads_q; ++h)
      for (int64_t i = 0; i < host_params.seqlen_q; ++i) {
        if (ref.lse[(b * host_params.heads_q + h) * host_params.seqlen_q + i] != -INFINITY) continue;
        const int64_t row = ((b * host_params.seqlen_q + i) * host_params.heads_q + h) * d;
        for (int64_t c = 0; c < d; ++c)
          if (o.get(row + c) != 0.0f) {
            ADD_FAILURE() << name << ": fully masked row b" << b << " h" << h << " i" << i << " has O = "
                          << o.get(row + c);
            return;
          }
      }
}

bool not_compiled(const Status& st) {
  return st.code == StatusCode::kUnsupported && st.message.find("no compiled kernel") != std::string::npos;
}

// Runs kFA2 on one contiguous problem and checks it. A head dim without a
// compiled kernel in this build is reported (not failed) and the case skipped.
void run_case(const Shape& s, uint64_t seed) {
  SCOPED_TRACE(s.name());
  Problem prob(s, seed);
  GpuProblem g(prob);
  ASSERT_TRUE(g.ok()) << "cudaMalloc failed";
  FwdParams p = g.fwd_params();
  p.kernel = Kernel::kFA2;
  const Status st = forward(p);
  if (not_compiled(st)) {
    std::printf("[  NOTE    ] %s skipped: %s\n", s.name().c_str(), st.message.c_str());
    return;
  }
  ASSERT_TRUE(st.ok()) << s.name() << ": " << st.message;
  FA_TEST_CUDA(g.copy_outputs_to_host(prob));
  check_against_reference(prob.params, prob.o, prob.lse, s.name());
}

class Fa2Fwd : public ::testing::Test {
 protected:
  void SetUp() override { FLASHATTN_SKIP_WITHOUT_GPU(); }
};

// Odd lengths, Nq != Nk both ways (bottom-right causal alignment), partial tiles.
TEST_F(Fa2Fwd, SeqlenGrid) {
  const std::vector<std::pair<int64_t, int64_t>> lens = {{1, 1},     {1, 257},  {7, 1},     {7, 63},   {63, 65},
                                                        {65, 63},   {127, 65}, {65, 127},  {257, 1},  {127, 257},
                                                        {257, 127}, {1000, 63}, {63, 1000}, {257, 1000}, {1000, 257}};
  uint64_t seed = 1;
  for (auto [nq, nk] : lens)
    for (int causal = 0; causal < 2; ++causal)
      for (int64_t d : {64, 128})
        for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
          Shape s = make_shape(1, nq, nk, 4, 4, d, dt);
          s.causal = causal;
          run_case(s, seed++);
          if (HasFatalFailure()) return;
        }
}

// Every head dim the API allows in the grid; those between kernel dims run
// zero-padded in the next compiled kernel (only the real columns are written).
TEST_F(Fa2Fwd, HeadDims) {
  uint64_t seed = 100;
  for (int64_t d : {32, 40, 64, 80, 96, 128, 192, 256})
    for (auto [nq, nk] : {std::pair<int64_t, int64_t>{127, 257}, {257, 65}})
      for (int causal = 0; causal < 2; ++causal)
        for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
          Shape s = make_shape(1, nq, nk, 4, 4, d, dt);
          s.causal = causal;
          run_case(s, seed++);
          if (HasFatalFailure()) return;
        }
}

// GQA / MQA with batches, causal, sliding window and softcap.
TEST_F(Fa2Fwd, HeadsMasksSoftcap) {
  struct Opt {
    bool causal;
    int64_t wl, wr;
    float softcap;
  };
  const Opt opts[] = {{false, -1, -1, 0.f}, {true, -1, -1, 0.f}, {false, 50, 20, 0.f}, {false, 100, -1, 0.f},
                      {false, -1, 7, 0.f},  {true, 30, -1, 0.f}, {false, -1, -1, 5.f}, {true, 64, -1, 3.f}};
  uint64_t seed = 200;
  for (auto [hq, hkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}, {8, 1}})
    for (const Opt& o : opts)
      for (int64_t b : {1, 3}) {
        const DType dt = (seed % 2) ? DType::kFloat16 : DType::kBFloat16;
        Shape s = make_shape(b, 129, 200, hq, hkv, 64, dt);
        s.causal = o.causal;
        s.window_left = o.wl;
        s.window_right = o.wr;
        s.softcap = o.softcap;
        run_case(s, seed++);
        if (HasFatalFailure()) return;
      }
}

// Rows that see no key at all: causal with Nq > Nk (the first Nq - Nk rows,
// whole query blocks included) and windows that leave rows empty.
TEST_F(Fa2Fwd, FullyMaskedRows) {
  uint64_t seed = 300;
  for (DType dt : {DType::kBFloat16, DType::kFloat16})
    for (int64_t d : {64, 128}) {
      Shape s = make_shape(3, 1000, 65, 8, 2, d, dt);
      s.causal = true;
      run_case(s, seed++);
      Shape w = make_shape(1, 300, 100, 4, 4, d, dt);  // window_left 10, window_right 0: rows < 200 see nothing
      w.window_left = 10;
      w.window_right = 0;
      run_case(w, seed++);
      if (HasFatalFailure()) return;
    }
}

// Longer sequence in both dtypes and head dims of the performance path.
TEST_F(Fa2Fwd, LongerSequence) {
  uint64_t seed = 400;
  for (int64_t d : {64, 128})
    for (int causal = 0; causal < 2; ++causal) {
      Shape s = make_shape(1, 1000, 1000, 2, 1, d, DType::kBFloat16);
      s.causal = causal;
      run_case(s, seed++);
    }
}

// q, k, v as views of one packed [b, n, 3, h, d] qkv tensor (row stride 3 h d),
// o written into a padded [b, n, h, d + 8] buffer (row and head strides > d).
TEST_F(Fa2Fwd, StridedPackedQkv) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16})
    for (int64_t d : {64, 40}) {
      const int64_t b = 2, n = 131, h = 4, od = d + 8;
      Shape s = make_shape(b, n, n, h, h, d, dt);
      s.causal = dt == DType::kFloat16;
      SCOPED_TRACE(s.name() + "_packed");
      Problem prob(s, 500 + d);  // supplies contiguous random q, k, v
      HostTensor qkv(dt, b * n * 3 * h * d);
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t hi = 0; hi < h; ++hi)
            for (int64_t c = 0; c < d; ++c) {
              const int64_t src = ((bi * n + i) * h + hi) * d + c;
              const int64_t dst = (((bi * n + i) * 3) * h + hi) * d + c;
              qkv.set(dst, prob.q.get(src));
              qkv.set(dst + h * d, prob.k.get(src));
              qkv.set(dst + 2 * h * d, prob.v.get(src));
            }
      DeviceBuffer dqkv = to_device(qkv);
      DeviceBuffer dout(static_cast<size_t>(b * n * h * od * dtype_size(dt)));
      DeviceBuffer dlse(static_cast<size_t>(b * h * n * sizeof(float)));
      ASSERT_TRUE(dqkv.get() && dout.get() && dlse.get());
      FA_TEST_CUDA(dout.poison());
      FA_TEST_CUDA(dlse.poison());

      FwdParams p = prob.params;  // shape and options
      const int64_t es = dtype_size(dt);
      auto view = [&](const void* base, int64_t which) {
        return static_cast<const void*>(static_cast<const char*>(base) + which * h * d * es);
      };
      p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = n * 3 * h * d;
      p.q_row_stride = p.k_row_stride = p.v_row_stride = 3 * h * d;
      p.q_head_stride = p.k_head_stride = p.v_head_stride = d;
      p.o_batch_stride = n * h * od;
      p.o_row_stride = h * od;
      p.o_head_stride = od;
      FwdParams host = p;  // the oracle reads the same strided layout on the host
      host.q = view(qkv.data(), 0);
      host.k = view(qkv.data(), 1);
      host.v = view(qkv.data(), 2);
      p.q = view(dqkv.get(), 0);
      p.k = view(dqkv.get(), 1);
      p.v = view(dqkv.get(), 2);
      p.o = dout.get();
      p.lse = dlse.as<float>();
      p.device = Device::kCUDA;
      p.kernel = Kernel::kFA2;
      const Status st = forward(p);
      if (not_compiled(st)) GTEST_SKIP() << st.message;
      ASSERT_TRUE(st.ok()) << st.message;
      FA_TEST_CUDA(cudaDeviceSynchronize());
      HostTensor opad(dt, b * n * h * od);
      FA_TEST_CUDA(to_host(dout, opad));
      std::vector<float> lse(b * h * n);
      FA_TEST_CUDA(dlse.download(lse.data(), lse.size() * sizeof(float)));
      // Gather the real columns; the padding columns must stay poisoned (never written).
      HostTensor o(dt, b * n * h * d);
      bool pad_untouched = true;
      for (int64_t r = 0; r < b * n * h; ++r) {
        for (int64_t c = 0; c < d; ++c) o.set(r * d + c, opad.get(r * od + c));
        for (int64_t c = d; c < od; ++c) pad_untouched &= std::isnan(opad.get(r * od + c));
      }
      EXPECT_TRUE(pad_untouched) << "fa2 wrote past head_dim into the output row padding";
      host.o = nullptr;
      host.lse = nullptr;
      check_against_reference(host, o, lse, s.name() + "_packed");
    }
}

// Variable-length batch (cu_seqlens_q/k, optional seqused_k) through cuda::fa2_forward
// directly: the API's validate() still refuses varlen until every backend has it.
// Each sequence is checked as its own dense problem (strided views into the packed
// host tensors) with the usual tolerance rule; a sequence with no keys must give
// O = 0 and LSE = -inf.
TEST_F(Fa2Fwd, VarlenDirect) {
  const std::vector<int32_t> cq = {0, 5, 135, 199}, ck = {0, 70, 90, 154}, used = {33, 20, 0};
  const int64_t batch = 3, hq = 4, hkv = 2, max_q = 130, max_k = 70;
  uint64_t seed = 600;
  for (int with_used = 0; with_used < 2; ++with_used)
    for (int causal = 0; causal < 2; ++causal)
      for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
        const int64_t d = dt == DType::kBFloat16 ? 64 : 128;
        SCOPED_TRACE(std::string("varlen used=") + std::to_string(with_used) + " causal=" + std::to_string(causal) +
                     " " + dtype_name(dt));
        const int64_t tq = cq.back(), tk = ck.back();
        HostTensor q(dt, tq * hq * d), k(dt, tk * hkv * d), v(dt, tk * hkv * d), o(dt, tq * hq * d);
        std::mt19937_64 rng(seed++);
        q.fill_normal(rng);
        k.fill_normal(rng);
        v.fill_normal(rng);
        DeviceBuffer dq = to_device(q), dk = to_device(k), dv = to_device(v);
        DeviceBuffer dout(o.bytes.size()), dlse(batch * hq * max_q * sizeof(float));
        DeviceBuffer dcq(cq.size() * 4), dck(ck.size() * 4), dused(used.size() * 4);
        ASSERT_TRUE(dq.get() && dk.get() && dv.get() && dout.get() && dlse.get() && dcq.get() && dck.get() &&
                    dused.get());
        FA_TEST_CUDA(dout.poison());
        FA_TEST_CUDA(dlse.poison());
        FA_TEST_CUDA(dcq.upload(cq.data(), cq.size() * 4));
        FA_TEST_CUDA(dck.upload(ck.data(), ck.size() * 4));
        FA_TEST_CUDA(dused.upload(used.data(), used.size() * 4));
        FwdParams p;
        p.q = dq.get();
        p.k = dk.get();
        p.v = dv.get();
        p.o = dout.get();
        p.lse = dlse.as<float>();
        p.batch = batch;
        p.seqlen_q = max_q;
        p.seqlen_k = max_k;
        p.heads_q = hq;
        p.heads_kv = hkv;
        p.head_dim = d;
        p.dtype = dt;
        p.causal = causal;
        set_contiguous_strides(p);
        p.cu_seqlens_q = dcq.as<int32_t>();
        p.cu_seqlens_k = dck.as<int32_t>();
        if (with_used) p.seqused_k = dused.as<int32_t>();
        p.device = Device::kCUDA;
        p.kernel = Kernel::kFA2;
        const Status st = cuda::fa2_forward(p);
        if (not_compiled(st)) GTEST_SKIP() << st.message;
        ASSERT_TRUE(st.ok()) << st.message;
        FA_TEST_CUDA(cudaDeviceSynchronize());
        FA_TEST_CUDA(to_host(dout, o));
        std::vector<float> lse(batch * hq * max_q);
        FA_TEST_CUDA(dlse.download(lse.data(), lse.size() * sizeof(float)));
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t nq = cq[b + 1] - cq[b], nk = with_used ? used[b] : ck[b + 1] - ck[b];
          HostTensor ob(dt, nq * hq * d);
          for (int64_t i = 0; i < nq * hq * d; ++i) ob.set(i, o.get(cq[b] * hq * d + i));
          std::vector<float> lb(hq * nq);
          for (int64_t h = 0; h < hq; ++h)
            for (int64_t i = 0; i < nq; ++i) lb[h * nq + i] = lse[(b * hq + h) * max_q + i];
          if (nk == 0) {  // no keys: O = 0, LSE = -inf
            for (int64_t i = 0; i < ob.numel; ++i) ASSERT_EQ(ob.get(i), 0.0f) << "sequence " << b;
            for (float x : lb) ASSERT_EQ(x, -INFINITY) << "sequence " << b;
            continue;
          }
          FwdParams hb;  // sequence b as a dense batch-1 problem over the packed host tensors
          hb.q = static_cast<const char*>(q.data()) + cq[b] * hq * d * dtype_size(dt);
          hb.k = static_cast<const char*>(k.data()) + ck[b] * hkv * d * dtype_size(dt);
          hb.v = static_cast<const char*>(v.data()) + ck[b] * hkv * d * dtype_size(dt);
          hb.batch = 1;
          hb.seqlen_q = nq;
          hb.seqlen_k = nk;
          hb.heads_q = hq;
          hb.heads_kv = hkv;
          hb.head_dim = d;
          hb.dtype = dt;
          hb.causal = causal;
          set_contiguous_strides(hb);
          check_against_reference(hb, ob, lb, "varlen sequence " + std::to_string(b));
        }
      }
}

TEST_F(Fa2Fwd, Float32IsUnsupported) {
  Shape s = make_shape(1, 16, 16, 2, 2, 64, DType::kFloat32);
  Problem prob(s, 7);
  GpuProblem g(prob);
  ASSERT_TRUE(g.ok());
  FwdParams p = g.fwd_params();
  p.kernel = Kernel::kFA2;
  const Status st = forward(p);
  EXPECT_EQ(st.code, StatusCode::kUnsupported);
  EXPECT_NE(st.message.find("float16/bfloat16"), std::string::npos) << st.message;
  // Auto falls back to a CUDA-core rung for fp32 (FA1), never to a wrong answer.
  p.kernel = Kernel::kAuto;
  const Status st_auto = forward(p);
  if (st_auto.ok()) {
    FA_TEST_CUDA(g.copy_outputs_to_host(prob));
    check_against_reference(prob.params, prob.o, prob.lse, "fp32 auto");
  }
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
