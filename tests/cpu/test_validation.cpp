// Bad input never crashes: one test per class of bad request, checking the
// StatusCode and that the message names the problem and what is allowed
// (the table in docs/errors.md). Starts from a valid request and breaks one
// field at a time. Runs on CPU-only and CUDA builds alike (validate() only;
// device-CUDA checks expect kNotCompiled where CUDA is not built).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "flashattn/flashattn.h"

namespace flashattn {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// Asserts the code and that every fragment appears in the message.
void expect_status(const Status& st, StatusCode code, std::initializer_list<const char*> fragments) {
  EXPECT_EQ(st.code, code) << "got " << status_code_name(st.code) << ": " << st.message;
  EXPECT_FALSE(st.message.empty());
  for (const char* f : fragments)
    EXPECT_NE(st.message.find(f), std::string::npos) << "message \"" << st.message << "\" lacks \"" << f << "\"";
}

// A valid fp32 CPU problem: B=2, Nq=5, Nk=7, Hq=4, Hkv=2, D=16, with buffers.
struct Valid {
  std::vector<float> q, k, v, o, dout, dq, dk, dv, lse;
  BwdParams p;
  Valid() {
    p.batch = 2;
    p.seqlen_q = 5;
    p.seqlen_k = 7;
    p.heads_q = 4;
    p.heads_kv = 2;
    p.head_dim = 16;
    const size_t nq = 2 * 5 * 4 * 16, nk = 2 * 7 * 2 * 16;
    q.assign(nq, 0.5f), o.assign(nq, 0.f), dout.assign(nq, 1.f), dq.assign(nq, 0.f);
    k.assign(nk, 0.25f), v.assign(nk, 1.f), dk.assign(nk, 0.f), dv.assign(nk, 0.f);
    lse.assign(2 * 4 * 5, 0.f);
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = o.data(), p.lse = lse.data();
    p.dout = dout.data(), p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data();
    set_contiguous_strides(p);
  }
  FwdParams& fwd() { return p; }
};

TEST(Validation, TheBaseRequestIsValid) {
  Valid c;
  EXPECT_TRUE(validate(c.fwd()).ok()) << validate(c.fwd()).message;
  EXPECT_TRUE(validate(c.p).ok()) << validate(c.p).message;
  EXPECT_TRUE(forward(c.fwd()).ok());
}

TEST(Validation, ZeroOrNegativeSizes) {
  struct Case {
    int64_t FwdParams::*field;
    const char* name;
  };
  for (Case f : {Case{&FwdParams::batch, "batch"}, Case{&FwdParams::seqlen_q, "seqlen_q"},
                 Case{&FwdParams::seqlen_k, "seqlen_k"}, Case{&FwdParams::heads_q, "heads_q"},
                 Case{&FwdParams::heads_kv, "heads_kv"}, Case{&FwdParams::head_dim, "head_dim"}})
    for (int64_t bad : {int64_t{0}, int64_t{-3}}) {
      Valid c;
      c.fwd().*f.field = bad;
      const std::string got = std::string("(got ") + std::to_string(bad) + ")";
      expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {f.name, "must be >= 1", got.c_str()});
    }
}

TEST(Validation, InvalidDtype) {
  Valid c;
  c.p.dtype = static_cast<DType>(7);
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"dtype", "float32, float16 or bfloat16", "7"});
}

TEST(Validation, UnsupportedHeadDim) {
  for (int64_t d : {12, 264, 1000}) {
    Valid c;
    c.p.head_dim = d;
    set_contiguous_strides(c.p);
    expect_status(validate(c.fwd()), StatusCode::kUnsupported,
                  {("head_dim " + std::to_string(d)).c_str(), "multiple of 8", "256"});
  }
}

TEST(Validation, HeadDimVMismatch) {
  Valid c;
  c.p.head_dim_v = 8;
  expect_status(validate(c.fwd()), StatusCode::kUnsupported, {"head_dim_v 8", "head_dim 16", "head_dim_v == head_dim"});
}

TEST(Validation, HeadsNotAMultipleOfKvHeads) {
  Valid c;
  c.p.heads_q = 6;
  c.p.heads_kv = 4;
  set_contiguous_strides(c.p);
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"heads_q (6)", "multiple of heads_kv (4)"});
}

TEST(Validation, NullPointers) {
  const char* names[] = {"q", "k", "v", "o"};
  for (int i = 0; i < 4; ++i) {
    Valid c;
    const void** fields[] = {&c.p.q, &c.p.k, &c.p.v, nullptr};
    if (i < 3) *fields[i] = nullptr;
    else c.p.o = nullptr;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument,
                  {(std::string(names[i]) + " is a null pointer").c_str(), "must point"});
  }
  // lse is optional in the forward.
  Valid c;
  c.p.lse = nullptr;
  EXPECT_TRUE(validate(c.fwd()).ok());
}

