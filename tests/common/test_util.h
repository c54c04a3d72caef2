// Shared test helpers: random problems, the low-precision "naive" baseline of
// the tolerance rule, error metrics and GPU skipping.
//
// Tolerance rule (FlashAttention's): a kernel's max error vs the float64
// reference must be <= 2 x the max error of the same math done naively in the
// input precision, plus a small absolute floor.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "cpu/cpu_backend.h"
#include "flashattn/flashattn.h"

namespace flashattn {
namespace testing {

// Host storage for one tensor of a given dtype (fp32 as float bits, 16-bit as uint16).
struct HostTensor {
  DType dtype = DType::kFloat32;
  std::vector<uint8_t> bytes;
  int64_t numel = 0;

  HostTensor() = default;
  HostTensor(DType dt, int64_t n) : dtype(dt), bytes(static_cast<size_t>(n * dtype_size(dt))), numel(n) {}
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  float get(int64_t i) const { return load_as_float(bytes.data(), dtype, i); }
  void set(int64_t i, float v) { store_from_float(bytes.data(), dtype, i, v); }
  void fill_normal(std::mt19937_64& rng, float stddev = 1.0f);
  void fill(float v);
  std::vector<double> to_double() const;
};

// Shape and options of one attention test case.
struct Shape {
  int64_t batch = 1, seqlen_q = 1, seqlen_k = 1, heads_q = 1, heads_kv = 1, head_dim = 64;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  DType dtype = DType::kFloat32;
  std::string name() const;
};

// A shape from its sizes (bf16 unless given: the GPU kernels' common case).
inline Shape make_shape(int64_t b, int64_t nq, int64_t nk, int64_t hq, int64_t hkv, int64_t d,
                        DType dt = DType::kBFloat16, bool causal = false, int64_t window_left = -1,
                        int64_t window_right = -1, float softcap = 0.0f) {
  Shape s;
  s.batch = b, s.seqlen_q = nq, s.seqlen_k = nk, s.heads_q = hq, s.heads_kv = hkv, s.head_dim = d;
  s.dtype = dt;
  s.causal = causal;
  s.window_left = window_left, s.window_right = window_right;
  s.softcap = softcap;
  return s;
}

// A problem with contiguous host tensors q, k, v, dout (random normal) and outputs.
struct Problem {
  Shape shape;
  HostTensor q, k, v, o, dout, dq, dk, dv;
  std::vector<float> lse;
  BwdParams params;  // pointers into the host tensors above, contiguous strides

  explicit Problem(const Shape& s, uint64_t seed);
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;
};

// The same attention math done naively in the input precision (float math,
// S, P and O rounded to the dtype after each step). Baseline of the tolerance rule.
struct LowPrecForward {
  std::vector<float> out, lse;
};
LowPrecForward lowprec_forward(const FwdParams& p);
struct LowPrecBackward {
  std::vector<float> dq, dk, dv;
};
LowPrecBackward lowprec_backward(const BwdParams& p);

double max_abs_diff(const std::vector<double>& ref, const HostTensor& got);
double max_abs_diff(const std::vector<double>& ref, const std::vector<float>& got);
// LSE: -inf must match -inf exactly; returns +inf on a mismatch of infinities or any NaN.
double max_abs_diff_lse(const std::vector<double>& ref, const std::vector<float>& got);

// Absolute floor added to the 2x rule.
double tolerance_floor(DType dt);

bool gpu_available();
#define FLASHATTN_SKIP_WITHOUT_GPU()                                            \
  do {                                                                          \
    if (!::flashattn::testing::gpu_available()) GTEST_SKIP() << "no CUDA GPU";  \
  } while (0)

}  // namespace testing
}  // namespace flashattn
