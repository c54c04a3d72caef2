// Row softmax on the GPU: y[r, :] = softmax(x[r, :]) for a [rows, cols] matrix.
// The three variants of docs/01-online-softmax.md:
//   naive  (1): l = sum exp(x),                y = exp(x) / l           (overflows for x > 88)
//   safe   (2): m = max x, then l = sum exp(x - m), then y = exp(x - m) / l   (x read 2-3 times)
//   online (3)/(4): one pass keeps (m, l) and rescales l whenever m grows; partial (m, l)
//           of threads, warps, blocks and row chunks merge exactly with equation (4).
//
// Launch shapes, picked by the row length (host code at the bottom):
//   short rows  (cols <= 1024):  one warp per row held in registers, shuffle reductions only.
//   medium rows (row fits 96 KiB): one block per row; the row is cached in shared
//                memory by the first pass, so x is read from HBM exactly once.
//   long rows / few rows: the row is cut into chunks of one block each.
//     single pass (default): each block keeps its chunk in registers, publishes the
//                chunk's (m, l), waits for the other chunks of its row, merges all of
//                them with equation (4) and writes its chunk: x read once, y written once.
//                Needs every chunk of a row co-resident (cooperative launch).
//     two pass (fallback when a row has more chunks than fit on the GPU at once):
//                kernel 1 writes each chunk's (m, l), kernel 2 merges the row's
//                partials with equation (4) and normalizes its chunk (x read twice).
// Loads and stores are 16-byte vectors when pointers and strides allow it,
// scalar otherwise (validate only guarantees element alignment here).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cuda/atomic>
#include <type_traits>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/softmax_rows.cuh"
#include "cuda/stream_scratch.h"
#include "flashattn/online_softmax.h"

namespace flashattn {
namespace cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpRowsThreads = 256;          // warp-per-row kernel: 8 rows per block
constexpr int64_t kWarpRowMaxCols = 1024;      // rows up to this length take one warp
constexpr int64_t kMaxCacheBytes = 96 * 1024;  // block-per-row: row cached in smem up to this
constexpr int kSplitThreads = 512;

struct RowArgs {
  const void* x;
  void* y;
  float* lse;  // optional, one per row
  int64_t rows, cols, x_stride, y_stride;
  SoftmaxVariant variant;
};

// VEC elements of T moved as one 16-byte access (VEC = 1: a plain scalar).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int N>
__device__ __forceinline__ void unpack(const Pack<T, N>& pk, float (&f)[N]) {
#pragma unroll
  for (int e = 0; e < N; ++e) f[e] = to_float(pk.v[e]);
}

// ---------------------------------------------------------------------------
// Per-thread folding of N values into running statistics, per variant.
// ---------------------------------------------------------------------------
// Online, equation (4) with the N values as one block: one rescale per vector
// instead of one per element (equation (3) applied N times gives the same m, l).
template <int N>
__device__ __forceinline__ void fold_online(SoftmaxStats& s, const float (&v)[N]) {
  float vmax = v[0];
#pragma unroll
  for (int e = 1; e < N; ++e) vmax = fmaxf(vmax, v[e]);
  if (vmax == -INFINITY) return;  // nothing visible: (-inf, 0) is the identity of (4)
  const float m = fmaxf(s.max, vmax);
  float l = s.sum * rescale_factor(s.max, m);
#pragma unroll
  for (int e = 0; e < N; ++e) l += expf(v[e] - m);
  s.max = m;
  s.sum = l;
}

// ---------------------------------------------------------------------------
// Reductions of SoftmaxStats across a warp / a block, all with equation (4).
// A max-only reduction is (m, 0); a sum with a shared max is (M, l) — both are
// special cases of the merge, so one routine serves every variant.
// ---------------------------------------------------------------------------
__device__ __forceinline__ SoftmaxStats warp_merge(SoftmaxStats s) {
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off /= 2) {
    SoftmaxStats o;
    o.max = __shfl_xor_sync(0xffffffffu, s.max, off);
    o.sum = __shfl_xor_sync(0xffffffffu, s.sum, off);
    s = merge(s, o);
  }
  return s;
}

// red: __shared__ SoftmaxStats[32]. Every thread of the block must call it.
template <bool kBlock>
__device__ __forceinline__ SoftmaxStats group_merge(SoftmaxStats s, SoftmaxStats* red) {
  s = warp_merge(s);
  if (!kBlock) return s;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  if (lane == 0) red[warp] = s;
  __syncthreads();
  if (warp == 0) {
    SoftmaxStats t = lane < nwarps ? red[lane] : SoftmaxStats{};
    t = warp_merge(t);
    if (lane == 0) red[kWarpSize] = t;
  }
  __syncthreads();
  s = red[kWarpSize];
  __syncthreads();  // red may be reused right away
  return s;
}

