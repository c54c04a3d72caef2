// The one place where requests are checked. Kernels trust what passes here.
// Every message says what was wrong and what is allowed (README: "Errors").
#include <algorithm>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "common/mask.h"
#include "flashattn/flashattn.h"

namespace flashattn {
namespace {

constexpr int64_t kIndexLimit = std::numeric_limits<int32_t>::max();

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

bool valid_dtype(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16;
}

Status check_size(const char* name, int64_t value) {
  if (value < 1) return Status::Invalid(cat(name, " must be >= 1 (got ", value, ")"));
  if (value > kIndexLimit)
    return Status::Invalid(cat(name, " = ", value, " exceeds the 32-bit index range (at most ", kIndexLimit, ")"));
  return Status::Ok();
}

// Alignment a pointer/stride must have: the element size on the CPU; 16 bytes
// on CUDA, because every CUDA kernel moves rows with 16-byte vector loads.
int64_t required_alignment_bytes(Device device, DType dtype) {
  return device == Device::kCUDA ? 16 : dtype_size(dtype);
}

Status check_pointer(const char* name, const void* ptr, int64_t align_bytes, bool required = true) {
  if (ptr == nullptr) {
    if (required) return Status::Invalid(cat(name, " is a null pointer; it must point to the tensor's memory"));
    return Status::Ok();
  }
  if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(align_bytes) != 0)
    return Status::Invalid(cat(name, " pointer ", ptr, " is misaligned: it must be a multiple of ", align_bytes,
                               " bytes"));
  return Status::Ok();
}

// One [batch, seqlen, heads, dim] tensor: non-negative strides that keep the
// 16-byte alignment of every row on CUDA, and a largest offset that fits int64.
Status check_tensor(const char* name, int64_t batch, int64_t seqlen, int64_t heads, int64_t dim,
                    int64_t batch_stride, int64_t row_stride, int64_t head_stride, Device device, DType dtype) {
  const int64_t strides[3] = {batch_stride, row_stride, head_stride};
  const char* stride_names[3] = {"batch", "row", "head"};
  const int64_t elems_per_align = required_alignment_bytes(device, dtype) / dtype_size(dtype);
  for (int i = 0; i < 3; ++i) {
    if (strides[i] < 0)
      return Status::Invalid(cat(name, " ", stride_names[i], " stride is ", strides[i],
                                 "; strides must be >= 0 (in elements)"));
    if (strides[i] % elems_per_align != 0)
      return Status::Invalid(cat(name, " ", stride_names[i], " stride ", strides[i], " is misaligned: on ",
                                 device_name(device), " strides must be multiples of ", elems_per_align,
                                 " elements (", required_alignment_bytes(device, dtype), " bytes)"));
  }
  // Largest element offset, computed without overflow.
  const long double max_off = static_cast<long double>(batch - 1) * batch_stride +
                              static_cast<long double>(seqlen - 1) * row_stride +
                              static_cast<long double>(heads - 1) * head_stride + static_cast<long double>(dim);
  if (max_off * dtype_size(dtype) > static_cast<long double>(std::numeric_limits<int64_t>::max()))
    return Status::Invalid(cat(name, " spans more than 2^63 bytes: index overflow"));
  return Status::Ok();
}

Status check_device_and_kernel(Device device, Kernel kernel) {
  if (device != Device::kCPU && device != Device::kCUDA)
    return Status::Invalid(cat("device must be CPU or CUDA (got ", static_cast<int>(device), ")"));
  switch (kernel) {
    case Kernel::kAuto:
      return Status::Ok();
    case Kernel::kReference:
    case Kernel::kCpuFlash:
      if (device != Device::kCPU)
        return Status::Invalid(cat("kernel ", kernel_name(kernel), " runs on the CPU, but device is CUDA; "
                                   "on CUDA use auto, naive, fa1, fa2 or hopper"));
      return Status::Ok();
    case Kernel::kNaive:
    case Kernel::kFA1:
    case Kernel::kFA2:
    case Kernel::kHopper:
      if (device != Device::kCUDA)
        return Status::Invalid(cat("kernel ", kernel_name(kernel), " runs on CUDA, but device is CPU; "
                                   "on the CPU use auto, reference or cpu_flash"));
      return Status::Ok();
  }
  return Status::Invalid(cat("unknown kernel value ", static_cast<int>(kernel)));
}

#define FA_RETURN_IF_ERROR(expr)      \
  do {                                \
    Status _st = (expr);              \
    if (!_st.ok()) return _st;        \
  } while (0)

Status check_cuda_compiled(Device device) {
  if (device == Device::kCUDA && !cuda_compiled())
    return Status::NotCompiled("device is CUDA but this flashattn was built without CUDA "
                               "(configure with -DFLASHATTN_CUDA=ON)");
  return Status::Ok();
}

// --- Variable-length batches and KV caches (docs/07-inference.md) ----------
// The index arrays live in the memory of p.device. On the CPU every entry is
// checked here. On CUDA they are device memory and reading them would cost a
// synchronizing copy per call (decode calls are latency bound and get captured
// in CUDA graphs), so, as in flash-attn, their contents are the caller's
// contract there; the decode kernel clamps lengths to the capacity and skips
// out-of-range pages, so a bad entry gives wrong numbers, never a wild access.
Status check_varlen_kvcache(const FwdParams& p) {
  if (p.num_splits < 0) return Status::Invalid(cat("num_splits must be >= 0 (got ", p.num_splits, ")"));
  if (p.num_splits > 256) return Status::Invalid(cat("num_splits must be at most 256 (got ", p.num_splits, ")"));
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr))
    return Status::Invalid("cu_seqlens_q and cu_seqlens_k must be set together for a variable-length batch "
                           "(set both, or neither)");
  const bool host = p.device == Device::kCPU;
  if (p.total_q < 0 || p.total_k < 0)
    return Status::Invalid(cat("total_q / total_k must be >= 0 (0 = not given), got ", p.total_q, " / ", p.total_k));
  if ((p.total_q > 0 || p.total_k > 0) && !p.cu_seqlens_q)
    return Status::Invalid("total_q / total_k describe packed tensors: set them only with cu_seqlens_q / cu_seqlens_k");
  if (p.total_q > kIndexLimit || p.total_k > kIndexLimit)
    return Status::Invalid("total_q and total_k must fit in int32 (the cu_seqlens are int32)");
  if (p.block_table) {
    if (p.page_size < 1) return Status::Invalid(cat("block_table is set but page_size is ", p.page_size, " (need >= 1)"));
    if (p.num_pages < 1) return Status::Invalid(cat("block_table is set but num_pages is ", p.num_pages, " (need >= 1)"));
    if (p.num_pages > kIndexLimit || p.page_size > kIndexLimit)
      return Status::Invalid("num_pages and page_size must fit in int32");
    const int64_t pages_per_seq = (p.seqlen_k + p.page_size - 1) / p.page_size;
    if (p.batch > 1 && p.block_table_batch_stride < pages_per_seq)
      return Status::Invalid(cat("block_table_batch_stride ", p.block_table_batch_stride, " < ceil(seqlen_k / page_size) = ",
                                 pages_per_seq, ": each sequence's row of the block table needs one entry per page of "
                                 "its capacity seqlen_k"));
  } else if (p.page_size != 0 || p.num_pages != 0) {
    return Status::Invalid("page_size / num_pages are set but block_table is null");
  }
  if (!host) return Status::Ok();

  // Host: lengths of every sequence.
  for (int64_t b = 0; b < p.batch; ++b) {
    int64_t cap_k = p.seqlen_k;  // keys sequence b may hold (dense row, paged capacity)
    if (p.cu_seqlens_q) {
      const int64_t q0 = p.cu_seqlens_q[b], q1 = p.cu_seqlens_q[b + 1];
      const int64_t k0 = p.cu_seqlens_k[b], k1 = p.cu_seqlens_k[b + 1];
      if (b == 0 && (q0 < 0 || k0 < 0))
        return Status::Invalid(cat("cu_seqlens_q[0] / cu_seqlens_k[0] must be >= 0 (got ", q0, ", ", k0, ")"));
      if (q1 < q0)
        return Status::Invalid(cat("cu_seqlens_q must be non-decreasing: cu_seqlens_q[", b, "] = ", q0,
                                   " > cu_seqlens_q[", b + 1, "] = ", q1));
      if (k1 < k0)
        return Status::Invalid(cat("cu_seqlens_k must be non-decreasing: cu_seqlens_k[", b, "] = ", k0,
                                   " > cu_seqlens_k[", b + 1, "] = ", k1));
      if (q1 - q0 > p.seqlen_q)
        return Status::Invalid(cat("sequence ", b, " has ", q1 - q0, " query rows but seqlen_q (the maximum) is ",
                                   p.seqlen_q));
      if (k1 - k0 > p.seqlen_k)
        return Status::Invalid(cat("sequence ", b, " has ", k1 - k0, " keys but seqlen_k (the maximum) is ", p.seqlen_k));
      if (!p.block_table) cap_k = k1 - k0;
    }
    if (p.cu_seqlens_q && b == p.batch - 1) {
      if (p.total_q > 0 && p.cu_seqlens_q[p.batch] > p.total_q)
        return Status::Invalid(cat("cu_seqlens_q[batch] = ", p.cu_seqlens_q[p.batch], " exceeds total_q = ", p.total_q,
                                   " (the rows of the packed q)"));
      if (p.total_k > 0 && !p.block_table && p.cu_seqlens_k[p.batch] > p.total_k)
        return Status::Invalid(cat("cu_seqlens_k[batch] = ", p.cu_seqlens_k[p.batch], " exceeds total_k = ", p.total_k,
                                   " (the rows of the packed k/v)"));
    }
    int64_t len_k = cap_k;
    if (p.block_table && p.cu_seqlens_k) len_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    if (p.seqused_k) {
      len_k = p.seqused_k[b];
      if (len_k < 0 || len_k > cap_k)
        return Status::Invalid(cat("seqused_k[", b, "] = ", len_k, " is outside [0, ", cap_k,
                                   "]: a sequence cannot use more keys than its cache holds"));
    }
    if (p.block_table) {
      const int64_t used_pages = (len_k + p.page_size - 1) / p.page_size;
      for (int64_t j = 0; j < used_pages; ++j) {
        const int64_t page = p.block_table[b * p.block_table_batch_stride + j];
        if (page < 0 || page >= p.num_pages)
          return Status::Invalid(cat("block_table[", b, ", ", j, "] = ", page, " is out of range: pages are 0..",
                                     p.num_pages - 1));
      }
    }
  }
  return Status::Ok();
}

