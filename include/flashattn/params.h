// Parameter structs of the flashattn C++ API: one plain struct per operation.
//
// The structs hold raw pointers and int64_t strides (in elements, never bytes),
// so any framework's tensors can be described without copying. They are
// checked once, at the API boundary (flashattn::validate); kernels trust them.
//
// Attention tensors use flash-attn's layout [batch, seqlen, heads, head_dim]
// with the last dimension contiguous (stride 1). Batch, row (seqlen) and head
// strides are free, so views (e.g. q/k/v slices of one packed qkv tensor) work.
#pragma once

#include <cstdint>

namespace flashattn {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class Device : int { kCPU = 0, kCUDA = 1 };

// Which implementation runs. kAuto picks the fastest one compiled for the
// device and the request; the others pin one rung of the ladder (useful for
// teaching, testing and benchmarking). An implementation that cannot handle a
// request says why (StatusCode::kUnsupported), it never falls back silently.
enum class Kernel : int {
  kAuto = 0,
  kReference,  // CPU: naive 3-pass attention accumulating in double (the test oracle)
  kCpuFlash,   // CPU: tiled, online softmax, SIMD, multithreaded
  kNaive,      // CUDA rung 1: S = QK^T in HBM, softmax kernel, O = PV
  kFA1,        // CUDA rung 2: FlashAttention-1, one thread per query row
  kFA2,        // CUDA rung 3: FlashAttention-2 on tensor cores (mma.sync, sm80+)
  kHopper,     // CUDA rung 4: wgmma + TMA + warp specialization (sm90a)
};

const char* dtype_name(DType dtype);
const char* device_name(Device device);
const char* kernel_name(Kernel kernel);
int64_t dtype_size(DType dtype);

// ---------------------------------------------------------------------------
// Forward: O = softmax(mask(softcap(scale * Q K^T))) V, and optionally LSE.
// ---------------------------------------------------------------------------
struct FwdParams {
  // Inputs. q: [batch, seqlen_q, heads_q, head_dim]; k: [batch, seqlen_k, heads_kv, head_dim];
  // v: [batch, seqlen_k, heads_kv, head_dim_v]. All of `dtype`.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  // Output o: [batch, seqlen_q, heads_q, head_dim_v], of `dtype`.
  void* o = nullptr;
  // Optional output (nullptr = not wanted): log-sum-exp of each row of the
  // scaled, masked scores (natural log), fp32, contiguous [batch, heads_q, seqlen_q].
  // A fully masked row gets -inf (and its O row is 0).
  float* lse = nullptr;

  // Strides in elements. The head_dim stride is 1 by contract.
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;

  int64_t batch = 0;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;
  int64_t heads_q = 0;
  int64_t heads_kv = 0;    // heads_q % heads_kv == 0; query head h reads kv head h / (heads_q / heads_kv)
  int64_t head_dim = 0;    // multiple of 8, at most 256
  int64_t head_dim_v = 0;  // 0 = same as head_dim (the only value supported for now)
  DType dtype = DType::kFloat32;

  // Scale applied to Q K^T before softmax; 0 means 1/sqrt(head_dim).
  float softmax_scale = 0.0f;
  // Causal mask aligned to the bottom-right corner (flash-attn >= 2.1):
  // query i sees key j iff j <= i + seqlen_k - seqlen_q. Same as window_right = 0.
  bool causal = false;
  // Sliding window, also bottom-right aligned: query i sees key j iff
  //   i + seqlen_k - seqlen_q - window_left <= j <= i + seqlen_k - seqlen_q + window_right.
  // -1 = unbounded on that side.
  int64_t window_left = -1;
  int64_t window_right = -1;
  // Soft-capping of the scores (Gemma 2): s = softcap * tanh(scale * q.k / softcap). 0 = off.
  float softcap = 0.0f;