// ---------------------------------------------------------------------------
// One row (or one chunk of a row) handled by a group of `nthreads` threads.
// Thread t touches vectors t, t + nthreads, ... in every pass, so the smem
// cache written in the first pass is read back by the same thread (no sync).
// ---------------------------------------------------------------------------
template <typename T, int VEC>
struct RowSlice {
  const T* x;
  T* y;
  int64_t n;     // elements in this slice
  T* cache;      // shared-memory copy of the slice (nullptr: re-read x)
  int tid, nthreads;

  // f(vals[N]) for every element; `first` = this pass reads HBM (fills the cache).
  template <typename F>
  __device__ __forceinline__ void for_each(bool first, F&& f) const {
    const int64_t nvec = n / VEC;
    const bool from_cache = cache != nullptr && !first;
#pragma unroll 4
    for (int64_t i = tid; i < nvec; i += nthreads) {
      const T* src = from_cache ? cache + i * VEC : x + i * VEC;
      const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(src);
      if (first && cache != nullptr) *reinterpret_cast<Pack<T, VEC>*>(cache + i * VEC) = pk;
      float v[VEC];
      unpack(pk, v);
      f(v, i * VEC);
    }
    for (int64_t c = nvec * VEC + tid; c < n; c += nthreads) {  // tail: n % VEC elements
      const T t = from_cache ? cache[c] : x[c];
      if (first && cache != nullptr) cache[c] = t;
      float v[1] = {to_float(t)};
      f(v, c);
    }
  }
};

// Statistics (m, l) of a slice, merged over the group: the variant's passes.
template <bool kBlock, typename T, int VEC>
__device__ SoftmaxStats slice_stats(const RowSlice<T, VEC>& r, SoftmaxVariant variant, SoftmaxStats* red) {
  SoftmaxStats s;
  if (variant == SoftmaxVariant::kOnline) {
    // One pass: equation (3)/(4) per vector, then (4) across the group.
    r.for_each(true, [&](const auto& v, int64_t) { fold_online(s, v); });
    return group_merge<kBlock>(s, red);
  }
  if (variant == SoftmaxVariant::kSafe) {
    // Pass 1: the max; pass 2: the sum of exp(x - max).
    r.for_each(true, [&](const auto& v, int64_t) {
      for (float e : v) s.max = fmaxf(s.max, e);
    });
    s = group_merge<kBlock>(s, red);
    const float m = s.max;
    float l = 0.0f;
    if (m != -INFINITY)
      r.for_each(false, [&](const auto& v, int64_t) {
        for (float e : v) l += expf(e - m);
      });
    return group_merge<kBlock>(SoftmaxStats{m, l}, red);
  }
  // Naive: m is pinned to 0, l = sum exp(x) (inf once some x > 88).
  float l = 0.0f;
  r.for_each(true, [&](const auto& v, int64_t) {
    for (float e : v) l += expf(e);
  });
  return group_merge<kBlock>(SoftmaxStats{0.0f, l}, red);
}

// y = exp(x - m) / l. A row with nothing visible (m = -inf, l = 0) gets y = 0.
template <typename T, int VEC>
__device__ __forceinline__ void slice_normalize(const RowSlice<T, VEC>& r, SoftmaxStats s) {
  const float m = s.max == -INFINITY ? 0.0f : s.max;
  const float inv_l = s.sum > 0.0f ? 1.0f / s.sum : 0.0f;
  r.for_each(false, [&](const auto& v, int64_t col) {
    constexpr int N = sizeof(v) / sizeof(float);
    Pack<T, N> out;
#pragma unroll
    for (int e = 0; e < N; ++e) out.v[e] = from_float<T>(expf(v[e] - m) * inv_l);
    *reinterpret_cast<Pack<T, N>*>(r.y + col) = out;
  });
}