// Rows of a q-like tensor (q, o, dout, dq): dense [batch, seqlen_q] or packed [total_q].
Status check_q_like(const char* name, const FwdParams& p, int64_t dim, int64_t bs, int64_t rs, int64_t hs) {
  if (!p.cu_seqlens_q) return check_tensor(name, p.batch, p.seqlen_q, p.heads_q, dim, bs, rs, hs, p.device, p.dtype);
  // Packed: the batch stride is unused. total_q is known on the host, or when given.
  const int64_t total = p.device == Device::kCPU ? p.cu_seqlens_q[p.batch] : std::max<int64_t>(p.total_q, 1);
  return check_tensor(name, 1, total > 0 ? total : 1, p.heads_q, dim, 0, rs, hs, p.device, p.dtype);
}

// Rows of a k-like tensor (k, v, dk, dv): dense [batch, seqlen_k], packed [total_k] or a page pool.
Status check_k_like(const char* name, const FwdParams& p, int64_t dim, int64_t bs, int64_t rs, int64_t hs) {
  if (p.block_table)
    return check_tensor(name, p.num_pages, p.page_size, p.heads_kv, dim, bs, rs, hs, p.device, p.dtype);
  if (!p.cu_seqlens_k) return check_tensor(name, p.batch, p.seqlen_k, p.heads_kv, dim, bs, rs, hs, p.device, p.dtype);
  const int64_t total = p.device == Device::kCPU ? p.cu_seqlens_k[p.batch] : std::max<int64_t>(p.total_k, 1);
  return check_tensor(name, 1, total > 0 ? total : 1, p.heads_kv, dim, 0, rs, hs, p.device, p.dtype);
}

