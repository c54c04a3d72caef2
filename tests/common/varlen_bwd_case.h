// A variable-length (packed) backward problem on the host, and its check against
// the float64 oracle. Shared by the GPU test (tests/gpu/test_varlen_bwd_gpu.cpp)
// and the CPU emulator of the FA2 backward kernels (scripts/fa2_emu/fa2_bwd_emu_main.cpp),
// so both judge a kernel's output the same way.
//
// Tolerance: the rule of the dense backward tests (bwd_test_util.h), err(kernel)
// <= 2 x err(lowprec) + floor, on the whole packed dq / dk / dv. lowprec_backward
// is dense, so the low-precision baseline is assembled sequence by sequence from
// dense one-sequence views of the packed tensors (same bottom-right masks).
// Every row of dq / dk / dv belongs to a sequence and starts as NaN, so a row the
// kernel never writes fails the check; key rows past seqused_k must be exactly 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

namespace flashattn {
namespace testing {

struct VarlenCase {
  std::vector<int32_t> q_lens;  // query rows of each sequence
  std::vector<int32_t> k_lens;  // key rows each sequence owns in the packed k / v
  std::vector<int32_t> used_k;  // seqused_k (keys actually attended), empty = all k_lens
  // false: a dense batch [batch, seqlen, heads, d] (every q_lens / k_lens entry equal, no
  // cu_seqlens; the varlen part is seqused_k alone). Same memory as packed equal lengths.
  bool packed = true;
  int64_t heads_q = 2, heads_kv = 1, head_dim = 64;
  DType dtype = DType::kFloat16;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  float softcap = 0.0f;

  std::string name() const {
    std::string n = std::string(dtype_name(dtype)) + "_d" + std::to_string(head_dim) + "_h" +
                    std::to_string(heads_q) + "x" + std::to_string(heads_kv) + "_q";
    for (int32_t l : q_lens) n += "-" + std::to_string(l);
    n += "_k";
    for (int32_t l : k_lens) n += "-" + std::to_string(l);
    if (!used_k.empty()) {
      n += "_used";
      for (int32_t l : used_k) n += "-" + std::to_string(l);
    }
    if (!packed) n += "_dense";
    if (causal) n += "_causal";
    if (window_left >= 0 || window_right >= 0)
      n += "_win" + std::to_string(window_left) + "," + std::to_string(window_right);
    if (softcap > 0.0f) n += "_softcap";
    return n;
  }
};

// Host tensors of a varlen case: packed q / o / dout / dq [total_q, heads_q, d],
// (or dense [batch, seqlen, ...] when !packed),
// k / v / dk / dv [total_k, heads_kv, d], LSE [batch, heads_q, max_q]; random
// inputs, NaN outputs. params points at all of it (host index arrays included).
struct VarlenProblem {
  VarlenCase c;
  std::vector<int32_t> cu_q, cu_k;
  int64_t batch = 0, total_q = 0, total_k = 0, max_q = 0, max_k = 0;
  HostTensor q, k, v, o, dout, dq, dk, dv;
  std::vector<float> lse;
  BwdParams params;

  VarlenProblem(const VarlenCase& vc, uint64_t seed) : c(vc) {
    batch = static_cast<int64_t>(c.q_lens.size());
    cu_q.assign(1, 0);
    cu_k.assign(1, 0);
    for (int64_t b = 0; b < batch; ++b) {
      cu_q.push_back(cu_q.back() + c.q_lens[b]);
      cu_k.push_back(cu_k.back() + c.k_lens[b]);
      max_q = std::max<int64_t>(max_q, c.q_lens[b]);
      max_k = std::max<int64_t>(max_k, c.k_lens[b]);
    }
    total_q = cu_q.back();
    total_k = cu_k.back();
    const int64_t D = c.head_dim, nq = total_q * c.heads_q * D, nk = total_k * c.heads_kv * D;
    std::mt19937_64 rng(seed);
    q = HostTensor(c.dtype, nq), o = HostTensor(c.dtype, nq), dout = HostTensor(c.dtype, nq);
    dq = HostTensor(c.dtype, nq);
    k = HostTensor(c.dtype, nk), v = HostTensor(c.dtype, nk), dk = HostTensor(c.dtype, nk);
    dv = HostTensor(c.dtype, nk);
    q.fill_normal(rng);
    k.fill_normal(rng);
    v.fill_normal(rng);
    dout.fill_normal(rng);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    o.fill(nan), dq.fill(nan), dk.fill(nan), dv.fill(nan);
    lse.assign(batch * c.heads_q * max_q, nan);

    BwdParams& p = params;
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = o.data(), p.lse = lse.data();
    p.dout = dout.data(), p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data();
    p.batch = batch, p.seqlen_q = max_q, p.seqlen_k = max_k;
    p.heads_q = c.heads_q, p.heads_kv = c.heads_kv, p.head_dim = D, p.dtype = c.dtype;
    p.causal = c.causal, p.window_left = c.window_left, p.window_right = c.window_right, p.softcap = c.softcap;
    // Packed rows: batch strides unused (0).
    p.q_row_stride = p.o_row_stride = p.dout_row_stride = p.dq_row_stride = c.heads_q * D;
    p.k_row_stride = p.v_row_stride = p.dk_row_stride = p.dv_row_stride = c.heads_kv * D;
    p.q_head_stride = p.o_head_stride = p.dout_head_stride = p.dq_head_stride = D;
    p.k_head_stride = p.v_head_stride = p.dk_head_stride = p.dv_head_stride = D;
    if (c.packed) {
      p.cu_seqlens_q = cu_q.data();
      p.cu_seqlens_k = cu_k.data();
      p.total_q = total_q, p.total_k = total_k;
    } else {  // dense: sequence b is batch entry b (equal lengths, so the same rows as packed)
      for (int64_t b = 0; b < batch; ++b)
        if (c.q_lens[b] != max_q || c.k_lens[b] != max_k) throw std::invalid_argument("dense case: unequal lengths");
      p.q_batch_stride = p.o_batch_stride = p.dout_batch_stride = p.dq_batch_stride = max_q * p.q_row_stride;
      p.k_batch_stride = p.v_batch_stride = p.dk_batch_stride = p.dv_batch_stride = max_k * p.k_row_stride;
    }
    if (!c.used_k.empty()) p.seqused_k = c.used_k.data();
  }
  VarlenProblem(const VarlenProblem&) = delete;
  VarlenProblem& operator=(const VarlenProblem&) = delete;

