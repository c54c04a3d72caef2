// decode_forward: what the split-KV decode kernels accept (docs/07-inference.md),
// then the head-dim switch. The kernels themselves are in decode_kernel.cuh.
#include <algorithm>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/decode/decode_kernel.cuh"

namespace flashattn {
namespace cuda {
namespace decode {
template <int D> Status run_decode(const FwdParams& p);

// The fused combine's counters (decode_launch.cuh): one zeroed buffer per
// (device, stream) -- per host thread too for cudaStreamPerThread, which names
// a different stream in each thread. A buffer that is too small is replaced by
// one twice as big; the old one is kept (not freed: launches still queued on
// the stream may use it, and cudaFree would synchronize the device), so at most
// as many bytes again are held. A stream's buffer outlives the stream (a few
// bytes); a new stream that gets a destroyed one's handle while the old
// stream's work still runs would share counters with it (not guarded). For CUDA
// graphs: make one call on the stream before capturing (the first buffer is a
// cudaMalloc), and do not replay a graph concurrently with direct calls on the
// stream it was captured from (they would share counters).
Status group_counters(cudaStream_t stream, int64_t count, unsigned int** counters) {
  struct Entry {
    int device;
    cudaStream_t stream;
    std::thread::id thread;
    unsigned int* ptr;
    int64_t capacity;
  };
  static std::mutex mu;
  static std::vector<Entry> entries;
  static std::vector<unsigned int*> retired;
  int device = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  const std::thread::id thread = stream == cudaStreamPerThread ? std::this_thread::get_id() : std::thread::id();
  std::lock_guard<std::mutex> lock(mu);
  Entry* e = nullptr;
  for (Entry& x : entries)
    if (x.device == device && x.stream == stream && x.thread == thread) e = &x;
  if (e && e->capacity >= count) {
    *counters = e->ptr;
    return Status::Ok();
  }
  const int64_t capacity = std::max<int64_t>({count, e ? 2 * e->capacity : 0, 4096});
  unsigned int* ptr = nullptr;
  FA_CUDA_CHECK(cudaMalloc(&ptr, capacity * sizeof(unsigned int)));
  // Stream-ordered: zero before any launch of this stream that uses it.
  cudaError_t err = cudaMemsetAsync(ptr, 0, capacity * sizeof(unsigned int), stream);
  if (err != cudaSuccess) {
    cudaFree(ptr);
    return cuda_status(err, "zeroing the split-KV combine counters");
  }
  if (e) {
    retired.push_back(e->ptr);
    e->ptr = ptr;
    e->capacity = capacity;
  } else {
    entries.push_back(Entry{device, stream, thread, ptr, capacity});
  }
  *counters = ptr;
  return Status::Ok();
}
}  // namespace decode

Status decode_forward(const FwdParams& p) {
  if (p.dtype == DType::kFloat32)
    return Status::Unsupported("the CUDA decode kernel (KV cache / varlen / split-KV) runs on float16 and bfloat16 "
                               "only (tensor cores); float32 KV-cache attention is supported on the CPU");
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t rows = group * p.seqlen_q;
  if (rows > decode::kTileRows * decode::kMaxRowTiles)
    return Status::Unsupported("the CUDA decode kernel packs (heads_q / heads_kv) x seqlen_q = " +
                               std::to_string(rows) + " query rows per kv head; it handles at most " +
                               std::to_string(decode::kTileRows * decode::kMaxRowTiles) +
                               " (decode / small chunked prefill). Longer varlen prefill goes to FA2 (no paged cache) — a paged one has no CUDA "
                               "kernel yet (run it on the CPU, or densely)");
  if (p.batch > 65535 || p.heads_kv * ((rows + decode::kTileRows - 1) / decode::kTileRows) > 65535)
    return Status::Unsupported("the CUDA decode kernel needs batch <= 65535 and heads_kv * row tiles <= 65535");
  switch (p.head_dim) {
#if FLASHATTN_HAS_HDIM_64
    case 64: return decode::run_decode<64>(p);
#endif
#if FLASHATTN_HAS_HDIM_128
    case 128: return decode::run_decode<128>(p);
#endif
    default: break;
  }
  return Status::Unsupported("the CUDA decode kernel is built for head dims 64 and 128 (those in "
                             "FLASHATTN_HEADDIMS); head_dim " + std::to_string(p.head_dim) + " is not compiled");
}

}  // namespace cuda
}  // namespace flashattn