Status validate_problem(const FwdParams& p) {
  FA_RETURN_IF_ERROR(check_device_and_kernel(p.device, p.kernel));
  // Before anything device-specific (alignment rules): a CUDA request to a CPU-only build.
  FA_RETURN_IF_ERROR(check_cuda_compiled(p.device));
  if (!valid_dtype(p.dtype))
    return Status::Invalid(cat("dtype must be float32, float16 or bfloat16 (got ", static_cast<int>(p.dtype), ")"));
  FA_RETURN_IF_ERROR(check_size("batch", p.batch));
  FA_RETURN_IF_ERROR(check_size("seqlen_q", p.seqlen_q));
  FA_RETURN_IF_ERROR(check_size("seqlen_k", p.seqlen_k));
  FA_RETURN_IF_ERROR(check_size("heads_q", p.heads_q));
  FA_RETURN_IF_ERROR(check_size("heads_kv", p.heads_kv));
  FA_RETURN_IF_ERROR(check_size("head_dim", p.head_dim));
  if (p.heads_q % p.heads_kv != 0)
    return Status::Invalid(cat("heads_q (", p.heads_q, ") must be a multiple of heads_kv (", p.heads_kv,
                               ") for GQA/MQA"));
  if (p.head_dim % 8 != 0 || p.head_dim > 256)
    return Status::Unsupported(cat("head_dim ", p.head_dim, " is not supported: it must be a multiple of 8 "
                                   "between 8 and 256"));
  if (p.head_dim_v != 0 && p.head_dim_v != p.head_dim)
    return Status::Unsupported(cat("head_dim_v ", p.head_dim_v, " differs from head_dim ", p.head_dim,
                                   "; only head_dim_v == head_dim (or 0) is supported"));
  if (p.batch * p.heads_q > kIndexLimit)
    return Status::Invalid(cat("batch * heads_q = ", p.batch * p.heads_q, " exceeds the 32-bit index range (at most ",
                               kIndexLimit, ")"));
  if (p.batch * p.heads_q * p.seqlen_q > std::numeric_limits<int64_t>::max() / 8)
    return Status::Invalid("batch * heads_q * seqlen_q overflows 64-bit indexing");

  if (!(p.softmax_scale == p.softmax_scale) || p.softmax_scale == INFINITY || p.softmax_scale == -INFINITY)
    return Status::Invalid(cat("softmax_scale must be finite (got ", p.softmax_scale, "); 0 means 1/sqrt(head_dim)"));
  if (!(p.softcap >= 0.0f) || p.softcap == INFINITY)
    return Status::Invalid(cat("softcap must be finite and >= 0 (got ", p.softcap, "); 0 disables it"));
  if (p.window_left < -1 || p.window_right < -1)
    return Status::Invalid(cat("window sizes must be >= -1 (-1 = unbounded); got (", p.window_left, ", ",
                               p.window_right, ")"));

  FA_RETURN_IF_ERROR(check_varlen_kvcache(p));

  const int64_t align = required_alignment_bytes(p.device, p.dtype);
  const int64_t dv = p.head_dim_v ? p.head_dim_v : p.head_dim;
  FA_RETURN_IF_ERROR(check_pointer("q", p.q, align));
  FA_RETURN_IF_ERROR(check_pointer("k", p.k, align));
  FA_RETURN_IF_ERROR(check_pointer("v", p.v, align));
  FA_RETURN_IF_ERROR(check_pointer("o", p.o, align));
  FA_RETURN_IF_ERROR(check_pointer("lse", p.lse, 4, /*required=*/false));
  FA_RETURN_IF_ERROR(check_q_like("q", p, p.head_dim, p.q_batch_stride, p.q_row_stride, p.q_head_stride));
  FA_RETURN_IF_ERROR(check_k_like("k", p, p.head_dim, p.k_batch_stride, p.k_row_stride, p.k_head_stride));
  FA_RETURN_IF_ERROR(check_k_like("v", p, dv, p.v_batch_stride, p.v_row_stride, p.v_head_stride));
  FA_RETURN_IF_ERROR(check_q_like("o", p, dv, p.o_batch_stride, p.o_row_stride, p.o_head_stride));
  // Distinct output rows must not overlap, or threads would race on them.
  if (p.o_head_stride < dv && p.heads_q > 1)
    return Status::Invalid(cat("o head stride ", p.o_head_stride, " < head_dim ", dv, ": output rows overlap"));
  return Status::Ok();
}

}  // namespace