// ---------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------
// Short rows: warp w of the block owns row blockIdx.x * warps + w, held in
// registers (at most kWarpRowMaxCols / 32 = 32 values per lane), so every
// variant reads x from HBM once and all of a lane's loads are in flight together.
template <typename T, int VEC>
__global__ void __launch_bounds__(kWarpRowsThreads) softmax_warp_rows_kernel(RowArgs a) {
  constexpr int kPer = kWarpRowMaxCols / kWarpSize / VEC;  // vectors per lane
  const int64_t row = int64_t{blockIdx.x} * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= a.rows) return;  // whole warps leave; no block-wide sync below
  const int lane = threadIdx.x % kWarpSize;
  const T* x = static_cast<const T*>(a.x) + row * a.x_stride;
  T* y = static_cast<T*>(a.y) + row * a.y_stride;
  const int nvec = static_cast<int>(a.cols / VEC), tail = static_cast<int>(a.cols % VEC);

  float v[kPer][VEC];  // vector k of this lane is vector lane + 32 k of the row; -inf past the end
  float t[1];          // element nvec * VEC + lane of the tail (VEC > 1 only)
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = lane + kWarpSize * k;
    if (i < nvec) {
      unpack(*reinterpret_cast<const Pack<T, VEC>*>(x + i * VEC), v[k]);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[k][e] = -INFINITY;
    }
  }
  t[0] = lane < tail ? to_float(x[nvec * VEC + lane]) : -INFINITY;

  SoftmaxStats s;
  if (a.variant == SoftmaxVariant::kOnline) {  // (3)/(4) per vector, (4) across the warp
#pragma unroll
    for (int k = 0; k < kPer; ++k) fold_online(s, v[k]);
    fold_online(s, t);
    s = warp_merge(s);
  } else if (a.variant == SoftmaxVariant::kSafe) {  // (2): max, then sum, both from registers
    float m = t[0];
#pragma unroll
    for (int k = 0; k < kPer; ++k)
#pragma unroll
      for (int e = 0; e < VEC; ++e) m = fmaxf(m, v[k][e]);
    m = warp_merge(SoftmaxStats{m, 0.0f}).max;
    float l = 0.0f;
    if (m != -INFINITY) {
#pragma unroll
      for (int k = 0; k < kPer; ++k)
#pragma unroll
        for (int e = 0; e < VEC; ++e) l += expf(v[k][e] - m);
      l += expf(t[0] - m);
    }
    s = warp_merge(SoftmaxStats{m, l});
  } else {  // (1): m pinned to 0
    float l = expf(t[0]);
#pragma unroll
    for (int k = 0; k < kPer; ++k)
#pragma unroll
      for (int e = 0; e < VEC; ++e) l += expf(v[k][e]);
    s = warp_merge(SoftmaxStats{0.0f, l});
  }

  const float m = s.max == -INFINITY ? 0.0f : s.max;
  const float inv_l = s.sum > 0.0f ? 1.0f / s.sum : 0.0f;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = lane + kWarpSize * k;
    if (i < nvec) {
      Pack<T, VEC> out;
#pragma unroll
      for (int e = 0; e < VEC; ++e) out.v[e] = from_float<T>(expf(v[k][e] - m) * inv_l);
      *reinterpret_cast<Pack<T, VEC>*>(y + i * VEC) = out;
    }
  }
  if (lane < tail) y[nvec * VEC + lane] = from_float<T>(expf(t[0] - m) * inv_l);
  if (a.lse && lane == 0) a.lse[row] = log_sum_exp(s);
}

// Medium rows: one block per row, row cached in dynamic shared memory.
template <typename T, int VEC>
__global__ void __launch_bounds__(1024) softmax_block_rows_kernel(RowArgs a) {
  extern __shared__ uint4 cache_raw[];  // uint4: 16-byte aligned
  __shared__ SoftmaxStats red[kWarpSize + 1];
  const int64_t row = blockIdx.x;
  RowSlice<T, VEC> r{static_cast<const T*>(a.x) + row * a.x_stride, static_cast<T*>(a.y) + row * a.y_stride,
                     a.cols, reinterpret_cast<T*>(cache_raw), static_cast<int>(threadIdx.x),
                     static_cast<int>(blockDim.x)};
  const SoftmaxStats s = slice_stats<true>(r, a.variant, red);
  slice_normalize(r, s);
  if (a.lse && threadIdx.x == 0) a.lse[row] = log_sum_exp(s);
}

