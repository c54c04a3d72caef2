// flashattn._C: the nanobind binding of the C++ API (include/flashattn/flashattn.h).
//
// Tensors arrive through DLPack (nb::ndarray): torch, numpy, CuPy, JAX, ... on
// the CPU or CUDA, no libtorch involved. This layer only *describes* them in a
// params struct (pointers, element strides, shapes) and turns a non-ok Status
// into a Python exception; every check that the C++ API does itself
// (flashattn::validate) is left to it, so Python and C++ users get the same
// messages. Outputs are allocated by the Python side with the caller's array
// library and passed in, so nothing here owns memory.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "flashattn/flashattn.h"
#include "flashattn/kvcache.h"

#if FLASHATTN_WITH_CUDA
#include <cuda_runtime.h>

#include <vector>
#endif

namespace nb = nanobind;
using namespace nb::literals;

namespace flashattn {
namespace python {

// A non-ok Status goes back to Python as (code, message) and flashattn/_errors.py
// raises the matching exception there: no C++ exception and no exception type
// created in C++ is involved on that path. (On the GPU machine, with jaxlib,
// CuPy and torch loaded, raising a C++-created exception type from here
// segfaulted, both through an nb::exception translator and PyErr_SetString;
// the plain nb::value_error / nb::type_error of the argument checks did not.)
nb::object status_result(const Status& st) {
  if (st.ok()) return nb::none();
  return nb::make_tuple(static_cast<int>(st.code), nb::str(st.message.c_str()));
}

using InArray = nb::ndarray<nb::ro>;  // any dtype/shape/device; read-only view is enough
using OutArray = nb::ndarray<>;

// DLPack device types (dlpack.h): kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13.
constexpr int kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13;

// What we need to know about one array.
struct Desc {
  const char* name = "";
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device = Device::kCPU;
  int device_id = 0;
  int64_t ndim = 0;
  int64_t shape[8] = {};
  int64_t stride[8] = {};
};

std::string shape_str(const Desc& d) {
  std::string s = "[";
  for (int64_t i = 0; i < d.ndim; ++i) s += (i ? ", " : "") + std::to_string(d.shape[i]);
  return s + "]";
}

// dtype_override: -1 = read the DLPack dtype; otherwise a DType value that
// reinterprets a 16-bit container (numpy has no DLPack bfloat16: the Python side
// passes ml_dtypes.bfloat16 arrays as uint16 views).
template <typename Array>
Desc describe(const char* name, const Array& a, int dtype_override = -1) {
  Desc d;
  d.name = name;
  d.data = const_cast<void*>(static_cast<const void*>(a.data()));
  d.ndim = static_cast<int64_t>(a.ndim());
  if (d.ndim > 8) throw nb::value_error((std::string(name) + " has " + std::to_string(d.ndim) + " dimensions").c_str());
  for (int64_t i = 0; i < d.ndim; ++i) {
    d.shape[i] = static_cast<int64_t>(a.shape(i));
    d.stride[i] = a.stride(i);
  }
  const nb::dlpack::dtype t = a.dtype();
  const auto code = static_cast<nb::dlpack::dtype_code>(t.code);
  if (dtype_override >= 0 && code == nb::dlpack::dtype_code::UInt && t.bits == 16 && t.lanes == 1) {
    d.dtype = static_cast<DType>(dtype_override);
  } else if (code == nb::dlpack::dtype_code::Float && t.bits == 32 && t.lanes == 1) {
    d.dtype = DType::kFloat32;
  } else if (code == nb::dlpack::dtype_code::Float && t.bits == 16 && t.lanes == 1) {
    d.dtype = DType::kFloat16;
  } else if (code == nb::dlpack::dtype_code::Bfloat && t.bits == 16 && t.lanes == 1) {
    d.dtype = DType::kBFloat16;
  } else {
    throw nb::type_error((std::string(name) + " has an unsupported dtype (DLPack code " + std::to_string(t.code) +
                          ", " + std::to_string(t.bits) + " bits); flashattn takes float32, float16 or bfloat16")
                             .c_str());
  }
  switch (a.device_type()) {
    case kDLCPU:
    case kDLCUDAHost:
      d.device = Device::kCPU;
      break;
    case kDLCUDA:
    case kDLCUDAManaged:
      d.device = Device::kCUDA;
      break;
    default:
      throw nb::value_error((std::string(name) + " lives on DLPack device type " + std::to_string(a.device_type()) +
                             "; flashattn runs on the CPU or on CUDA")
                                .c_str());
  }
  d.device_id = d.device == Device::kCUDA ? a.device_id() : 0;
  return d;
}

void expect_rank(const Desc& d, int64_t rank, const char* layout) {
  if (d.ndim != rank)
    throw nb::value_error((std::string(d.name) + " must have " + std::to_string(rank) + " dimensions " + layout +
                           ", got shape " + shape_str(d))
                              .c_str());
}

// The C++ params take any batch/row/head strides but need the last dimension contiguous.
void expect_last_contiguous(const Desc& d) {
  for (int64_t i = 0; i < d.ndim; ++i)
    if (d.shape[i] == 0) return;  // empty: strides carry no meaning; validate() reports the zero size
  if (d.ndim > 0 && d.shape[d.ndim - 1] > 1 && d.stride[d.ndim - 1] != 1)
    throw nb::value_error((std::string(d.name) + ": the last dimension must be contiguous (stride 1), got stride " +
                           std::to_string(d.stride[d.ndim - 1]) + " for shape " + shape_str(d) +
                           "; make it contiguous first (e.g. .contiguous() / numpy.ascontiguousarray)")
                              .c_str());
}

void expect_same(const Desc& ref, const Desc& d) {
  if (d.dtype != ref.dtype)
    throw nb::type_error((std::string("dtype mismatch: ") + ref.name + " is " + dtype_name(ref.dtype) + " but " +
                          d.name + " is " + dtype_name(d.dtype) + "; all tensors must share one dtype")
                             .c_str());
  if (d.device != ref.device || d.device_id != ref.device_id)
    throw nb::value_error((std::string("device mismatch: ") + ref.name + " is on " + device_name(ref.device) +
                           (ref.device == Device::kCUDA ? ":" + std::to_string(ref.device_id) : std::string()) +
                           " but " + d.name + " is on " + device_name(d.device) +
                           (d.device == Device::kCUDA ? ":" + std::to_string(d.device_id) : std::string()))
                              .c_str());
}

void expect_shape(const Desc& d, std::initializer_list<int64_t> shape, const char* layout) {
  int64_t i = 0;
  bool ok = d.ndim == static_cast<int64_t>(shape.size());
  for (int64_t s : shape) ok = ok && d.shape[i++] == s;
  if (!ok) {
    std::string want = "[";
    i = 0;
    for (int64_t s : shape) want += (i++ ? ", " : "") + std::to_string(s);
    throw nb::value_error((std::string(d.name) + " must have shape " + want + "] " + layout + ", got " + shape_str(d))
                              .c_str());
  }
}

// [batch, seqlen, heads, dim] strides into a params struct.
void strides_of(const Desc& d, int64_t& bs, int64_t& rs, int64_t& hs) {
  bs = d.stride[0];
  rs = d.stride[1];
  hs = d.stride[2];
}

Kernel kernel_from(int k) {
  if (k < static_cast<int>(Kernel::kAuto) || k > static_cast<int>(Kernel::kHopper))
    throw nb::value_error(("unknown kernel id " + std::to_string(k)).c_str());
  return static_cast<Kernel>(k);
}

constexpr const char* kBSHD = "[batch, seqlen, heads, head_dim]";

// The options every forward binding passes the same way: mask, scale, softcap,
// dtype and device (from q), stream, kernel, CPU threads.
void set_options(FwdParams& p, const Desc& q, float softmax_scale, bool causal, int64_t window_left,
                 int64_t window_right, float softcap, int kernel, uintptr_t stream, int num_threads) {
  p.dtype = q.dtype;
  p.softmax_scale = softmax_scale;
  p.causal = causal;
  p.window_left = window_left;
  p.window_right = window_right;
  p.softcap = softcap;
  p.device = q.device;
  p.device_index = q.device == Device::kCUDA ? q.device_id : -1;
  p.stream = reinterpret_cast<void*>(stream);
  p.kernel = kernel_from(kernel);
  p.num_threads = num_threads;
}

// Shared by forward and backward: q, k, v (and o) into the FwdParams fields.
void fill_problem(FwdParams& p, const Desc& q, const Desc& k, const Desc& v, const Desc& o, float softmax_scale,
                  bool causal, int64_t window_left, int64_t window_right, float softcap, int kernel,
                  uintptr_t stream, int num_threads) {
  expect_rank(q, 4, kBSHD);
  expect_rank(k, 4, kBSHD);
  expect_rank(v, 4, kBSHD);
  for (const Desc* d : {&k, &v, &o}) expect_same(q, *d);
  for (const Desc* d : {&q, &k, &v, &o}) expect_last_contiguous(*d);
  if (k.shape[0] != q.shape[0] || v.shape[0] != q.shape[0])
    throw nb::value_error(("batch mismatch: q " + shape_str(q) + ", k " + shape_str(k) + ", v " + shape_str(v)).c_str());
  if (v.shape[1] != k.shape[1] || v.shape[2] != k.shape[2])
    throw nb::value_error(("k and v must share seqlen_k and heads_kv: k " + shape_str(k) + ", v " + shape_str(v)).c_str());
  if (k.shape[3] != q.shape[3])
    throw nb::value_error(("head_dim mismatch: q " + shape_str(q) + ", k " + shape_str(k)).c_str());
  expect_shape(o, {q.shape[0], q.shape[1], q.shape[2], v.shape[3]}, "(out)");

  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.o = o.data;
  strides_of(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  strides_of(k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  strides_of(v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  strides_of(o, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.batch = q.shape[0];
  p.seqlen_q = q.shape[1];
  p.seqlen_k = k.shape[1];
  p.heads_q = q.shape[2];
  p.heads_kv = k.shape[2];
  p.head_dim = q.shape[3];
  p.head_dim_v = v.shape[3];
  set_options(p, q, softmax_scale, causal, window_left, window_right, softcap, kernel, stream, num_threads);
}

void set_lse(FwdParams& p, const Desc& q, const std::optional<OutArray>& lse_arr) {
  if (!lse_arr) return;
  Desc lse = describe("lse", *lse_arr);
  if (lse.dtype != DType::kFloat32) throw nb::type_error("lse must be float32");
  if (lse.device != q.device || lse.device_id != q.device_id)
    throw nb::value_error("device mismatch: lse must live on the device of q");
  expect_shape(lse, {q.shape[0], q.shape[2], q.shape[1]}, "[batch, heads_q, seqlen_q]");
  if (lse.stride[2] != 1 || lse.stride[1] != q.shape[1] || lse.stride[0] != q.shape[1] * q.shape[2])
    throw nb::value_error("lse must be contiguous [batch, heads_q, seqlen_q]");
  p.lse = static_cast<float*>(lse.data);
}

nb::object fwd(const InArray& q_arr, const InArray& k_arr, const InArray& v_arr, const OutArray& o_arr,
         const std::optional<OutArray>& lse_arr, float softmax_scale, bool causal, int64_t window_left,
         int64_t window_right, float softcap, int kernel, uintptr_t stream, int num_threads, int dtype_override) {
  const Desc q = describe("q", q_arr, dtype_override), k = describe("k", k_arr, dtype_override),
             v = describe("v", v_arr, dtype_override), o = describe("out", o_arr, dtype_override);
  FwdParams p;
  fill_problem(p, q, k, v, o, softmax_scale, causal, window_left, window_right, softcap, kernel, stream, num_threads);
  set_lse(p, q, lse_arr);
  Status st;
  {
    nb::gil_scoped_release release;
    st = forward(p);
  }
  return status_result(st);
}

// The gradient arrays into p -- [batch, seqlen, heads, dim], or packed
// [total, heads, dim] (varlen: no batch stride) -- then the backward without the GIL.
nb::object run_backward(BwdParams& p, const Desc& dout, const Desc& dq, const Desc& dk, const Desc& dv,
                        bool deterministic) {
  auto strides = [](const Desc& d, int64_t& bs, int64_t& rs, int64_t& hs) {
    if (d.ndim == 3) {
      bs = 0;
      rs = d.stride[0];
      hs = d.stride[1];
    } else {
      strides_of(d, bs, rs, hs);
    }
  };
  p.dout = dout.data;
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  strides(dout, p.dout_batch_stride, p.dout_row_stride, p.dout_head_stride);
  strides(dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  strides(dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  strides(dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  p.deterministic = deterministic;
  Status st;
  {
    nb::gil_scoped_release release;
    st = backward(p);
  }
  return status_result(st);
}

nb::object bwd(const InArray& dout_arr, const InArray& q_arr, const InArray& k_arr, const InArray& v_arr,
         const InArray& o_arr, const OutArray& lse_arr, const OutArray& dq_arr, const OutArray& dk_arr,
         const OutArray& dv_arr, float softmax_scale, bool causal, int64_t window_left, int64_t window_right,
         float softcap, bool deterministic, int kernel, uintptr_t stream, int num_threads, int dtype_override) {
  const Desc q = describe("q", q_arr, dtype_override), k = describe("k", k_arr, dtype_override),
             v = describe("v", v_arr, dtype_override), o = describe("out", o_arr, dtype_override),
             dout = describe("dout", dout_arr, dtype_override), dq = describe("dq", dq_arr, dtype_override),
             dk = describe("dk", dk_arr, dtype_override), dv = describe("dv", dv_arr, dtype_override);
  BwdParams p;
  fill_problem(p, q, k, v, o, softmax_scale, causal, window_left, window_right, softcap, kernel, stream, num_threads);
  set_lse(p, q, lse_arr);
  for (const Desc* d : {&dout, &dq, &dk, &dv}) {
    expect_same(q, *d);
    expect_last_contiguous(*d);
  }
  expect_shape(dout, {o.shape[0], o.shape[1], o.shape[2], o.shape[3]}, "(like out)");
  expect_shape(dq, {q.shape[0], q.shape[1], q.shape[2], q.shape[3]}, "(like q)");
  expect_shape(dk, {k.shape[0], k.shape[1], k.shape[2], k.shape[3]}, "(like k)");
  expect_shape(dv, {v.shape[0], v.shape[1], v.shape[2], v.shape[3]}, "(like v)");
  return run_backward(p, dout, dq, dk, dv, deterministic);
}

// --- Variable-length batches and KV caches (include/flashattn/params.h, kvcache.h) ---

// An int32 index array (cu_seqlens, seqused_k / cache_seqlens, block_table):
// only the pointer, shape and strides; rows must be contiguous.
Desc describe_index(const char* name, const InArray& a, int64_t rank, const char* layout) {
  Desc d;
  d.name = name;
  d.data = const_cast<void*>(static_cast<const void*>(a.data()));
  d.ndim = static_cast<int64_t>(a.ndim());
  const nb::dlpack::dtype t = a.dtype();
  if (static_cast<nb::dlpack::dtype_code>(t.code) != nb::dlpack::dtype_code::Int || t.bits != 32 || t.lanes != 1)
    throw nb::type_error((std::string(name) + " must be int32 " + layout + " (got DLPack code " +
                          std::to_string(t.code) + ", " + std::to_string(t.bits) + " bits)")
                             .c_str());
  if (d.ndim != rank)
    throw nb::value_error((std::string(name) + " must have " + std::to_string(rank) + " dimension" +
                           (rank > 1 ? "s " : " ") + layout + ", got " + std::to_string(d.ndim))
                              .c_str());
  for (int64_t i = 0; i < d.ndim; ++i) {
    d.shape[i] = static_cast<int64_t>(a.shape(i));
    d.stride[i] = a.stride(i);
  }
  if (d.shape[rank - 1] > 1 && d.stride[rank - 1] != 1)
    throw nb::value_error((std::string(name) + ": the last dimension must be contiguous (stride 1)").c_str());
  switch (a.device_type()) {
    case kDLCPU:
    case kDLCUDAHost: d.device = Device::kCPU; break;
    case kDLCUDA:
    case kDLCUDAManaged: d.device = Device::kCUDA; break;
    default: throw nb::value_error((std::string(name) + " lives on an unsupported DLPack device").c_str());
  }
  d.device_id = d.device == Device::kCUDA ? a.device_id() : 0;
  return d;
}

void expect_index_on(const Desc& q, const Desc& d) {
  if (d.device != q.device || (q.device == Device::kCUDA && d.device_id != q.device_id))
    throw nb::value_error((std::string(d.name) + " must live on the device of q (" + device_name(q.device) +
                           "), got " + device_name(d.device))
                              .c_str());
}

constexpr const char* kPacked = "[total, heads, head_dim]";
constexpr const char* kPool = "[num_pages, page_size, heads_kv, head_dim] (a page pool: block_table is given)";

// Fill the FwdParams of a varlen / KV-cache forward (or the forward part of its backward).
//   q 3-D [total_q, hq, d] with cu_seqlens_q/k (packed), or 4-D [batch, seqlen_q, hq, d] (dense q: KV cache).
//   k/v: 3-D packed [total_k, hkv, d] (with cu_seqlens, no block_table), 4-D page pools (block_table),
//   or 4-D dense caches [batch_cache >= batch, capacity, hkv, d].
// seqused_k [batch] int32; block_table [batch, max_blocks] int32.
void fill_varlen(FwdParams& p, const Desc& q, const Desc& k, const Desc& v, const Desc& o,
                 const std::optional<InArray>& cu_q_arr, const std::optional<InArray>& cu_k_arr,
                 const std::optional<InArray>& seqused_arr, const std::optional<InArray>& bt_arr,
                 int64_t max_seqlen_q, int64_t max_seqlen_k, float softmax_scale, bool causal, int64_t window_left,
                 int64_t window_right, float softcap, int num_splits, int kernel, uintptr_t stream, int num_threads) {
  const bool packed = cu_q_arr.has_value();
  if (packed != cu_k_arr.has_value())
    throw nb::value_error("cu_seqlens_q and cu_seqlens_k must be given together");
  const bool paged = bt_arr.has_value();
  for (const Desc* d : {&k, &v, &o}) expect_same(q, *d);
  for (const Desc* d : {&q, &k, &v, &o}) expect_last_contiguous(*d);
  if (packed) {
    expect_rank(q, 3, "[total_q, heads_q, head_dim] (packed: cu_seqlens are given)");
  } else {
    expect_rank(q, 4, kBSHD);
  }
  if (paged) {
    expect_rank(k, 4, kPool);
    expect_rank(v, 4, kPool);
  } else if (packed) {
    expect_rank(k, 3, "[total_k, heads_kv, head_dim] (packed: cu_seqlens are given, no block_table)");
    expect_rank(v, 3, "[total_k, heads_kv, head_dim] (packed: cu_seqlens are given, no block_table)");
  } else {
    expect_rank(k, 4, "[batch, seqlen_cache, heads_kv, head_dim]");
    expect_rank(v, 4, "[batch, seqlen_cache, heads_kv, head_dim]");
  }
  const int64_t kd = k.ndim, qd = q.ndim;
  for (int64_t i = 0; i + 1 < kd; ++i)
    if (k.shape[i] != v.shape[i])
      throw nb::value_error(("k and v must share all but the last dimension: k " + shape_str(k) + ", v " +
                             shape_str(v)).c_str());
  if (k.shape[kd - 1] != q.shape[qd - 1])
    throw nb::value_error(("head_dim mismatch: q " + shape_str(q) + ", k " + shape_str(k)).c_str());
  if (packed)
    expect_shape(o, {q.shape[0], q.shape[1], v.shape[kd - 1]}, "(out)");
  else
    expect_shape(o, {q.shape[0], q.shape[1], q.shape[2], v.shape[kd - 1]}, "(out)");

  int64_t batch = 0;
  if (packed) {
    const Desc cq = describe_index("cu_seqlens_q", *cu_q_arr, 1, "[batch + 1]");
    const Desc ck = describe_index("cu_seqlens_k", *cu_k_arr, 1, "[batch + 1]");
    expect_index_on(q, cq);
    expect_index_on(q, ck);
    if (cq.shape[0] < 2)
      throw nb::value_error(("cu_seqlens_q must have batch + 1 >= 2 entries, got " + shape_str(cq)).c_str());
    if (ck.shape[0] != cq.shape[0])
      throw nb::value_error(("cu_seqlens_k must have as many entries as cu_seqlens_q (batch + 1 = " +
                             std::to_string(cq.shape[0]) + "), got " + shape_str(ck)).c_str());
    batch = cq.shape[0] - 1;
    p.cu_seqlens_q = static_cast<const int32_t*>(cq.data);
    p.cu_seqlens_k = static_cast<const int32_t*>(ck.data);
    if (q.device == Device::kCPU) {  // host memory: the packed tensors must hold every row
      const int64_t tq = p.cu_seqlens_q[batch], tk = p.cu_seqlens_k[batch];
      if (tq > q.shape[0])
        throw nb::value_error(("cu_seqlens_q[-1] = " + std::to_string(tq) + " but q has only " +
                               std::to_string(q.shape[0]) + " rows").c_str());
      if (!paged && tk > k.shape[0])
        throw nb::value_error(("cu_seqlens_k[-1] = " + std::to_string(tk) + " but k/v have only " +
                               std::to_string(k.shape[0]) + " rows").c_str());
    }
    p.seqlen_q = max_seqlen_q;
    p.seqlen_k = max_seqlen_k;
    p.total_q = q.shape[0];  // bounds the Hopper kernel's TMA reads (params.h)
    if (!paged) p.total_k = k.shape[0];
    p.q_batch_stride = p.o_batch_stride = 0;
    p.q_row_stride = q.stride[0];
    p.q_head_stride = q.stride[1];
    p.o_row_stride = o.stride[0];
    p.o_head_stride = o.stride[1];
    p.heads_q = q.shape[1];
  } else {
    batch = q.shape[0];
    p.seqlen_q = q.shape[1];
    strides_of(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
    strides_of(o, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
    p.heads_q = q.shape[2];
  }
  if (kd == 3) {
    p.k_batch_stride = p.v_batch_stride = 0;
    p.k_row_stride = k.stride[0];
    p.k_head_stride = k.stride[1];
    p.v_row_stride = v.stride[0];
    p.v_head_stride = v.stride[1];
    p.heads_kv = k.shape[1];
  } else {
    strides_of(k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    strides_of(v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    p.heads_kv = k.shape[2];
  }
  if (paged) {
    const Desc bt = describe_index("block_table", *bt_arr, 2, "[batch, max_blocks_per_seq]");
    expect_index_on(q, bt);
    if (bt.shape[0] != batch)
      throw nb::value_error(("block_table must have one row per sequence (batch = " + std::to_string(batch) +
                             "), got " + shape_str(bt)).c_str());
    p.block_table = static_cast<const int32_t*>(bt.data);
    p.block_table_batch_stride = bt.stride[0];
    p.page_size = k.shape[1];
    p.num_pages = k.shape[0];
    const int64_t cap = bt.shape[1] * p.page_size;
    if (!packed) p.seqlen_k = cap;
    if (p.seqlen_k > cap)
      throw nb::value_error(("max_seqlen_k = " + std::to_string(p.seqlen_k) + " exceeds what block_table " +
                             shape_str(bt) + " can address with page_size " + std::to_string(p.page_size) + " (" +
                             std::to_string(cap) + ")").c_str());
  } else if (!packed) {
    if (k.shape[0] < batch)
      throw nb::value_error(("the KV cache holds " + std::to_string(k.shape[0]) + " sequences but q has batch " +
                             std::to_string(batch)).c_str());
    p.seqlen_k = k.shape[1];
  }
  if (seqused_arr) {
    const Desc su = describe_index("seqused_k", *seqused_arr, 1, "[batch]");
    expect_index_on(q, su);
    if (su.shape[0] != batch)
      throw nb::value_error(("seqused_k / cache_seqlens must have batch = " + std::to_string(batch) +
                             " entries, got " + shape_str(su)).c_str());
    p.seqused_k = static_cast<const int32_t*>(su.data);
  }
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.o = o.data;
  p.batch = batch;
  p.head_dim = q.shape[qd - 1];
  p.head_dim_v = v.shape[kd - 1];
  p.num_splits = num_splits;
  set_options(p, q, softmax_scale, causal, window_left, window_right, softcap, kernel, stream, num_threads);
}

void set_lse_varlen(FwdParams& p, const Desc& q, const std::optional<OutArray>& lse_arr, bool required) {
  if (!lse_arr) {
    if (required) throw nb::value_error("backward needs lse (from the forward with return_lse=True)");
    return;
  }
  Desc lse = describe("lse", *lse_arr);
  if (lse.dtype != DType::kFloat32) throw nb::type_error("lse must be float32");
  if (lse.device != q.device || lse.device_id != q.device_id)
    throw nb::value_error("device mismatch: lse must live on the device of q");
  expect_shape(lse, {p.batch, p.heads_q, p.seqlen_q}, "[batch, heads_q, max_seqlen_q]");
  if (lse.stride[2] != 1 || lse.stride[1] != p.seqlen_q || lse.stride[0] != p.seqlen_q * p.heads_q)
    throw nb::value_error("lse must be contiguous [batch, heads_q, max_seqlen_q]");
  p.lse = static_cast<float*>(lse.data);
}

nb::object fwd_varlen(const InArray& q_arr, const InArray& k_arr, const InArray& v_arr, const OutArray& o_arr,
                      const std::optional<OutArray>& lse_arr, const std::optional<InArray>& cu_q,
                      const std::optional<InArray>& cu_k, const std::optional<InArray>& seqused_k,
                      const std::optional<InArray>& block_table, int64_t max_seqlen_q, int64_t max_seqlen_k,
                      float softmax_scale, bool causal, int64_t window_left, int64_t window_right, float softcap,
                      int num_splits, int kernel, uintptr_t stream, int num_threads, int dtype_override) {
  const Desc q = describe("q", q_arr, dtype_override), k = describe("k", k_arr, dtype_override),
             v = describe("v", v_arr, dtype_override), o = describe("out", o_arr, dtype_override);
  FwdParams p;
  fill_varlen(p, q, k, v, o, cu_q, cu_k, seqused_k, block_table, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
              window_left, window_right, softcap, num_splits, kernel, stream, num_threads);
  set_lse_varlen(p, q, lse_arr, false);
  Status st;
  {
    nb::gil_scoped_release release;
    st = forward(p);
  }
  return status_result(st);
}

nb::object bwd_varlen(const InArray& dout_arr, const InArray& q_arr, const InArray& k_arr, const InArray& v_arr,
                      const InArray& o_arr, const OutArray& lse_arr, const OutArray& dq_arr, const OutArray& dk_arr,
                      const OutArray& dv_arr, const std::optional<InArray>& cu_q, const std::optional<InArray>& cu_k,
                      const std::optional<InArray>& seqused_k, const std::optional<InArray>& block_table,
                      int64_t max_seqlen_q, int64_t max_seqlen_k, float softmax_scale, bool causal,
                      int64_t window_left, int64_t window_right, float softcap, bool deterministic, int kernel,
                      uintptr_t stream, int num_threads, int dtype_override) {
  const Desc q = describe("q", q_arr, dtype_override), k = describe("k", k_arr, dtype_override),
             v = describe("v", v_arr, dtype_override), o = describe("out", o_arr, dtype_override),
             dout = describe("dout", dout_arr, dtype_override), dq = describe("dq", dq_arr, dtype_override),
             dk = describe("dk", dk_arr, dtype_override), dv = describe("dv", dv_arr, dtype_override);
  BwdParams p;
  fill_varlen(p, q, k, v, o, cu_q, cu_k, seqused_k, block_table, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
              window_left, window_right, softcap, 0, kernel, stream, num_threads);
  set_lse_varlen(p, q, std::optional<OutArray>(lse_arr), true);
  for (const Desc* d : {&dout, &dq, &dk, &dv}) {
    expect_same(q, *d);
    expect_last_contiguous(*d);
  }
  auto like = [](const Desc& d, const Desc& ref, const char* what) {
    bool ok = d.ndim == ref.ndim;
    for (int64_t i = 0; ok && i < d.ndim; ++i) ok = d.shape[i] == ref.shape[i];
    if (!ok)
      throw nb::value_error((std::string(d.name) + " must have the shape of " + what + " " + shape_str(ref) +
                             ", got " + shape_str(d)).c_str());
  };
  like(dout, o, "out");
  like(dq, q, "q");
  like(dk, k, "k");
  like(dv, v, "v");
  return run_backward(p, dout, dq, dk, dv, deterministic);
}

// In-place KV-cache append (flashattn::append_kv), optionally with rotary on the
// new keys and, in place, on q. Caches: dense [batch_cache >= batch, capacity, hkv, d]
// or page pools [num_pages, page_size, hkv, d] with block_table.
nb::object append_kv_py(const InArray& k_new_arr, const InArray& v_new_arr, const OutArray& k_cache_arr,
                        const OutArray& v_cache_arr, const InArray& cache_seqlens_arr,
                        const std::optional<InArray>& bt_arr, const std::optional<InArray>& cos_arr,
                        const std::optional<InArray>& sin_arr, bool rotary_interleaved,
                        const std::optional<OutArray>& q_arr, uintptr_t stream, int dtype_override) {
  const Desc kn = describe("k", k_new_arr, dtype_override), vn = describe("v", v_new_arr, dtype_override),
             kc = describe("k_cache", k_cache_arr, dtype_override),
             vc = describe("v_cache", v_cache_arr, dtype_override);
  for (const Desc* d : {&vn, &kc, &vc}) expect_same(kn, *d);
  for (const Desc* d : {&kn, &vn, &kc, &vc}) expect_last_contiguous(*d);
  expect_rank(kn, 4, "[batch, seqlen_new, heads_kv, head_dim]");
  expect_rank(vn, 4, "[batch, seqlen_new, heads_kv, head_dim]");
  const bool paged = bt_arr.has_value();
  expect_rank(kc, 4, paged ? kPool : "[batch, seqlen_cache, heads_kv, head_dim]");
  expect_rank(vc, 4, paged ? kPool : "[batch, seqlen_cache, heads_kv, head_dim]");
  for (int64_t i = 0; i < 3; ++i)
    if (kn.shape[i] != vn.shape[i])
      throw nb::value_error(("new k and v must share batch, seqlen_new and heads_kv: k " + shape_str(kn) + ", v " +
                             shape_str(vn)).c_str());
  if (kn.shape[2] != kc.shape[2] || kn.shape[3] != kc.shape[3] || vn.shape[3] != vc.shape[3] ||
      kc.shape[0] != vc.shape[0] || kc.shape[1] != vc.shape[1] || kc.shape[2] != vc.shape[2])
    throw nb::value_error(("new k/v must match the caches' heads_kv and head_dim: k " + shape_str(kn) + ", v " +
                           shape_str(vn) + ", k_cache " + shape_str(kc) + ", v_cache " + shape_str(vc)).c_str());
  KvAppendParams p;
  p.batch = kn.shape[0];
  p.seqlen_new = kn.shape[1];
  p.heads_kv = kn.shape[2];
  p.head_dim = kn.shape[3];
  p.head_dim_v = vn.shape[3];
  p.dtype = kn.dtype;
  p.device = kn.device;
  p.device_index = kn.device == Device::kCUDA ? kn.device_id : -1;
  p.stream = reinterpret_cast<void*>(stream);
  p.k_new = kn.data;
  p.v_new = vn.data;
  p.k_cache = kc.data;
  p.v_cache = vc.data;
  strides_of(kn, p.k_new_batch_stride, p.k_new_row_stride, p.k_new_head_stride);
  strides_of(vn, p.v_new_batch_stride, p.v_new_row_stride, p.v_new_head_stride);
  strides_of(kc, p.k_cache_batch_stride, p.k_cache_row_stride, p.k_cache_head_stride);
  strides_of(vc, p.v_cache_batch_stride, p.v_cache_row_stride, p.v_cache_head_stride);
  const Desc cs = describe_index("cache_seqlens", cache_seqlens_arr, 1, "[batch]");
  expect_index_on(kn, cs);
  if (cs.shape[0] != p.batch)
    throw nb::value_error(("cache_seqlens must have batch = " + std::to_string(p.batch) + " entries, got " +
                           shape_str(cs)).c_str());
  p.cache_seqlens = static_cast<const int32_t*>(cs.data);
  if (paged) {
    const Desc bt = describe_index("block_table", *bt_arr, 2, "[batch, max_blocks_per_seq]");
    expect_index_on(kn, bt);
    if (bt.shape[0] != p.batch)
      throw nb::value_error(("block_table must have one row per sequence (batch = " + std::to_string(p.batch) +
                             "), got " + shape_str(bt)).c_str());
    p.block_table = static_cast<const int32_t*>(bt.data);
    p.block_table_batch_stride = bt.stride[0];
    p.page_size = kc.shape[1];
    p.num_pages = kc.shape[0];
    p.capacity = bt.shape[1] * p.page_size;
  } else {
    if (kc.shape[0] < p.batch)
      throw nb::value_error(("the KV cache holds " + std::to_string(kc.shape[0]) + " sequences but k has batch " +
                             std::to_string(p.batch)).c_str());
    p.capacity = kc.shape[1];
  }
  if (cos_arr.has_value() != sin_arr.has_value())
    throw nb::value_error("rotary_cos and rotary_sin must be given together");
  if (cos_arr) {
    const Desc c = describe("rotary_cos", *cos_arr), s = describe("rotary_sin", *sin_arr);
    for (const Desc* d : {&c, &s}) {
      if (d->dtype != DType::kFloat32) throw nb::type_error((std::string(d->name) + " must be float32").c_str());
      expect_rank(*d, 2, "[max_position, rotary_dim / 2]");
      expect_index_on(kn, *d);
      if (d->shape[1] > 1 && d->stride[1] != 1) throw nb::value_error("rotary tables must be contiguous");
      if (d->shape[0] > 1 && d->stride[0] != d->shape[1]) throw nb::value_error("rotary tables must be contiguous");
    }
    if (c.shape[0] != s.shape[0] || c.shape[1] != s.shape[1])
      throw nb::value_error(("rotary_cos " + shape_str(c) + " and rotary_sin " + shape_str(s) +
                             " must have the same shape").c_str());
    p.rotary_cos = static_cast<const float*>(c.data);
    p.rotary_sin = static_cast<const float*>(s.data);
    p.rotary_dim = 2 * c.shape[1];
    p.rotary_max_pos = c.shape[0];
    p.rotary_interleaved = rotary_interleaved;
  }
  if (q_arr) {
    const Desc q = describe("q", *q_arr, dtype_override);
    expect_same(kn, q);
    expect_last_contiguous(q);
    expect_rank(q, 4, kBSHD);
    if (q.shape[0] != p.batch || q.shape[1] != p.seqlen_new || q.shape[3] != p.head_dim)
      throw nb::value_error(("q to rotate must be [batch, seqlen_new, heads_q, head_dim] like k " + shape_str(kn) +
                             ", got " + shape_str(q)).c_str());
    p.q = q.data;
    strides_of(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
    p.heads_q = q.shape[2];
  }
  Status st;
  {
    nb::gil_scoped_release release;
    st = append_kv(p);
  }
  return status_result(st);
}

// Row softmax over the last dimension. Leading dimensions are folded into rows,
// which needs them to be one uniformly strided run (true for any contiguous
// array and for row-sliced views).
int64_t fold_rows(const Desc& d, int64_t& row_stride) {
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < d.ndim; ++i) rows *= d.shape[i];
  row_stride = d.ndim >= 2 ? d.stride[d.ndim - 2] : d.shape[0];
  for (int64_t i = 0; i + 2 < d.ndim; ++i) {
    if (d.shape[i] > 1 && d.shape[i + 1] > 0 && d.stride[i] != d.stride[i + 1] * d.shape[i + 1])
      throw nb::value_error((std::string(d.name) + " of shape " + shape_str(d) +
                             ": the leading dimensions cannot be folded into rows with one stride; "
                             "make it contiguous first")
                                .c_str());
  }
  if (rows <= 1) row_stride = d.shape[d.ndim - 1];
  return rows;
}

nb::object softmax_rows(const InArray& x_arr, const OutArray& y_arr, int variant, uintptr_t stream, int num_threads,
                  int dtype_override) {
  const Desc x = describe("x", x_arr, dtype_override), y = describe("y", y_arr, dtype_override);
  if (x.ndim < 1) throw nb::value_error("softmax needs at least one dimension");
  expect_same(x, y);
  expect_last_contiguous(x);
  expect_last_contiguous(y);
  if (y.ndim != x.ndim) throw nb::value_error("y must have the shape of x");
  for (int64_t i = 0; i < x.ndim; ++i)
    if (y.shape[i] != x.shape[i]) throw nb::value_error("y must have the shape of x");
  if (variant < 0 || variant > static_cast<int>(SoftmaxVariant::kOnline))
    throw nb::value_error(("unknown softmax variant id " + std::to_string(variant)).c_str());
  SoftmaxParams p;
  p.x = x.data;
  p.y = y.data;
  p.cols = x.shape[x.ndim - 1];
  p.rows = fold_rows(x, p.x_row_stride);
  fold_rows(y, p.y_row_stride);
  p.dtype = x.dtype;
  p.variant = static_cast<SoftmaxVariant>(variant);
  p.device = x.device;
  p.device_index = x.device == Device::kCUDA ? x.device_id : -1;
  p.stream = reinterpret_cast<void*>(stream);
  p.num_threads = num_threads;
  Status st;
  {
    nb::gil_scoped_release release;
    st = softmax(p);
  }
  return status_result(st);
}

// The raw entry: contiguous tensors given as integer addresses, no DLPack, no
// checks beyond flashattn::validate. Exists to measure what the array handling
// of fwd() and the Python wrapper cost on top of the C++ call.
// Params of the raw entries: contiguous tensors given as integer addresses.
FwdParams raw_params(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse, int64_t batch,
                     int64_t seqlen_q, int64_t seqlen_k, int64_t heads_q, int64_t heads_kv, int64_t head_dim,
                     int dtype, int device, int device_index, bool causal, uintptr_t stream, int kernel) {
  FwdParams p;
  p.kernel = kernel_from(kernel);
  p.q = reinterpret_cast<const void*>(q);
  p.k = reinterpret_cast<const void*>(k);
  p.v = reinterpret_cast<const void*>(v);
  p.o = reinterpret_cast<void*>(o);
  p.lse = reinterpret_cast<float*>(lse);
  p.batch = batch;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  p.head_dim = head_dim;
  p.dtype = static_cast<DType>(dtype);
  p.device = static_cast<Device>(device);
  p.device_index = device_index;
  p.causal = causal;
  p.stream = reinterpret_cast<void*>(stream);
  set_contiguous_strides(p);
  return p;
}

nb::object fwd_raw(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse, int64_t batch, int64_t seqlen_q,
             int64_t seqlen_k, int64_t heads_q, int64_t heads_kv, int64_t head_dim, int dtype, int device,
             int device_index, bool causal, uintptr_t stream, int kernel) {
  const FwdParams p = raw_params(q, k, v, o, lse, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype,
                                 device, device_index, causal, stream, kernel);
  Status st;
  {
    nb::gil_scoped_release release;
    st = forward(p);
  }
  return status_result(st);
}

#if FLASHATTN_WITH_CUDA
// The C++ side of python/bench/overhead.py's end-to-end comparison, timed the
// way flashattn-bench --gpu times a row (bench/bench_gpu.cpp, time_gpu): on
// `stream`, `warmup` untimed calls, then `reps` back-to-back forward() calls,
// each between its own pair of CUDA events, no synchronization until the end.
// Returns the milliseconds of every call (the caller takes the median).
std::vector<float> time_fwd_raw_events(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t lse,
                                       int64_t batch, int64_t seqlen_q, int64_t seqlen_k, int64_t heads_q,
                                       int64_t heads_kv, int64_t head_dim, int dtype, int device_index, bool causal,
                                       uintptr_t stream, int warmup, int reps, int kernel) {
  const FwdParams p = raw_params(q, k, v, o, lse, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype,
                                 static_cast<int>(Device::kCUDA), device_index, causal, stream, kernel);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int n = reps > 0 ? reps : 1;
  std::vector<float> ms(n, 0.0f);
  std::vector<cudaEvent_t> starts(n, nullptr), stops(n, nullptr);
  Status st;
  cudaError_t err = cudaSuccess;
  {
    nb::gil_scoped_release release;
    for (int i = 0; i < n && err == cudaSuccess; ++i) {
      err = cudaEventCreate(&starts[i]);
      if (err == cudaSuccess) err = cudaEventCreate(&stops[i]);
    }
    for (int i = 0; i < warmup && st.ok() && err == cudaSuccess; ++i) st = forward(p);
    for (int i = 0; i < n && st.ok() && err == cudaSuccess; ++i) {
      err = cudaEventRecord(starts[i], s);
      st = forward(p);
      if (err == cudaSuccess) err = cudaEventRecord(stops[i], s);
    }
    if (err == cudaSuccess) err = cudaStreamSynchronize(s);
    for (int i = 0; i < n && st.ok() && err == cudaSuccess; ++i) err = cudaEventElapsedTime(&ms[i], starts[i], stops[i]);
    for (int i = 0; i < n; ++i) {
      if (starts[i]) cudaEventDestroy(starts[i]);
      if (stops[i]) cudaEventDestroy(stops[i]);
    }
  }
  if (!st.ok()) throw std::runtime_error(st.message);
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA error while timing: ") + cudaGetErrorString(err));
  return ms;
}
#endif

}  // namespace python
}  // namespace flashattn

NB_MODULE(_C, m) {
  using namespace flashattn::python;
  m.doc() =
      "flashattn C++ API, bound with nanobind; tensors through DLPack. Use the flashattn package, not this: "
      "fwd/bwd/softmax return None or (StatusCode, message), which flashattn raises as a Python exception.";

  m.def("fwd", &fwd, "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(), "out"_a.noconvert(),
        "lse"_a.noconvert().none(), "softmax_scale"_a, "causal"_a, "window_left"_a, "window_right"_a, "softcap"_a,
        "kernel"_a, "stream"_a, "num_threads"_a, "dtype_override"_a);
  m.def("bwd", &bwd, "dout"_a.noconvert(), "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(),
        "out"_a.noconvert(), "lse"_a.noconvert(), "dq"_a.noconvert(), "dk"_a.noconvert(), "dv"_a.noconvert(),
        "softmax_scale"_a, "causal"_a, "window_left"_a, "window_right"_a, "softcap"_a, "deterministic"_a, "kernel"_a,
        "stream"_a, "num_threads"_a, "dtype_override"_a);
  m.def("fwd_varlen", &fwd_varlen, "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(), "out"_a.noconvert(),
        "lse"_a.noconvert().none(), "cu_seqlens_q"_a.noconvert().none(), "cu_seqlens_k"_a.noconvert().none(),
        "seqused_k"_a.noconvert().none(), "block_table"_a.noconvert().none(), "max_seqlen_q"_a, "max_seqlen_k"_a,
        "softmax_scale"_a, "causal"_a, "window_left"_a, "window_right"_a, "softcap"_a, "num_splits"_a, "kernel"_a,
        "stream"_a, "num_threads"_a, "dtype_override"_a);
  m.def("bwd_varlen", &bwd_varlen, "dout"_a.noconvert(), "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(),
        "out"_a.noconvert(), "lse"_a.noconvert(), "dq"_a.noconvert(), "dk"_a.noconvert(), "dv"_a.noconvert(),
        "cu_seqlens_q"_a.noconvert().none(), "cu_seqlens_k"_a.noconvert().none(), "seqused_k"_a.noconvert().none(),
        "block_table"_a.noconvert().none(), "max_seqlen_q"_a, "max_seqlen_k"_a, "softmax_scale"_a, "causal"_a,
        "window_left"_a, "window_right"_a, "softcap"_a, "deterministic"_a, "kernel"_a, "stream"_a, "num_threads"_a,
        "dtype_override"_a);
  m.def("append_kv", &append_kv_py, "k"_a.noconvert(), "v"_a.noconvert(), "k_cache"_a.noconvert(),
        "v_cache"_a.noconvert(), "cache_seqlens"_a.noconvert(), "block_table"_a.noconvert().none(),
        "rotary_cos"_a.noconvert().none(), "rotary_sin"_a.noconvert().none(), "rotary_interleaved"_a,
        "q"_a.noconvert().none(), "stream"_a, "dtype_override"_a);
  m.def("softmax", &softmax_rows, "x"_a.noconvert(), "y"_a.noconvert(), "variant"_a, "stream"_a, "num_threads"_a,
        "dtype_override"_a);
  m.def("fwd_raw", &fwd_raw, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "batch"_a, "seqlen_q"_a, "seqlen_k"_a,
        "heads_q"_a, "heads_kv"_a, "head_dim"_a, "dtype"_a, "device"_a, "device_index"_a, "causal"_a, "stream"_a,
        "kernel"_a = 0);
#if FLASHATTN_WITH_CUDA
  m.def("time_fwd_raw_events", &time_fwd_raw_events, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "batch"_a,
        "seqlen_q"_a, "seqlen_k"_a, "heads_q"_a, "heads_kv"_a, "head_dim"_a, "dtype"_a, "device_index"_a, "causal"_a,
        "stream"_a, "warmup"_a, "reps"_a, "kernel"_a = 0);
#endif
  m.def("cuda_compiled", &flashattn::cuda_compiled);
  m.def("cuda_device_count", &flashattn::cuda_device_count);
  m.def("version", [] { return std::string(flashattn::version()); });
}
