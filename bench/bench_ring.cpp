// flashattn-bench --gpu --ring: ring attention (context parallelism, include/flashattn/ring.h)
// over W = 1, 2, 4, 8 GPUs (as many as the machine has), one rank per GPU through NCCL,
// against one GPU running the whole sequence with forward() / backward().
//
//   scaling efficiency(W) = time(one GPU, whole sequence) / (W x time(ring over W GPUs))
//
// so 1.0 means the W GPUs deliver W times one GPU's throughput (issue 7 asks >= 0.85 on
// 8 GPUs at 128k tokens, d128, causal). Causal runs use zig-zag sharding (balanced work).
// Times: wall clock from the start of every rank's call to the end of the slowest rank
// (each rank synchronizes its GPU), median over the reps after one warm-up; bf16 only.
// Defaults: total N = 16384 x (number of GPUs), Hq = Hkv = 16, D = 128, causal.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"
#include "flashattn/flashattn.h"
#include "flashattn/ring.h"

#if FLASHATTN_WITH_CUDA && FLASHATTN_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace flashattn {
namespace bench {

#if !(FLASHATTN_WITH_CUDA && FLASHATTN_WITH_NCCL)
int run_ring(const Options&) {
  std::printf("ring bench: this build has no CUDA backend with NCCL (FLASHATTN_WITH_NCCL=0)\n");
  return 1;
}
#else
namespace {

#define RING_BENCH_CHECK(expr)                                                                          \
  do {                                                                                                  \
    const auto _e = (expr);                                                                             \
    if (static_cast<int>(_e) != 0) {                                                                    \
      std::fprintf(stderr, "ring bench: %s failed (%d) at %s:%d\n", #expr, static_cast<int>(_e), __FILE__, \
                   __LINE__);                                                                           \
      std::exit(1);                                                                                     \
    }                                                                                                   \
  } while (0)

// One rank's tensors on its GPU ([1, local, heads, dim] bf16, contiguous).
struct Rank {
  std::vector<void*> allocations;
  BwdParams p;
  void* alloc(size_t bytes) {
    void* ptr = nullptr;
    RING_BENCH_CHECK(cudaMalloc(&ptr, bytes));
    allocations.push_back(ptr);
    return ptr;
  }
  ~Rank() {
    for (void* ptr : allocations) cudaFree(ptr);
  }
};

// bf16 values in [-1, 1) from one 1M-element pseudo-random block, repeated (the
// values only have to be realistic for the exponentials, not independent).
void fill_bf16(void* dev, size_t elems, uint32_t seed) {
  std::vector<uint16_t> block(std::min<size_t>(elems, size_t{1} << 20));
  uint32_t x = seed * 2654435761u + 1;
  for (auto& v : block) {
    x = x * 1664525u + 1013904223u;
    const float f = static_cast<float>(x >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    v = static_cast<uint16_t>(bits >> 16);
  }
  for (size_t off = 0; off < elems; off += block.size()) {
    const size_t n = std::min(block.size(), elems - off);
    RING_BENCH_CHECK(cudaMemcpy(static_cast<uint16_t*>(dev) + off, block.data(), n * 2, cudaMemcpyHostToDevice));
  }
}

void setup_rank(Rank& r, int device, int64_t len, int64_t hq, int64_t hkv, int64_t d, bool causal, uint32_t seed) {
  RING_BENCH_CHECK(cudaSetDevice(device));
  const size_t q_elems = static_cast<size_t>(len * hq * d), kv_elems = static_cast<size_t>(len * hkv * d);
  BwdParams& p = r.p;
  p.batch = 1, p.seqlen_q = p.seqlen_k = len, p.heads_q = hq, p.heads_kv = hkv, p.head_dim = d;
  p.dtype = DType::kBFloat16;
  p.causal = causal;
  p.device = Device::kCUDA;
  p.device_index = device;
  p.kernel = Kernel::kAuto;
  p.q = r.alloc(q_elems * 2), p.o = r.alloc(q_elems * 2), p.dout = r.alloc(q_elems * 2), p.dq = r.alloc(q_elems * 2);
  p.k = r.alloc(kv_elems * 2), p.v = r.alloc(kv_elems * 2), p.dk = r.alloc(kv_elems * 2), p.dv = r.alloc(kv_elems * 2);
  p.lse = static_cast<float*>(r.alloc(static_cast<size_t>(hq * len) * 4));
  fill_bf16(const_cast<void*>(p.q), q_elems, seed);
  fill_bf16(const_cast<void*>(p.k), kv_elems, seed + 1);
  fill_bf16(const_cast<void*>(p.v), kv_elems, seed + 2);
  fill_bf16(const_cast<void*>(p.dout), q_elems, seed + 3);
  set_contiguous_strides(p);
}

// Median wall time (ms) of `reps` runs of `body` (after one warm-up run); body
// returns false on an error, which ends the measurement with -1.
template <class Body>
double time_ms(int reps, Body&& body) {
  if (!body()) return -1;
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!body()) return -1;
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(t);
}

// One ring step for all ranks, one thread each (the NCCL transport needs every rank
// inside its call at once). Returns false when a rank's call failed.
bool run_all(std::vector<std::unique_ptr<Rank>>& ranks, std::vector<std::unique_ptr<RingTransport>>& tr, bool bwd,
             bool zigzag) {
  std::vector<Status> st(ranks.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < ranks.size(); ++r)
    threads.emplace_back([&, r] {
      cudaSetDevice(ranks[r]->p.device_index);
      st[r] = bwd ? ring_backward(ranks[r]->p, *tr[r], zigzag) : ring_forward(ranks[r]->p, *tr[r], zigzag);
      if (st[r].ok() && cudaDeviceSynchronize() != cudaSuccess) st[r] = Status::Cuda("synchronize after the ring call");
    });
  for (auto& t : threads) t.join();
  for (size_t r = 0; r < st.size(); ++r)
    if (!st[r].ok()) {
      std::fprintf(stderr, "ring bench: rank %zu: %s\n", r, st[r].message.c_str());
      return false;
    }
  return true;
}

}  // namespace

int run_ring(const Options& o) {
  setenv("NCCL_NVLS_ENABLE", "0", 0);  // NVLink multicast stays off (device notes)
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 1) {
    std::printf("ring bench: no CUDA GPU\n");
    return 1;
  }
  const int64_t d = o.d > 0 ? o.d : 128, hq = o.h > 0 ? o.h : 16, hkv = o.hkv > 0 ? o.hkv : hq;
  const bool causal = o.causal != 0;
  const int64_t n = o.n > 0 ? o.n : 16384 * static_cast<int64_t>(gpus);
  const int reps = o.reps > 0 ? o.reps : 5;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("ring attention over NCCL: %d x %s, total N = %lld, Hq %lld Hkv %lld, D %lld, %s, bf16, %d reps\n",
              gpus, prop.name, static_cast<long long>(n), static_cast<long long>(hq), static_cast<long long>(hkv),
              static_cast<long long>(d), causal ? "causal (zig-zag shards)" : "full", reps);
  const double fwd_flops = attention_flops(1, hq, n, n, d, causal, false);
  const double bwd_flops = attention_flops(1, hq, n, n, d, causal, true);