TEST(Validation, MisalignedPointersCpu) {
  Valid c;
  c.p.k = reinterpret_cast<const char*>(c.k.data()) + 2;  // fp32 needs 4-byte alignment
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"k pointer", "misaligned", "multiple of 4 bytes"});
  Valid d;
  d.p.lse = reinterpret_cast<float*>(reinterpret_cast<char*>(d.lse.data()) + 1);
  expect_status(validate(d.fwd()), StatusCode::kInvalidArgument, {"lse pointer", "misaligned"});
}

// On CUDA every row is moved with 16-byte loads: pointers and strides must be
// 16-byte aligned. A build without CUDA refuses device CUDA first.
TEST(Validation, MisalignedPointersAndStridesCuda) {
  Valid c;
  c.p.device = Device::kCUDA;
  c.p.dtype = DType::kFloat16;
  c.p.q = reinterpret_cast<const char*>(c.q.data()) + 8;  // 8-byte aligned, not 16
  const Status st = validate(c.fwd());
  if (cuda_compiled()) {
    expect_status(st, StatusCode::kInvalidArgument, {"q pointer", "misaligned", "multiple of 16 bytes"});
    Valid d;
    d.p.device = Device::kCUDA;
    d.p.dtype = DType::kFloat16;
    d.p.k_row_stride += 4;  // 8 bytes in fp16
    expect_status(validate(d.fwd()), StatusCode::kInvalidArgument,
                  {"k row stride", "misaligned", "multiples of 8 elements (16 bytes)"});
  } else {
    expect_status(st, StatusCode::kNotCompiled, {"built without CUDA", "FLASHATTN_CUDA=ON"});
    expect_status(forward(c.fwd()), StatusCode::kNotCompiled, {"built without CUDA"});
  }
}

TEST(Validation, NegativeStrides) {
  Valid c;
  c.p.v_head_stride = -16;
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"v head stride is -16", "must be >= 0"});
  Valid d;
  d.p.q_batch_stride = -1;
  expect_status(validate(d.fwd()), StatusCode::kInvalidArgument, {"q batch stride is -1", "must be >= 0"});
}

TEST(Validation, OverlappingOutputHeads) {
  Valid c;
  c.p.o_head_stride = 8;  // < head_dim 16
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"o head stride 8", "overlap"});
}

TEST(Validation, ThirtyTwoBitOverflow) {
  {
    Valid c;
    c.p.seqlen_k = kInt32Max + int64_t{1};
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument,
                  {"seqlen_k = 2147483648", "32-bit index range", "2147483647"});
  }
  {
    Valid c;
    c.p.seqlen_q = int64_t{1} << 40;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"seqlen_q", "32-bit index range"});
  }
  {
    Valid c;
    c.p.batch = 65536;
    c.p.heads_q = 65536;
    c.p.heads_kv = 1;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument,
                  {"batch * heads_q = 4294967296", "32-bit index range", "2147483647"});
  }
  {
    Valid c;
    c.p.q_batch_stride = std::numeric_limits<int64_t>::max() / 2;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"q spans more than 2^63 bytes"});
  }
}

TEST(Validation, NonFiniteSoftmaxScale) {
  for (float s : {std::nanf(""), INFINITY, -INFINITY}) {
    Valid c;
    c.p.softmax_scale = s;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"softmax_scale must be finite", "0 means"});
  }
  Valid c;
  c.p.softmax_scale = -0.5f;  // negative but finite: allowed
  EXPECT_TRUE(validate(c.fwd()).ok());
}

TEST(Validation, NegativeOrNonFiniteSoftcap) {
  for (float s : {-1.0f, std::nanf(""), INFINITY}) {
    Valid c;
    c.p.softcap = s;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"softcap must be finite and >= 0", "0 disables"});
  }
}

TEST(Validation, WindowBelowMinusOne) {
  Valid c;
  c.p.window_left = -2;
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"window sizes must be >= -1", "(-2, -1)"});
  Valid d;
  d.p.window_right = -5;
  expect_status(validate(d.fwd()), StatusCode::kInvalidArgument, {"window sizes must be >= -1", "(-1, -5)"});
}

TEST(Validation, NegativeNumSplits) {
  Valid c;
  c.p.num_splits = -1;
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"num_splits must be >= 0"});
}

TEST(Validation, KernelDeviceMismatch) {
  for (Kernel k : {Kernel::kNaive, Kernel::kFA1, Kernel::kFA2, Kernel::kHopper}) {
    Valid c;
    c.p.kernel = k;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument,
                  {(std::string("kernel ") + kernel_name(k)).c_str(), "runs on CUDA, but device is CPU",
                   "reference or cpu_flash"});
  }
  for (Kernel k : {Kernel::kReference, Kernel::kCpuFlash}) {
    Valid c;
    c.p.kernel = k;
    c.p.device = Device::kCUDA;
    expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"runs on the CPU, but device is CUDA", "fa2"});
  }
  Valid c;
  c.p.kernel = static_cast<Kernel>(42);
  expect_status(validate(c.fwd()), StatusCode::kInvalidArgument, {"unknown kernel value 42"});
  Valid d;
  d.p.device = static_cast<Device>(3);
  expect_status(validate(d.fwd()), StatusCode::kInvalidArgument, {"device must be CPU or CUDA", "3"});
}