  // --- Variable-length batches (flash_attn_varlen_func). When cu_seqlens_q is
  // set, q and o are packed [total_q, heads, dim]: sequence b owns rows
  // cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1 and the batch strides are ignored;
  // likewise k/v with cu_seqlens_k. seqlen_q / seqlen_k then mean the maximum
  // lengths (max_seqlen_q / max_seqlen_k). int32 prefix sums of batch + 1
  // entries, in the memory of `device`. Masks align per sequence.
  // LSE stays [batch, heads_q, seqlen_q] (rows past a sequence's end unused).
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  // Rows of the packed q/o and k/v tensors (cu_seqlens_q[batch], cu_seqlens_k[batch]),
  // 0 = not given. Optional: on CUDA the cu_seqlens live in device memory, and the
  // Hopper kernel needs these host-side to bound its TMA reads, so a varlen
  // request without them runs on the FA2 rung instead.
  int64_t total_q = 0;
  int64_t total_k = 0;
  // --- KV cache: number of valid keys of sequence b (cache_seqlens); keys at or
  // past it are ignored. [batch] int32, nullptr = all seqlen_k keys are valid.
  const int32_t* seqused_k = nullptr;
  // Paged KV cache: when block_table is set, k and v are page pools
  // [num_pages, page_size, heads_kv, dim] (k/v batch strides step over pages)
  // and key j of sequence b lives in page block_table[b * block_table_batch_stride + j / page_size],
  // row j % page_size. Any page_size >= 1.
  // Lengths (docs/07-inference.md): sequence b has seqused_k[b] keys if set, else
  // cu_seqlens_k[b+1] - cu_seqlens_k[b] if set, else seqlen_k. The capacity of a
  // sequence is seqlen_k (dense or paged; a block-table row holds
  // ceil(seqlen_k / page_size) entries, only those of used pages are read) or
  // its cu_seqlens_k span (varlen, unpaged). With a block table, cu_seqlens_k
  // only gives lengths (keys are found through the table, not at cu offsets).
  // A sequence with 0 keys gets O = 0 and LSE = -inf. On the CPU every index is
  // validated; on CUDA the index arrays' contents are the caller's contract.
  const int32_t* block_table = nullptr;
  int64_t block_table_batch_stride = 0;
  int64_t page_size = 0;
  int64_t num_pages = 0;
  // Split-KV (flash-decoding): 0 = heuristic, 1 = no split, n = force n splits
  // (at most 256). On CUDA a request that sets it (or seqused_k / block_table /
  // cu_seqlens) with few query rows per kv head goes to the decode kernel.
  int num_splits = 0;

  // Where the pointers live and where to run. stream is a cudaStream_t (nullptr
  // = the legacy default stream); device_index is the CUDA ordinal (-1 = current).
  Device device = Device::kCPU;
  int device_index = -1;
  void* stream = nullptr;
  Kernel kernel = Kernel::kAuto;
  int num_threads = 0;  // CPU only: 0 = all hardware threads
};

// ---------------------------------------------------------------------------
// Backward: given dO, recompute P from the saved LSE and produce dQ, dK, dV
// (the FlashAttention-2 backward). dK/dV sum over the query heads of a KV group.
// The inherited forward fields describe the problem (q, k, v, o, lse are inputs
// here; lse is required and must come from the forward with the same options).
// ---------------------------------------------------------------------------
struct BwdParams : FwdParams {
  const void* dout = nullptr;  // [batch, seqlen_q, heads_q, head_dim_v]
  void* dq = nullptr;          // [batch, seqlen_q, heads_q, head_dim]
  void* dk = nullptr;          // [batch, seqlen_k, heads_kv, head_dim]
  void* dv = nullptr;          // [batch, seqlen_k, heads_kv, head_dim_v]

  int64_t dout_batch_stride = 0, dout_row_stride = 0, dout_head_stride = 0;
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;

  // Bit-identical gradients across runs (no order-dependent atomics).
  bool deterministic = false;
};

// ---------------------------------------------------------------------------
// Row softmax over a [rows, cols] matrix (the first exercise of the ladder).
// ---------------------------------------------------------------------------
enum class SoftmaxVariant : int {
  kNaive = 0,  // exp(x) / sum exp(x): overflows for large x, kept to show why
  kSafe,       // two passes: max, then sum of exp(x - max)
  kOnline,     // one pass: running max and rescaled running sum (docs/01-online-softmax.md)
};
const char* softmax_variant_name(SoftmaxVariant variant);

struct SoftmaxParams {
  const void* x = nullptr;
  void* y = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t x_row_stride = 0;  // elements; columns are contiguous
  int64_t y_row_stride = 0;
  DType dtype = DType::kFloat32;  // x and y share it; math is fp32
  SoftmaxVariant variant = SoftmaxVariant::kOnline;

  Device device = Device::kCPU;
  int device_index = -1;
  void* stream = nullptr;
  int num_threads = 0;
};

// Fill the strides of a params struct for densely packed [batch, seqlen, heads, dim] tensors.
void set_contiguous_strides(FwdParams& p);
void set_contiguous_strides(BwdParams& p);

}  // namespace flashattn