// Long rows, kernel 1: block (row, split) writes the partial (m, l) of its chunk.
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads) softmax_split_stats_kernel(RowArgs a, int64_t chunk, int splits,
                                                                           SoftmaxStats* partial) {
  __shared__ SoftmaxStats red[kWarpSize + 1];
  const int64_t row = blockIdx.x / splits, split = blockIdx.x % splits;
  const int64_t c0 = split * chunk;
  RowSlice<T, VEC> r{static_cast<const T*>(a.x) + row * a.x_stride + c0, nullptr, min(chunk, a.cols - c0), nullptr,
                     static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)};
  const SoftmaxStats s = slice_stats<true>(r, a.variant, red);
  if (threadIdx.x == 0) partial[row * splits + split] = s;
}

// Long rows, kernel 2: merge the row's partials with equation (4), normalize the chunk.
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads) softmax_split_normalize_kernel(RowArgs a, int64_t chunk,
                                                                               int splits,
                                                                               const SoftmaxStats* partial) {
  __shared__ SoftmaxStats red[kWarpSize + 1];
  const int64_t row = blockIdx.x / splits, split = blockIdx.x % splits;
  SoftmaxStats s;
  for (int k = threadIdx.x; k < splits; k += blockDim.x) s = merge(s, partial[row * splits + k]);
  s = group_merge<true>(s, red);
  const int64_t c0 = split * chunk;
  RowSlice<T, VEC> r{static_cast<const T*>(a.x) + row * a.x_stride + c0,
                     static_cast<T*>(a.y) + row * a.y_stride + c0, min(chunk, a.cols - c0), nullptr,
                     static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)};
  slice_normalize(r, s);
  if (a.lse && split == 0 && threadIdx.x == 0) a.lse[row] = log_sum_exp(s);
}

// ---------------------------------------------------------------------------
// Long rows, single pass: one cooperative launch of persistent blocks.
//
// Work item t is chunk t % splits of row t / splits. Block b first takes item b,
// then items grid + (atomicAdd on scratch.ticket), in ticket order. The block
//   1. loads the chunk into registers (kPackets 16-byte packets per thread, 32 values),
//   2. computes the chunk's (m, l) with the variant's rule ((1), (2) or (3)/(4)),
//   3. publishes it to scratch.partial and counts itself in scratch.arrived[row]
//      (release), then waits until all `splits` chunks of the row arrived (acquire),
//   4. merges the row's partials with equation (4) and writes its chunk
//      y = exp(x - m) / l from the registers it still holds.
// Deadlock freedom: the launch is cooperative, so every block of the grid is
// resident at once, and the host checks splits <= grid. Items are handed out in
// increasing order (the first grid of them at once), so the chunks of row r are
// handed out only after all chunks of earlier rows: a row whose chunks are all
// handed out finishes (its blocks only wait for each other), and while the lowest
// unfinished row still has chunks to hand out, at most splits - 1 blocks wait on it
// and nobody holds a later row, so some block is free to take its next ticket.
// Nothing depends on the order in which the hardware starts blocks.
// ---------------------------------------------------------------------------
constexpr int kSinglePassMaxThreads = 256;
constexpr int kMaxCachedDevices = 64;  // host-side occupancy cache (more devices: query every call)
constexpr int kSinglePassMinBlocks = 4;  // per SM at 256 threads: <= 64 registers per thread
// Packets (16 B, or one element on the scalar path) held per thread: 32 values on the
// vector path (fp32: 8 packets, fp16/bf16: 4), 8 on the scalar path. With 64 fp16/bf16
// values per thread the fp32 copies made for the math did not fit 64 registers (spills).
template <int VEC>
constexpr int kPackets = VEC == 1 ? 8 : 32 / VEC;

// The counters are 0 when a launch starts and 0 again when it ends (each launch
// resets what it used), so one zeroed buffer serves every launch of a stream.
struct SinglePassScratch {
  unsigned long long* ticket;  // work items handed out after the first grid
  unsigned* exited;            // blocks that found no more work; the last one resets ticket and exited
  unsigned* arrived;           // [rows] chunks of the row that published their (m, l)
  unsigned* departed;          // [rows] chunks of the row past the wait; the last one resets both
  SoftmaxStats* partial;       // [rows, splits] (m, l) of each chunk (no reset needed)
};

// Packet of -inf, written as 32-bit words where the packet has them: filled one
// 16-bit element at a time, the bf16 packets were held one register per element
// (spills at the 64-register budget).
template <typename T, int VEC>
__device__ __forceinline__ void fill_neg_inf(Pack<T, VEC>& pk) {
  if constexpr (sizeof(pk) % 4 == 0) {
    const uint32_t word = sizeof(T) == 4 ? 0xff800000u : std::is_same_v<T, __half> ? 0xfc00fc00u : 0xff80ff80u;
    auto* w = reinterpret_cast<uint32_t*>(&pk);
#pragma unroll
    for (int i = 0; i < static_cast<int>(sizeof(pk) / 4); ++i) w[i] = word;
  } else {
    pk.v[0] = from_float<T>(-INFINITY);
  }
}

