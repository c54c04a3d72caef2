// KV-read bandwidth of the split-KV decode kernel (issue 8): bf16, head_dim 128,
// one query row per head, contiguous and paged (page 16, 256; pages shuffled in
// the pool) caches, all keys used (seqused_k = N). Bandwidth = bytes of K and V
// read (B * N * Hkv * D * 2 * 2) / time. Also the device-to-device copy bandwidth
// ((read + write bytes) / time) of the same card. Layouts: "contiguous" is
// [B, N, Hkv, D] (flash-attn's kv cache), "contiguous_hmajor" the same buffer with
// head-major strides [B, Hkv, N, D] (torch SDPA's layout). Also reported: host
// time per forward() call (validation, pointer checks, launches) and the GPU time
// with 20 forwards captured in one CUDA graph (no host overhead). Built by hand:
//   g++ -O2 -std=c++17 scripts/decode_timing.cpp -Iinclude -I/usr/local/cuda/include \
//       $BUILD/src/libflashattn.a -L/usr/local/cuda/lib64 -lcudart -fopenmp -o /tmp/decode_timing
// Each sample times 20 back-to-back forwards between two CUDA events; median of 9.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "flashattn/flashattn.h"

using namespace flashattn;

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e = (x);                                                               \
    if (e != cudaSuccess) {                                                            \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

static uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Fill n bf16 elements on the device with random normals (a 4M-element host pattern, tiled).
static void fill_random(void* dst, int64_t n, std::mt19937_64& rng) {
  static std::vector<uint16_t> pattern;
  if (pattern.empty()) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    pattern.resize(int64_t{1} << 22);
    for (auto& x : pattern) x = to_bf16(dist(rng));
  }
  for (int64_t off = 0; off < n; off += static_cast<int64_t>(pattern.size())) {
    const int64_t len = std::min<int64_t>(pattern.size(), n - off);
    CK(cudaMemcpy(static_cast<uint16_t*>(dst) + off, pattern.data(), len * 2, cudaMemcpyHostToDevice));
  }
}

