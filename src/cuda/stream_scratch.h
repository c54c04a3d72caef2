// Device scratch whose counters a kernel finds zeroed and leaves zeroed: the
// split-KV decode's per-group arrival counters, the single-pass split-row
// softmax's per-row counters and the Hopper forward's tile counter use it, so
// none of them needs a memset launch per call.
//
// stream_scratch(tag, stream, zeroed_bytes, extra_bytes) returns
//   base                 zeroed_bytes that are zero when the next work queued on
//                        `stream` starts, provided every kernel that uses them
//                        leaves them zero again;
//   extra                extra_bytes of plain (not zeroed) space.
// One buffer per (tag, device, stream) -- per host thread for cudaStreamPerThread,
// which names a different stream in each thread. A buffer too small is replaced
// by one twice as big and the old one is kept, not freed: launches still queued
// on the stream may use it, and cudaFree would synchronize the device. While the
// stream is being captured into a CUDA graph the call gets its own stream-ordered
// allocation, zeroed by a memset node, that the caller frees after its launch
// (owned != nullptr), so graph replays never share counters with direct calls.
//
// Not guarded: a new stream that gets a destroyed stream's handle while the old
// stream's work still runs would share that stream's buffer.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "flashattn/status.h"

namespace flashattn {
namespace cuda {

enum class ScratchTag { kDecodeCounters = 0, kSoftmaxSinglePass = 1, kHopperTileCounter = 2 };

struct StreamScratch {
  char* base = nullptr;   // zeroed_bytes zeroed bytes
  char* extra = nullptr;  // extra_bytes, 256-byte aligned
  char* owned = nullptr;  // set while capturing: cudaFreeAsync it on the stream after the launch
};

Status stream_scratch(ScratchTag tag, cudaStream_t stream, size_t zeroed_bytes, size_t extra_bytes,
                      StreamScratch* out);

// Frees a capture-time allocation after the launch that used it (no-op otherwise).
cudaError_t release_stream_scratch(const StreamScratch& s, cudaStream_t stream);

}  // namespace cuda
}  // namespace flashattn
