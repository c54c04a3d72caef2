// flashattn-bench --diag: how the Hopper forward's time depends on the way it is
// launched, for the gap docs/06-hopper.md describes (one launch under ncu matched
// cuDNN, back to back in the bench it is 10-15 % slower, and rows running the
// identical kernel on the identical buffers differ by up to 11 % inside one run).
//
// One shape (default bf16 B=2 H=16 N=8192 D=128, causal and not; --b/--h/--n/--d/
// --causal override), ours only (torch's rows come from `--gpu`), each kernel
// variant (default, then FLASHATTN_HOPPER_VARIANT=no_persistent, static_sched) timed
// in five ways, in this order, all on one non-blocking stream:
//   back_to_back  ~200 ms warm-up, then 30 calls with an event pair around each
//                 (the `--gpu` method): median; "loop" = one event pair around all
//   isolated      15 calls, each after the device went idle (synchronize + 2 ms
//                 host sleep): the GPU state ncu's single-launch replay sees,
//                 minus its cache flush
//   after_flush   15 calls, each right after a 256 MB memset (L2 full of dirty
//                 lines that are not ours)
//   graph         20 calls captured in one CUDA graph, replayed 5 times: median
//                 replay / 20 (no launch gaps at all)
//   repeat        back_to_back again at the end of the variant (drift)
// Prints ms and TFLOPS per (variant, mode). GPU builds only.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"
#include "common/dtype.h"
#include "flashattn/flashattn.h"