template <typename F>
static double median_ms(F&& f, int reps = 20, int samples = 9, cudaStream_t stream = nullptr, int per_call = 1) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  CK(cudaDeviceSynchronize());
  std::vector<float> t;
  for (int s = 0; s < samples; ++s) {
    CK(cudaEventRecord(a, stream));
    for (int i = 0; i < reps; ++i) f();
    CK(cudaEventRecord(b, stream));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / reps / per_call);
  }
  std::sort(t.begin(), t.end());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::mt19937_64 rng(42);
  {
    const size_t bytes = size_t{1} << 30;
    void *x, *y;
    CK(cudaMalloc(&x, bytes));
    CK(cudaMalloc(&y, bytes));
    CK(cudaMemset(x, 1, bytes));
    const double ms = median_ms([&] { CK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice)); }, 5, 7);
    std::printf("copy: 1 GiB d2d ms=%.4f bandwidth(read+write)=%.1f GB/s\n", ms, 2.0 * bytes / ms / 1e6);
    CK(cudaFree(x));
    CK(cudaFree(y));
  }
  struct Shape { int64_t B, Hq, Hkv, N; };
  const Shape shapes[] = {{1, 32, 8, 32768}, {1, 64, 8, 131072}, {64, 32, 8, 2048}};
  const int64_t D = 128;
  for (const Shape& s : shapes)
    for (int64_t ps : {0, -1, 16, 256}) {  // -1: contiguous, head-major strides
      const int64_t pages_per_seq = ps > 0 ? (s.N + ps - 1) / ps : 0;
      const int64_t rows = ps > 0 ? s.B * pages_per_seq * ps : s.B * s.N;
      const int64_t kv_elems = rows * s.Hkv * D;
      void *q, *k, *v, *o;
      float* lse;
      int32_t *used, *table = nullptr;
      CK(cudaMalloc(&q, s.B * s.Hq * D * 2));
      CK(cudaMalloc(&o, s.B * s.Hq * D * 2));
      CK(cudaMalloc(&lse, s.B * s.Hq * 4));
      CK(cudaMalloc(&k, kv_elems * 2));
      CK(cudaMalloc(&v, kv_elems * 2));
      fill_random(q, s.B * s.Hq * D, rng);
      fill_random(k, kv_elems, rng);
      fill_random(v, kv_elems, rng);
      std::vector<int32_t> h_used(s.B, static_cast<int32_t>(s.N));
      CK(cudaMalloc(&used, s.B * 4));
      CK(cudaMemcpy(used, h_used.data(), s.B * 4, cudaMemcpyHostToDevice));
      FwdParams p;
      p.device = Device::kCUDA;
      p.dtype = DType::kBFloat16;
      p.batch = s.B;
      p.seqlen_q = 1;
      p.seqlen_k = s.N;
      p.heads_q = s.Hq;
      p.heads_kv = s.Hkv;
      p.head_dim = D;
      set_contiguous_strides(p);
      p.q = q;
      p.k = k;
      p.v = v;
      p.o = o;
      p.lse = lse;
      p.seqused_k = used;
      if (ps < 0) {
        p.k_row_stride = p.v_row_stride = D;
        p.k_head_stride = p.v_head_stride = s.N * D;
      }
      if (ps > 0) {
        std::vector<int32_t> h_table(s.B * pages_per_seq);
        std::iota(h_table.begin(), h_table.end(), 0);
        std::shuffle(h_table.begin(), h_table.end(), rng);
        CK(cudaMalloc(&table, h_table.size() * 4));
        CK(cudaMemcpy(table, h_table.data(), h_table.size() * 4, cudaMemcpyHostToDevice));
        p.block_table = table;
        p.block_table_batch_stride = pages_per_seq;
        p.page_size = ps;
        p.num_pages = s.B * pages_per_seq;
        p.k_batch_stride = p.v_batch_stride = ps * s.Hkv * D;
      }
      Status st = forward(p);
      if (!st.ok()) {
        std::printf("forward failed: %s\n", st.message.c_str());
        return 1;
      }
      const double ms = median_ms([&] { forward(p); });
      const double bytes = 2.0 * s.B * s.N * s.Hkv * D * 2;
      // Host cost of one call: 200 calls queued without waiting (the GPU runs behind).
      CK(cudaDeviceSynchronize());
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 200; ++i) forward(p);
      const double host_us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 200;
      CK(cudaDeviceSynchronize());
      // GPU time without host overhead: 20 forwards in one CUDA graph.
      double graph_ms = -1;
      {
        cudaStream_t st;
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        FwdParams g = p;
        g.stream = st;
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        bool ok = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed) == cudaSuccess;
        for (int i = 0; i < 20 && ok; ++i) ok = forward(g).ok();
        ok = (cudaStreamEndCapture(st, &graph) == cudaSuccess) && ok;
        ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
        if (ok) graph_ms = median_ms([&] { CK(cudaGraphLaunch(exec, st)); }, 5, 9, st, 20);
        else std::printf("  (graph capture failed: %s)\n", cudaGetErrorString(cudaGetLastError()));
        if (exec) cudaGraphExecDestroy(exec);
        if (graph) cudaGraphDestroy(graph);
        cudaStreamDestroy(st);
      }
      const char* layout = ps == 0 ? "contiguous" : ps < 0 ? "contiguous_hmajor" : ps == 16 ? "paged16" : "paged256";
      std::printf("decode B=%ld Hq=%ld Hkv=%ld N=%ld D=128 bf16 cache=%s ms=%.4f kv_bandwidth=%.1f GB/s | "
                  "graph ms=%.4f kv_bandwidth=%.1f GB/s | host_us_per_call=%.1f\n",
                  static_cast<long>(s.B), static_cast<long>(s.Hq), static_cast<long>(s.Hkv), static_cast<long>(s.N),
                  layout, ms, bytes / ms / 1e6, graph_ms, graph_ms > 0 ? bytes / graph_ms / 1e6 : 0.0, host_us);
      // Sweep of forced split counts (contiguous cache), to check the heuristic.
      if (ps == 0)
        for (int splits : {1, 2, 4, 8, 16, 24, 33, 48, 66, 132}) {
          if (s.B * s.Hkv * splits > 8 * 132) continue;
          FwdParams f = p;
          f.num_splits = splits;
          const double t = median_ms([&] { forward(f); });
          std::printf("  splits=%d ms=%.4f kv_bandwidth=%.1f GB/s\n", splits, t, bytes / t / 1e6);
        }
      CK(cudaFree(q));
      CK(cudaFree(o));
      CK(cudaFree(lse));
      CK(cudaFree(k));
      CK(cudaFree(v));
      CK(cudaFree(used));
      if (table) CK(cudaFree(table));
    }
  return 0;
}