// (m, l) of the values a block holds in registers (-inf past the end of the row),
// merged over the block: the variant's rule, like slice_stats but without re-reading x.
// tail: this thread's element of the row's last n % VEC elements (-inf if none).
template <typename T, int VEC>
__device__ __forceinline__ SoftmaxStats held_stats(const Pack<T, VEC> (&v)[kPackets<VEC>], float tail,
                                                   SoftmaxVariant variant, SoftmaxStats* red) {
  float f[VEC];
  if (variant == SoftmaxVariant::kOnline) {  // (3)/(4) per packet, (4) across the block
    SoftmaxStats s;
#pragma unroll
    for (int k = 0; k < kPackets<VEC>; ++k) {
      unpack(v[k], f);
      fold_online(s, f);
    }
    const float t[1] = {tail};
    fold_online(s, t);
    return group_merge<true>(s, red);
  }
  if (variant == SoftmaxVariant::kSafe) {  // (2): the chunk's max, then its sum, both from registers
    float m = tail;
#pragma unroll
    for (int k = 0; k < kPackets<VEC>; ++k) {
      unpack(v[k], f);
#pragma unroll
      for (int e = 0; e < VEC; ++e) m = fmaxf(m, f[e]);
    }
    m = group_merge<true>(SoftmaxStats{m, 0.0f}, red).max;
    float l = 0.0f;
    if (m != -INFINITY) {
#pragma unroll
      for (int k = 0; k < kPackets<VEC>; ++k) {
        unpack(v[k], f);
#pragma unroll
        for (int e = 0; e < VEC; ++e) l += expf(f[e] - m);
      }
      l += expf(tail - m);
    }
    return group_merge<true>(SoftmaxStats{m, l}, red);
  }
  float l = expf(tail);  // (1): m pinned to 0
#pragma unroll
  for (int k = 0; k < kPackets<VEC>; ++k) {
    unpack(v[k], f);
#pragma unroll
    for (int e = 0; e < VEC; ++e) l += expf(f[e]);
  }
  return group_merge<true>(SoftmaxStats{0.0f, l}, red);
}

// Step 3 (thread 0 only): publish this chunk's (m, l), then wait for the row's other chunks.
__device__ __forceinline__ void publish_and_wait(const SinglePassScratch& ws, int64_t row, int64_t part,
                                                 int64_t splits, SoftmaxStats s) {
  ws.partial[row * splits + part] = s;
  ::cuda::atomic_ref<unsigned, ::cuda::thread_scope_device> arrived(ws.arrived[row]);
  arrived.fetch_add(1u, ::cuda::memory_order_release);  // the partial above is visible before the count
  unsigned sleep_ns = 32;
  while (arrived.load(::cuda::memory_order_acquire) < static_cast<unsigned>(splits)) {
    __nanosleep(sleep_ns);
    sleep_ns = min(2 * sleep_ns, 256u);
  }
  // The last chunk past the wait resets the row's counters for the next launch: every
  // other chunk of the row has already seen arrived == splits, nobody reads them again.
  if (atomicAdd(&ws.departed[row], 1u) == static_cast<unsigned>(splits - 1)) {
    ws.arrived[row] = 0;
    ws.departed[row] = 0;
  }
}