#if FLASHATTN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace flashattn {
namespace bench {

#if !FLASHATTN_WITH_CUDA

int run_diag(const Options&) {
  std::printf("--diag: this flashattn-bench was built without CUDA (configure with -DFLASHATTN_CUDA=ON)\n");
  return 1;
}

#else

namespace {

#define DIAG_CUDA(expr)                                                                       \
  do {                                                                                        \
    const cudaError_t err_ = (expr);                                                          \
    if (err_ != cudaSuccess) {                                                                \
      std::printf("--diag: %s failed: %s\n", #expr, cudaGetErrorString(err_));                \
      return 1;                                                                               \
    }                                                                                         \
  } while (0)

// Device buffer freed on scope exit.
struct Buf {
  void* ptr = nullptr;
  explicit Buf(size_t bytes) {
    if (cudaMalloc(&ptr, bytes) != cudaSuccess) ptr = nullptr;
  }
  ~Buf() { cudaFree(ptr); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// Random normal bf16/fp16 values: a 1M-element host block uploaded, then copied
// over the tensor at shifting offsets (the same values never line up with rows).
bool fill_random(void* dst, int64_t n, DType dt, uint64_t seed) {
  const int64_t block = (int64_t{1} << 20) + 17;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<uint8_t> host(static_cast<size_t>(block * 2));
  for (int64_t i = 0; i < block; ++i) store_from_float(host.data(), dt, i, dist(rng));
  for (int64_t done = 0; done < n; done += block - 7) {
    const int64_t len = std::min(block, n - done);
    if (cudaMemcpy(static_cast<uint8_t*>(dst) + done * 2, host.data(), static_cast<size_t>(len * 2),
                   cudaMemcpyHostToDevice) != cudaSuccess)
      return false;
  }
  return true;
}

double median_of(std::vector<double> v) { return median(std::move(v)); }

}  // namespace

int run_diag(const Options& o) {
  const DType dt = o.dtype == "fp16" ? DType::kFloat16 : DType::kBFloat16;
  const int64_t n = o.n ? o.n : 8192, d = o.d ? o.d : 128;
  const int64_t b = o.b ? o.b : std::max<int64_t>(1, 16384 / n), h = o.h ? o.h : std::max<int64_t>(1, 2048 / d);
  const int64_t hkv = o.hkv ? o.hkv : h;
  const int64_t q_el = b * n * h * d, kv_el = b * n * hkv * d;
  Buf q(q_el * 2), k(kv_el * 2), v(kv_el * 2), out(q_el * 2), lse(b * h * n * 4);
  const size_t flush_bytes = size_t{256} << 20;
  Buf flush(flush_bytes);
  if (!q.ptr || !k.ptr || !v.ptr || !out.ptr || !lse.ptr || !flush.ptr) {
    std::printf("--diag: cudaMalloc failed\n");
    return 1;
  }
  if (!fill_random(q.ptr, q_el, dt, 1) || !fill_random(k.ptr, kv_el, dt, 2) || !fill_random(v.ptr, kv_el, dt, 3)) {
    std::printf("--diag: upload failed\n");
    return 1;
  }
  cudaStream_t stream = nullptr;
  DIAG_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  DIAG_CUDA(cudaEventCreate(&e0));
  DIAG_CUDA(cudaEventCreate(&e1));
  cudaDeviceProp prop{};
  int dev = 0;
  DIAG_CUDA(cudaGetDevice(&dev));
  DIAG_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("GPU: %s; Hopper forward, %s B=%lld H=%lld/%lld N=%lld D=%lld; one non-blocking stream\n", prop.name,
              dt == DType::kFloat16 ? "fp16" : "bf16", static_cast<long long>(b), static_cast<long long>(h),
              static_cast<long long>(hkv), static_cast<long long>(n), static_cast<long long>(d));
  std::printf("%-14s %-6s %-13s %10s %10s %10s\n", "variant", "causal", "mode", "ms", "TFLOPS", "loop ms");

  const std::vector<bool> causals = o.causal < 0 ? std::vector<bool>{false, true} : std::vector<bool>{o.causal == 1};
  const char* variants[] = {"", "no_persistent", "static_sched"};
  for (bool causal : causals) {
    FwdParams p;
    p.batch = b, p.seqlen_q = n, p.seqlen_k = n, p.heads_q = h, p.heads_kv = hkv, p.head_dim = d;
    p.dtype = dt;
    p.causal = causal;
    p.device = Device::kCUDA;
    p.kernel = Kernel::kHopper;
    set_contiguous_strides(p);
    p.q = q.ptr, p.k = k.ptr, p.v = v.ptr, p.o = out.ptr;
    p.lse = static_cast<float*>(lse.ptr);
    p.stream = stream;
    const double flops = attention_flops(b, h, n, n, d, causal, false);
    for (const char* variant : variants) {
      if (*variant) setenv("FLASHATTN_HOPPER_VARIANT", variant, 1);
      else unsetenv("FLASHATTN_HOPPER_VARIANT");
      const std::string name = *variant ? variant : "default";
      auto report = [&](const char* mode, double ms, double loop_ms) {
        std::printf("%-14s %-6s %-13s %10.4f %10.2f %10s\n", name.c_str(), causal ? "yes" : "no", mode, ms,
                    flops / (ms * 1e-3) / 1e12, loop_ms > 0 ? std::to_string(loop_ms).substr(0, 7).c_str() : "-");
        std::fflush(stdout);
      };
      // One call to see whether this variant runs at all.
      Status st = forward(p);
      if (!st.ok()) {
        std::printf("%-14s %-6s refused: %s\n", name.c_str(), causal ? "yes" : "no", st.message.c_str());
        continue;
      }
      DIAG_CUDA(cudaStreamSynchronize(stream));
      auto back_to_back = [&](const char* mode) -> int {
        const auto warm_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
        while (std::chrono::steady_clock::now() < warm_end) {
          for (int i = 0; i < 10; ++i) (void)forward(p);
          DIAG_CUDA(cudaStreamSynchronize(stream));
        }
        const int reps = 30;
        std::vector<cudaEvent_t> ev(2 * reps);
        for (cudaEvent_t& e : ev) DIAG_CUDA(cudaEventCreate(&e));
        DIAG_CUDA(cudaEventRecord(e0, stream));
        for (int i = 0; i < reps; ++i) {
          DIAG_CUDA(cudaEventRecord(ev[2 * i], stream));
          (void)forward(p);
          DIAG_CUDA(cudaEventRecord(ev[2 * i + 1], stream));
        }
        DIAG_CUDA(cudaEventRecord(e1, stream));
        DIAG_CUDA(cudaStreamSynchronize(stream));
        std::vector<double> t(reps);
        for (int i = 0; i < reps; ++i) {
          float ms = 0;
          DIAG_CUDA(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
          t[i] = ms;
        }
        float loop = 0;
        DIAG_CUDA(cudaEventElapsedTime(&loop, e0, e1));
        for (cudaEvent_t e : ev) cudaEventDestroy(e);
        report(mode, median_of(t), loop / reps);
        return 0;
      };
      if (back_to_back("back_to_back")) return 1;
      // 15 calls, each timed alone after `before(i)` ran on the stream / host.
      auto time_each = [&](const char* mode, auto&& before) -> int {
        std::vector<double> t;
        for (int i = 0; i < 15; ++i) {
          if (before(i) != 0) return 1;
          DIAG_CUDA(cudaEventRecord(e0, stream));
          (void)forward(p);
          DIAG_CUDA(cudaEventRecord(e1, stream));
          DIAG_CUDA(cudaEventSynchronize(e1));
          float ms = 0;
          DIAG_CUDA(cudaEventElapsedTime(&ms, e0, e1));
          t.push_back(ms);
        }
        report(mode, median_of(t), -1);
        return 0;
      };
      if (time_each("isolated", [&](int) -> int {  // the device idle before each call
            DIAG_CUDA(cudaDeviceSynchronize());
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            return 0;
          }))
        return 1;
      if (time_each("after_flush", [&](int i) -> int {  // a 256 MB memset right before
            DIAG_CUDA(cudaMemsetAsync(flush.ptr, i, flush_bytes, stream));
            return 0;
          }))
        return 1;
      {  // 20 calls in one graph
        const int calls = 20;
        cudaGraph_t graph = nullptr;
        DIAG_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        Status cap;
        for (int i = 0; i < calls && cap.ok(); ++i) cap = forward(p);
        const cudaError_t end = cudaStreamEndCapture(stream, &graph);
        if (!cap.ok() || end != cudaSuccess) {
          std::printf("%-14s graph capture failed: %s %s\n", name.c_str(), cap.message.c_str(),
                      cudaGetErrorString(end));
          (void)cudaGetLastError();
        } else {
          cudaGraphExec_t exec = nullptr;
          DIAG_CUDA(cudaGraphInstantiate(&exec, graph, 0));
          DIAG_CUDA(cudaGraphLaunch(exec, stream));  // warm-up replay
          std::vector<double> t;
          for (int r = 0; r < 5; ++r) {
            DIAG_CUDA(cudaEventRecord(e0, stream));
            DIAG_CUDA(cudaGraphLaunch(exec, stream));
            DIAG_CUDA(cudaEventRecord(e1, stream));
            DIAG_CUDA(cudaEventSynchronize(e1));
            float ms = 0;
            DIAG_CUDA(cudaEventElapsedTime(&ms, e0, e1));
            t.push_back(ms / calls);
          }
          report("graph", median_of(t), -1);
          cudaGraphExecDestroy(exec);
          cudaGraphDestroy(graph);
        }
      }
      if (back_to_back("repeat")) return 1;
    }
  }
  unsetenv("FLASHATTN_HOPPER_VARIANT");
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
  return 0;
}

#endif  // FLASHATTN_WITH_CUDA

}  // namespace bench
}  // namespace flashattn