Status validate(const FwdParams& p) { return validate_problem(p); }

Status validate(const BwdParams& p) {
  FA_RETURN_IF_ERROR(validate_problem(p));
  if (p.lse == nullptr)
    return Status::Invalid("backward needs lse: pass the log-sum-exp saved by the forward pass");
  const int64_t align = required_alignment_bytes(p.device, p.dtype);
  const int64_t dv = p.head_dim_v ? p.head_dim_v : p.head_dim;
  FA_RETURN_IF_ERROR(check_pointer("dout", p.dout, align));
  FA_RETURN_IF_ERROR(check_pointer("dq", p.dq, align));
  FA_RETURN_IF_ERROR(check_pointer("dk", p.dk, align));
  FA_RETURN_IF_ERROR(check_pointer("dv", p.dv, align));
  FA_RETURN_IF_ERROR(check_q_like("dout", p, dv, p.dout_batch_stride, p.dout_row_stride, p.dout_head_stride));
  FA_RETURN_IF_ERROR(check_q_like("dq", p, p.head_dim, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride));
  FA_RETURN_IF_ERROR(check_k_like("dk", p, p.head_dim, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride));
  FA_RETURN_IF_ERROR(check_k_like("dv", p, dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride));
  return Status::Ok();
}

Status validate(const SoftmaxParams& p) {
  if (p.device != Device::kCPU && p.device != Device::kCUDA)
    return Status::Invalid(cat("device must be CPU or CUDA (got ", static_cast<int>(p.device), ")"));
  FA_RETURN_IF_ERROR(check_cuda_compiled(p.device));
  if (!valid_dtype(p.dtype))
    return Status::Invalid(cat("dtype must be float32, float16 or bfloat16 (got ", static_cast<int>(p.dtype), ")"));
  if (p.variant != SoftmaxVariant::kNaive && p.variant != SoftmaxVariant::kSafe &&
      p.variant != SoftmaxVariant::kOnline)
    return Status::Invalid(cat("softmax variant must be naive, safe or online (got ", static_cast<int>(p.variant),
                               ")"));
  FA_RETURN_IF_ERROR(check_size("rows", p.rows));
  if (p.cols < 1) return Status::Invalid(cat("cols must be >= 1 (got ", p.cols, ")"));
  if (p.cols > (int64_t{1} << 40)) return Status::Invalid(cat("cols = ", p.cols, " exceeds 2^40"));
  const int64_t align = required_alignment_bytes(p.device, p.dtype);
  FA_RETURN_IF_ERROR(check_pointer("x", p.x, p.device == Device::kCUDA ? dtype_size(p.dtype) : align));
  FA_RETURN_IF_ERROR(check_pointer("y", p.y, p.device == Device::kCUDA ? dtype_size(p.dtype) : align));
  if (p.rows > 1 && (p.x_row_stride < p.cols || p.y_row_stride < p.cols))
    return Status::Invalid(cat("row strides (x ", p.x_row_stride, ", y ", p.y_row_stride,
                               ") must be >= cols (", p.cols, ")"));
  // Largest element offset (rows - 1) * stride + cols, in bytes, must fit int64.
  for (int64_t stride : {p.x_row_stride, p.y_row_stride})
    if (p.rows > 1 && static_cast<long double>(p.rows - 1) * stride * dtype_size(p.dtype) >
                          static_cast<long double>(std::numeric_limits<int64_t>::max() / 2))
      return Status::Invalid(cat("rows (", p.rows, ") * row stride (", stride, ") overflows 64-bit indexing"));
  return Status::Ok();
}

}  // namespace flashattn