TEST(Validation, BackwardNeedsLseAndGradientBuffers) {
  Valid c;
  c.p.lse = nullptr;
  expect_status(validate(c.p), StatusCode::kInvalidArgument, {"backward needs lse", "log-sum-exp"});
  expect_status(backward(c.p), StatusCode::kInvalidArgument, {"backward needs lse"});
  for (const char* name : {"dout", "dq", "dk", "dv"}) {
    Valid d;
    const std::string n = name;
    if (n == "dout") d.p.dout = nullptr;
    if (n == "dq") d.p.dq = nullptr;
    if (n == "dk") d.p.dk = nullptr;
    if (n == "dv") d.p.dv = nullptr;
    expect_status(validate(d.p), StatusCode::kInvalidArgument, {(n + " is a null pointer").c_str()});
  }
  Valid e;
  e.p.dk_row_stride = -1;
  expect_status(validate(e.p), StatusCode::kInvalidArgument, {"dk row stride is -1"});
}

// Nothing is written when a request is refused.
TEST(Validation, RefusedRequestsLeaveOutputsUntouched) {
  Valid c;
  for (auto& x : c.o) x = 42.0f;
  c.p.seqlen_q = 0;
  EXPECT_FALSE(forward(c.fwd()).ok());
  for (float x : c.o) ASSERT_EQ(x, 42.0f);
}

// The throwing layer carries the same Status.
TEST(Validation, ThrowingLayer) {
  Valid c;
  c.p.batch = 0;
  try {
    forward_or_throw(c.fwd());
    FAIL() << "forward_or_throw did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code, StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("invalid argument: batch must be >= 1"), std::string::npos) << e.what();
  }
  Valid d;
  d.p.lse = nullptr;
  EXPECT_THROW(backward_or_throw(d.p), Error);
  Valid ok;
  EXPECT_NO_THROW(forward_or_throw(ok.fwd()));
  SoftmaxParams sp;
  try {
    softmax_or_throw(sp);
    FAIL() << "softmax_or_throw did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code, StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("rows"), std::string::npos) << e.what();
  }
  // Error is a std::runtime_error too.
  EXPECT_THROW(forward_or_throw(c.fwd()), std::runtime_error);
}

// --- Softmax ----------------------------------------------------------------

struct ValidSoftmax {
  std::vector<float> x = std::vector<float>(4 * 10, 1.0f), y = std::vector<float>(4 * 10, 0.0f);
  SoftmaxParams p;
  ValidSoftmax() {
    p.x = x.data();
    p.y = y.data();
    p.rows = 4;
    p.cols = 10;
    p.x_row_stride = p.y_row_stride = 10;
  }
};

TEST(ValidationSoftmax, BadParams) {
  {
    ValidSoftmax c;
    EXPECT_TRUE(softmax(c.p).ok());
  }
  {
    ValidSoftmax c;
    c.p.rows = 0;
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"rows must be >= 1 (got 0)"});
  }
  {
    ValidSoftmax c;
    c.p.cols = 0;
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"cols must be >= 1 (got 0)"});
  }
  {
    ValidSoftmax c;
    c.p.x_row_stride = 9;
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"row strides (x 9, y 10)", "must be >= cols (10)"});
  }
  {
    ValidSoftmax c;
    c.p.y_row_stride = -10;
    expect_status(softmax(c.p), StatusCode::kInvalidArgument, {"must be >= cols"});
  }
  {
    ValidSoftmax c;
    c.p.variant = static_cast<SoftmaxVariant>(9);
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"variant must be naive, safe or online", "9"});
  }
  {
    ValidSoftmax c;
    c.p.dtype = static_cast<DType>(-1);
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"dtype must be float32, float16 or bfloat16"});
  }
  {
    ValidSoftmax c;
    c.p.x = nullptr;
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"x is a null pointer"});
  }
  {
    ValidSoftmax c;
    c.p.y = reinterpret_cast<char*>(c.y.data()) + 1;
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"y pointer", "misaligned", "4 bytes"});
  }
  {
    ValidSoftmax c;
    c.p.rows = kInt32Max + int64_t{1};
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"rows", "32-bit index range"});
  }
  {
    ValidSoftmax c;
    c.p.x_row_stride = int64_t{1} << 62;
    expect_status(validate(c.p), StatusCode::kInvalidArgument, {"overflows 64-bit indexing"});
  }
  {
    ValidSoftmax c;
    c.p.device = Device::kCUDA;
    const Status st = validate(c.p);
    if (!cuda_compiled()) expect_status(st, StatusCode::kNotCompiled, {"built without CUDA"});
    else EXPECT_TRUE(st.ok()) << st.message;  // validate does not look at where the memory lives
  }
}

}  // namespace
}  // namespace flashattn