// Thread 0 of a block leaving the kernel: the last block resets the ticket (every
// block has taken its last ticket before it counts itself here).
__device__ __forceinline__ void exit_block(const SinglePassScratch& ws) {
  if (atomicAdd(ws.exited, 1u) == gridDim.x - 1) {
    *ws.ticket = 0;
    *ws.exited = 0;
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kSinglePassMaxThreads, kSinglePassMinBlocks)
    softmax_single_pass_kernel(RowArgs a, int64_t chunk, int64_t splits, SinglePassScratch ws) {
  __shared__ SoftmaxStats red[kWarpSize + 1];
  __shared__ int64_t item_shared;
  const int tid = static_cast<int>(threadIdx.x), nthreads = static_cast<int>(blockDim.x);
  const int64_t items = a.rows * splits;
  for (bool first = true;; first = false) {
    // First item: blockIdx.x (all blocks are resident, so items [0, grid) are all taken
    // at once, without waiting on the ticket's atomic); then one ticket each.
    if (tid == 0)
      item_shared = first ? int64_t{blockIdx.x} : int64_t{gridDim.x} + static_cast<int64_t>(atomicAdd(ws.ticket, 1ull));
    __syncthreads();  // item_shared is rewritten only after the barriers inside held_stats
    const int64_t item = item_shared;
    if (item >= items) {
      if (tid == 0) exit_block(ws);
      return;
    }
    const int64_t row = item / splits, part = item % splits, c0 = part * chunk;
    const int64_t n = min(chunk, a.cols - c0);  // elements of this chunk
    const T* x = static_cast<const T*>(a.x) + row * a.x_stride + c0;
    T* y = static_cast<T*>(a.y) + row * a.y_stride + c0;

    // 1. Packet k of this thread holds elements (k * nthreads + tid) * VEC + [0, VEC) when
    //    they are all in the row (-inf otherwise); the last n % VEC elements of the row
    //    (the last chunk only) are one scalar each of threads 0 .. n % VEC - 1, as in the
    //    warp-per-row kernel.
    Pack<T, VEC> v[kPackets<VEC>];
#pragma unroll
    for (int k = 0; k < kPackets<VEC>; ++k) {
      const int64_t e = (int64_t{k} * nthreads + tid) * VEC;
      if (e + VEC <= n) {
        v[k] = *reinterpret_cast<const Pack<T, VEC>*>(x + e);
      } else {
        fill_neg_inf(v[k]);
      }
    }
    const int tail = static_cast<int>(n % VEC);
    const int64_t tail0 = n - tail;
    const float xt = tid < tail ? to_float(x[tail0 + tid]) : -INFINITY;

    // 2. The chunk's (m, l).
    SoftmaxStats s = held_stats<T, VEC>(v, xt, a.variant, red);

    // 3. The row's (m, l): equation (4) over the partials of all its chunks.
    if (splits > 1) {
      if (tid == 0) publish_and_wait(ws, row, part, splits, s);
      __syncthreads();  // thread 0's acquire orders the partial loads of every thread after the arrivals
      SoftmaxStats t;
      for (int64_t k = tid; k < splits; k += nthreads) {
        // __ldcg: from L2, never a stale L1 line (partials of earlier rows share lines).
        const float2 mp = __ldcg(reinterpret_cast<const float2*>(ws.partial + row * splits + k));
        t = merge(t, SoftmaxStats{mp.x, mp.y});
      }
      s = group_merge<true>(t, red);
    }

    // 4. Normalize the chunk from registers. A row with nothing visible (m = -inf, l = 0) gets y = 0.
    const float m = s.max == -INFINITY ? 0.0f : s.max;
    const float inv_l = s.sum > 0.0f ? 1.0f / s.sum : 0.0f;
#pragma unroll
    for (int k = 0; k < kPackets<VEC>; ++k) {
      const int64_t e = (int64_t{k} * nthreads + tid) * VEC;
      float f[VEC];
      unpack(v[k], f);
      Pack<T, VEC> out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) out.v[j] = from_float<T>(expf(f[j] - m) * inv_l);
      if (e + VEC <= n) *reinterpret_cast<Pack<T, VEC>*>(y + e) = out;
    }
    if (tid < tail) y[tail0 + tid] = from_float<T>(expf(xt - m) * inv_l);
    if (a.lse && part == 0 && tid == 0) a.lse[row] = log_sum_exp(s);
  }
}

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Two-pass split rows (the fallback for rows with more chunks than fit on the GPU
// at once): aim for ~4 blocks per SM in total, chunks of >= 4096 elements (a
// multiple of 8, so every chunk starts 16-byte aligned).
// Measured (H100): processing rows in ~16 MB groups so kernel 2 re-reads x from
// L2 was slower (64 x 2^20 fp32: 1124 vs 1507 GB/s; 2048 x 65536: 1047 vs 1848):
// the extra launches and small chunks cost more than the HBM re-read.
template <typename T, int VEC>
Status launch_two_pass(const RowArgs& a, cudaStream_t stream, int sms) {
  const int64_t target_blocks = 4 * int64_t{sms};
  int64_t splits = std::clamp<int64_t>(ceil_div(target_blocks, a.rows), 1, ceil_div(a.cols, 4096));
  const int64_t chunk = ceil_div(ceil_div(a.cols, splits), 8) * 8;
  splits = ceil_div(a.cols, chunk);
  if (a.rows * splits > INT32_MAX) return Status::Unsupported("softmax: rows * splits exceeds the grid size");
  const size_t ws_bytes = static_cast<size_t>(a.rows * splits) * sizeof(SoftmaxStats);
  SoftmaxStats* partial = nullptr;
  FA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), ws_bytes, stream));
  const unsigned grid = static_cast<unsigned>(a.rows * splits);
  softmax_split_stats_kernel<T, VEC><<<grid, kSplitThreads, 0, stream>>>(a, chunk, static_cast<int>(splits), partial);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) {
    softmax_split_normalize_kernel<T, VEC>
        <<<grid, kSplitThreads, 0, stream>>>(a, chunk, static_cast<int>(splits), partial);
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(partial, stream);
  FA_CUDA_CHECK(err);
  FA_CUDA_CHECK(free_err);
  return Status::Ok();
}

