// The per-(tag, device, stream) zeroed scratch registry (stream_scratch.h).
#include "cuda/stream_scratch.h"

#include <algorithm>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda/cuda_utils.cuh"

namespace flashattn {
namespace cuda {

namespace {
size_t round_up(size_t n) { return (n + 255) / 256 * 256; }
}  // namespace

Status stream_scratch(ScratchTag tag, cudaStream_t stream, size_t zeroed_bytes, size_t extra_bytes,
                      StreamScratch* out) {
  *out = StreamScratch{};
  zeroed_bytes = round_up(std::max<size_t>(zeroed_bytes, 1));
  extra_bytes = round_up(extra_bytes);

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
    (void)cudaGetLastError();
    capture = cudaStreamCaptureStatusActive;  // unsure: take the per-call allocation
  }
  if (capture != cudaStreamCaptureStatusNone) {
    FA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&out->owned), zeroed_bytes + extra_bytes, stream));
    const cudaError_t err = cudaMemsetAsync(out->owned, 0, zeroed_bytes, stream);
    if (err != cudaSuccess) {
      (void)cudaFreeAsync(out->owned, stream);
      *out = StreamScratch{};
      return cuda_status(err, "zeroing kernel scratch counters");
    }
    out->base = out->owned;
    out->extra = out->owned + zeroed_bytes;
    return Status::Ok();
  }

  struct Entry {
    ScratchTag tag;
    int device;
    cudaStream_t stream;
    std::thread::id thread;
    char* base;
    size_t zeroed_cap, extra_cap;
  };
  static std::mutex mu;
  static std::vector<Entry> entries;
  static std::vector<char*> retired;  // replaced buffers: queued work may still use them
  int device = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  const std::thread::id thread = stream == cudaStreamPerThread ? std::this_thread::get_id() : std::thread::id();
  std::lock_guard<std::mutex> lock(mu);
  Entry* e = nullptr;
  for (Entry& x : entries)
    if (x.tag == tag && x.device == device && x.stream == stream && x.thread == thread) e = &x;
  if (!e || e->zeroed_cap < zeroed_bytes || e->extra_cap < extra_bytes) {
    const size_t zeroed_cap = std::max({zeroed_bytes, e ? 2 * e->zeroed_cap : 0, size_t{16384}});
    const size_t extra_cap = std::max({extra_bytes, e ? 2 * e->extra_cap : 0});
    char* base = nullptr;
    FA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&base), zeroed_cap + extra_cap));
    // Stream-ordered: zero before any launch of this stream that uses it.
    const cudaError_t err = cudaMemsetAsync(base, 0, zeroed_cap, stream);
    if (err != cudaSuccess) {
      cudaFree(base);
      return cuda_status(err, "zeroing kernel scratch counters");
    }
    if (e) {
      retired.push_back(e->base);
      *e = Entry{tag, device, stream, thread, base, zeroed_cap, extra_cap};
    } else {
      entries.push_back(Entry{tag, device, stream, thread, base, zeroed_cap, extra_cap});
      e = &entries.back();
    }
  }
  out->base = e->base;
  out->extra = e->base + e->zeroed_cap;
  return Status::Ok();
}

cudaError_t release_stream_scratch(const StreamScratch& s, cudaStream_t stream) {
  return s.owned ? cudaFreeAsync(s.owned, stream) : cudaSuccess;
}

}  // namespace cuda
}  // namespace flashattn