  // One GPU, the whole sequence, the ordinary API.
  double single_fwd = -1, single_bwd = -1;
  {
    Rank whole;
    setup_rank(whole, 0, n, hq, hkv, d, causal, 7);
    single_fwd = time_ms(reps, [&] { return forward(whole.p).ok() && cudaDeviceSynchronize() == cudaSuccess; });
    single_bwd = time_ms(reps, [&] { return backward(whole.p).ok() && cudaDeviceSynchronize() == cudaSuccess; });
  }
  std::printf("\n%-22s %6s %8s %8s %10s %8s %6s %10s %8s %6s\n", "what", "GPUs", "N", "N/GPU", "fwd ms", "TFLOPS",
              "eff", "bwd ms", "TFLOPS", "eff");
  auto row = [&](const char* what, int w, double f_ms, double b_ms) {
    auto tf = [](double flops, double ms) { return ms > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0; };
    auto eff = [&](double base, double ms) { return ms > 0 && base > 0 ? base / (w * ms) : 0.0; };
    std::printf("%-22s %6d %8lld %8lld %10.3f %8.1f %6.2f %10.3f %8.1f %6.2f\n", what, w, static_cast<long long>(n),
                static_cast<long long>(n / w), f_ms, tf(fwd_flops, f_ms), eff(single_fwd, f_ms), b_ms,
                tf(bwd_flops, b_ms), eff(single_bwd, b_ms));
  };
  row("one GPU (forward())", 1, single_fwd, single_bwd);

  for (int w = 1; w <= gpus; w *= 2) {
    const bool zigzag = causal;
    if (n % (2 * w) != 0) {
      std::printf("ring W=%d: N=%lld is not a multiple of 2W, skipped\n", w, static_cast<long long>(n));
      continue;
    }
    std::vector<std::unique_ptr<Rank>> ranks;
    for (int r = 0; r < w; ++r) {
      ranks.push_back(std::make_unique<Rank>());
      setup_rank(*ranks.back(), r, n / w, hq, hkv, d, causal, 100 + r);
    }
    std::vector<ncclComm_t> comms(w);
    std::vector<int> devs(w);
    for (int r = 0; r < w; ++r) devs[r] = r;
    RING_BENCH_CHECK(ncclCommInitAll(comms.data(), w, devs.data()));
    std::vector<std::unique_ptr<RingTransport>> tr;
    for (int r = 0; r < w; ++r) {
      RING_BENCH_CHECK(cudaSetDevice(r));
      tr.push_back(make_nccl_ring(comms[r]));
    }
    RING_BENCH_CHECK(cudaSetDevice(0));
    const double f = time_ms(reps, [&] { return run_all(ranks, tr, false, zigzag); });
    const double b = f > 0 ? time_ms(reps, [&] { return run_all(ranks, tr, true, zigzag); }) : -1;
    const std::string what = "ring over NCCL, W=" + std::to_string(w);
    row(what.c_str(), w, f, b);
    tr.clear();
    for (ncclComm_t c : comms) ncclCommDestroy(c);
    ranks.clear();
    RING_BENCH_CHECK(cudaSetDevice(0));
  }
  std::printf("(eff = one-GPU time / (GPUs x ring time); wall clock incl. each call's allocations and syncs)\n");
  return 0;
}
#endif

}  // namespace bench
}  // namespace flashattn