// Scratch of the single-pass kernel (stream_scratch.h): the zeroed counters
// [ticket | exited | arrived[rows] | departed[rows]], which the kernel leaves at 0
// (so one buffer per stream serves every call, no memset per call), and the
// per-chunk partials [items], which need no reset.
size_t single_pass_counter_bytes(int64_t rows) { return 16 + static_cast<size_t>(2 * rows) * sizeof(unsigned); }
SinglePassScratch carve_single_pass(const StreamScratch& s, int64_t rows) {
  SinglePassScratch ws;
  ws.ticket = reinterpret_cast<unsigned long long*>(s.base);
  ws.exited = reinterpret_cast<unsigned*>(s.base + 8);
  ws.arrived = reinterpret_cast<unsigned*>(s.base + 16);
  ws.departed = ws.arrived + rows;
  ws.partial = reinterpret_cast<SoftmaxStats*>(s.extra);
  return ws;
}

// Single-pass split rows. Sets *fits = false (and launches nothing) when a row
// needs more chunks than blocks can be co-resident, or the device cannot launch
// cooperatively; the caller then takes the two-pass path.
// Chunk = threads * kPackets * VEC elements (8192 at 256 threads on the vector path,
// 2048 on the scalar path); the block shrinks to 128 / 64 threads while that leaves
// fewer than 2 work items per SM, so a few long rows still spread over the whole GPU.
template <typename T, int VEC>
Status launch_single_pass(const RowArgs& a, cudaStream_t stream, int device, int sms, bool* fits,
                          bool auto_path = false) {
  *fits = false;
  int coop = 0;
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  if (!coop) return Status::Ok();
  auto chunk_for = [](int threads) { return int64_t{threads} * kPackets<VEC> * VEC; };
  int threads = kSinglePassMaxThreads;
  while (threads > 64 && a.rows * ceil_div(a.cols, chunk_for(threads)) < 2 * int64_t{sms}) threads /= 2;
  const int64_t chunk = chunk_for(threads), splits = ceil_div(a.cols, chunk), items = a.rows * splits;

  auto kernel = softmax_single_pass_kernel<T, VEC>;
  // Blocks per SM at `threads`, cached per device (index = log2(threads / 64)): the
  // occupancy query costs host time comparable to the kernel on the smaller inputs.
  static std::atomic<int> per_sm_cache[kMaxCachedDevices][3];  // value + 1; 0 = not asked yet
  const int slot = threads == 64 ? 0 : threads == 128 ? 1 : 2;
  int per_sm = device < kMaxCachedDevices ? per_sm_cache[device][slot].load(std::memory_order_relaxed) - 1 : -1;
  if (per_sm < 0) {
    FA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
    if (device < kMaxCachedDevices) per_sm_cache[device][slot].store(per_sm + 1, std::memory_order_relaxed);
  }
  const int64_t resident = int64_t{per_sm} * sms;
  if (splits > resident) return Status::Ok();  // a row would wait for chunks that cannot start
  // Measured on the H100 (docs/01-online-softmax.md): with 16-bit elements a block
  // holds only 16 KB of its chunk in flight, and over many waves (1024 x 128k bf16:
  // 16k chunks on 528 resident blocks) the two-pass path streams better (1744 vs
  // 1584 GB/s); within ~2 waves, and always in fp32, the single pass wins.
  if (auto_path && sizeof(T) == 2 && items > 2 * resident) return Status::Ok();
  const int64_t grid = std::min(items, resident);

  StreamScratch scratch;
  const Status st = stream_scratch(ScratchTag::kSoftmaxSinglePass, stream, single_pass_counter_bytes(a.rows),
                                   static_cast<size_t>(items) * sizeof(SoftmaxStats), &scratch);
  if (!st.ok()) return st;
  const SinglePassScratch ws = carve_single_pass(scratch, a.rows);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(grid));
  cfg.blockDim = dim3(static_cast<unsigned>(threads));
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, a, chunk, splits, ws);
  const cudaError_t free_err = release_stream_scratch(scratch, stream);
  if (err == cudaErrorCooperativeLaunchTooLarge) {  // e.g. fewer SMs available under MPS: not an error
    (void)cudaGetLastError();
    FA_CUDA_CHECK(free_err);
    return Status::Ok();
  }
  FA_CUDA_CHECK(err);
  FA_CUDA_CHECK(free_err);
  *fits = true;
  return Status::Ok();
}