  int64_t used(int64_t b) const { return c.used_k.empty() ? c.k_lens[b] : c.used_k[b]; }

  // O and LSE from the oracle's forward (O rounded to the dtype, LSE padding rows -inf).
  Status host_forward() {
    FwdParams f = params;
    f.kernel = Kernel::kReference;
    f.device = Device::kCPU;
    return forward(f);
  }
};

struct VarlenCheck {
  bool ok = true;
  std::string report;  // one line: errors and bounds, and what failed
};

// dq / dk / dv of pb (filled by the kernel under test) against the float64 oracle.
inline VarlenCheck check_varlen_backward(const VarlenProblem& pb, double floor) {
  const BwdParams& p = pb.params;
  const int64_t D = p.head_dim, hq = p.heads_q, hkv = p.heads_kv, esz = dtype_size(p.dtype);
  const cpu::RefBackward ref = cpu::reference_backward_f64(p);

  // Low-precision baseline, one dense sequence at a time.
  std::vector<float> low_dq(ref.dq.size(), 0.0f), low_dk(ref.dk.size(), 0.0f), low_dv(ref.dv.size(), 0.0f);
  for (int64_t b = 0; b < pb.batch; ++b) {
    const int64_t nq = pb.c.q_lens[b], nk = pb.used(b);
    if (nq == 0 || nk == 0) continue;  // no visible pair: all gradients of the sequence are 0
    BwdParams s = p;
    s.cu_seqlens_q = s.cu_seqlens_k = s.seqused_k = nullptr;
    s.total_q = s.total_k = 0;
    s.batch = 1, s.seqlen_q = nq, s.seqlen_k = nk;
    const int64_t q_off = pb.cu_q[b] * p.q_row_stride * esz, k_off = pb.cu_k[b] * p.k_row_stride * esz;
    s.q = static_cast<const uint8_t*>(p.q) + q_off;
    s.dout = static_cast<const uint8_t*>(p.dout) + q_off;
    s.k = static_cast<const uint8_t*>(p.k) + k_off;
    s.v = static_cast<const uint8_t*>(p.v) + k_off;
    const LowPrecBackward low = lowprec_backward(s);
    for (int64_t i = 0; i < nq * hq * D; ++i) low_dq[pb.cu_q[b] * hq * D + i] = low.dq[i];
    for (int64_t j = 0; j < nk * hkv * D; ++j) {
      low_dk[pb.cu_k[b] * hkv * D + j] = low.dk[j];
      low_dv[pb.cu_k[b] * hkv * D + j] = low.dv[j];
    }
  }

  VarlenCheck r;
  const double e_dq = max_abs_diff(ref.dq, pb.dq), e_dk = max_abs_diff(ref.dk, pb.dk),
               e_dv = max_abs_diff(ref.dv, pb.dv);
  const double t_dq = 2 * max_abs_diff(ref.dq, low_dq) + floor, t_dk = 2 * max_abs_diff(ref.dk, low_dk) + floor,
               t_dv = 2 * max_abs_diff(ref.dv, low_dv) + floor;
  std::string failed;
  if (!(e_dq <= t_dq)) failed += " dq";
  if (!(e_dk <= t_dk)) failed += " dk";
  if (!(e_dv <= t_dv)) failed += " dv";
  // Keys past seqused_k: attended by no query, their dK / dV rows are exactly 0.
  auto unused_rows_zero = [&]() -> std::string {
    for (int64_t b = 0; b < pb.batch; ++b)
      for (int64_t j = pb.used(b); j < pb.c.k_lens[b]; ++j)
        for (int64_t e = 0; e < hkv * D; ++e) {
          const int64_t idx = (pb.cu_k[b] + j) * hkv * D + e;
          if (pb.dk.get(idx) != 0.0f || pb.dv.get(idx) != 0.0f)
            return " dk/dv of unused key " + std::to_string(j) + " of sequence " + std::to_string(b) + " not 0";
        }
    return "";
  };
  failed += unused_rows_zero();
  r.ok = failed.empty();
  char line[256];
  std::snprintf(line, sizeof(line), "dq %.2e/%.2e dk %.2e/%.2e dv %.2e/%.2e", e_dq, t_dq, e_dk, t_dk, e_dv, t_dv);
  r.report = std::string(r.ok ? "OK   " : "FAIL ") + pb.c.name() + " " + line + (r.ok ? "" : " failed:" + failed);
  return r;
}

}  // namespace testing
}  // namespace flashattn