template <typename T, int VEC>
Status launch(const RowArgs& a, cudaStream_t stream, LongRowPath path) {
  int device = 0, sms = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));

  // Pinned paths (tests, the bench) take every row length.
  if (path == LongRowPath::kTwoPass) return launch_two_pass<T, VEC>(a, stream, sms);
  if (path == LongRowPath::kSinglePass) {
    bool fits = false;
    const Status st = launch_single_pass<T, VEC>(a, stream, device, sms, &fits);
    if (st.ok() && !fits)
      return Status::Unsupported("softmax: single-pass long-row path does not fit (a row has more chunks than "
                                 "blocks can be co-resident, or no cooperative launch)");
    return st;
  }

  if (a.cols <= kWarpRowMaxCols) {
    const int64_t rows_per_block = kWarpRowsThreads / kWarpSize;
    softmax_warp_rows_kernel<T, VEC>
        <<<static_cast<unsigned>(ceil_div(a.rows, rows_per_block)), kWarpRowsThreads, 0, stream>>>(a);
    FA_CUDA_CHECK_LAUNCH("softmax_warp_rows_kernel");
    return Status::Ok();
  }

  const int64_t cache_bytes = ceil_div(a.cols * static_cast<int64_t>(sizeof(T)), 16) * 16;
  const bool few_rows = a.rows < 2 * sms;  // one block per row would leave SMs idle
  if (cache_bytes <= kMaxCacheBytes && !(few_rows && a.cols > 8192)) {
    const int64_t nvec = ceil_div(a.cols, VEC);
    int threads = 128;
    while (threads < 1024 && threads * 4 < nvec) threads *= 2;  // ~4 vectors per thread
    auto kernel = softmax_block_rows_kernel<T, VEC>;
    if (cache_bytes > 48 * 1024)
      FA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kMaxCacheBytes)));
    kernel<<<static_cast<unsigned>(a.rows), threads, static_cast<size_t>(cache_bytes), stream>>>(a);
    FA_CUDA_CHECK_LAUNCH("softmax_block_rows_kernel");
    return Status::Ok();
  }

  bool fits = false;
  const Status st = launch_single_pass<T, VEC>(a, stream, device, sms, &fits, /*auto_path=*/true);
  if (!st.ok() || fits) return st;
  return launch_two_pass<T, VEC>(a, stream, sms);
}

// 16-byte vectors when both pointers and both row strides keep every row aligned.
template <typename T>
Status launch_typed(const RowArgs& a, cudaStream_t stream, LongRowPath path) {
  constexpr int kVec = 16 / sizeof(T);
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec = aligned(a.x) && aligned(a.y) &&
                   (a.rows == 1 || (a.x_stride % kVec == 0 && a.y_stride % kVec == 0));
  return vec ? launch<T, kVec>(a, stream, path) : launch<T, 1>(a, stream, path);
}

}  // namespace

Status launch_softmax_rows(const SoftmaxParams& p, float* lse, cudaStream_t stream, LongRowPath path) {
  RowArgs a{p.x, p.y, lse, p.rows, p.cols, p.rows > 1 ? p.x_row_stride : 0, p.rows > 1 ? p.y_row_stride : 0,
            p.variant};
  switch (p.dtype) {
    case DType::kFloat32: return launch_typed<float>(a, stream, path);
    case DType::kFloat16: return launch_typed<__half>(a, stream, path);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(a, stream, path);
  }
  return Status::Internal("softmax: unknown dtype");
}

Status softmax_forward(const SoftmaxParams& p) { return launch_softmax_rows(p, nullptr, as_stream(p.stream)); }

}  // namespace cuda
}  // namespace flashattn
