// Timing of the FlashAttention-2 backward (flashattn::backward, Kernel::kFA2) on
// the GPU: bf16, 16k tokens per batch, hidden 2048. Not a test (outside the test
// globs); built by hand against libflashattn.a:
//   g++ -O2 -std=c++17 scripts/bwd_timing.cpp -Iinclude -I$CUDA/include
//       build/src/libflashattn.a -L$CUDA/lib64 -lcudart -fopenmp -o bwd_timing
// FLOPs: fwd = 4 * B * H * N * N * D (halved when causal), bwd = 2.5 * fwd.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "flashattn/flashattn.h"

using namespace flashattn;

static uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

static void* device_random(int64_t n, uint64_t seed) {
  std::vector<uint16_t> h(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const float u = ((s >> 40) & 0xFFFFFF) / 16777216.0f;  // [0, 1)
    h[i] = to_bf16(2.0f * u - 1.0f);
  }
  void* d = nullptr;
  cudaMalloc(&d, n * 2);
  cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice);
  return d;
}

int main(int argc, char** argv) {
  const char* label = argc > 1 ? argv[1] : "ours";  // names the build in the output (A/B runs)
  const int only = argc > 2 ? std::atoi(argv[2]) : -1;  // run one configuration (for a profiler)
  struct Cfg {
    int64_t n, d;
    bool causal, det;
  };
  const Cfg cfgs[] = {{8192, 128, false, false}, {8192, 128, true, false}, {8192, 64, false, false},
                      {8192, 64, true, false},   {2048, 128, false, false}, {2048, 128, true, false},
                      {2048, 64, false, false},  {2048, 64, true, false},  {8192, 128, false, true},
                      {8192, 128, true, true}};
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  printf("device: %s\n", prop.name);
  for (int ci = 0; ci < static_cast<int>(sizeof(cfgs) / sizeof(cfgs[0])); ++ci) {
    if (only >= 0 && ci != only) continue;
    const Cfg& c = cfgs[ci];
    const int64_t B = 16384 / c.n, H = 2048 / c.d, N = c.n, D = c.d;
    const int64_t numel = B * N * H * D;
    BwdParams p;
    p.batch = B;
    p.seqlen_q = p.seqlen_k = N;
    p.heads_q = p.heads_kv = H;
    p.head_dim = D;
    p.dtype = DType::kBFloat16;
    p.causal = c.causal;
    p.deterministic = c.det;
    p.device = Device::kCUDA;
    set_contiguous_strides(p);
    p.q = device_random(numel, 1);
    p.k = device_random(numel, 2);
    p.v = device_random(numel, 3);
    p.dout = device_random(numel, 4);
    void *o = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
    float* lse = nullptr;
    cudaMalloc(&o, numel * 2);
    cudaMalloc(&dq, numel * 2);
    cudaMalloc(&dk, numel * 2);
    cudaMalloc(&dv, numel * 2);
    cudaMalloc(&lse, B * H * N * sizeof(float));
    p.o = o, p.dq = dq, p.dk = dk, p.dv = dv, p.lse = lse;
    // O and LSE: synthetic but realistic (inputs are uniform in [-1, 1], so the
    // scaled scores are ~N(0, 1/9) and LSE ~ log N); the timing does not depend
    // on them, and this keeps the harness independent of any GPU forward.
    cudaMemcpy(o, p.dout, numel * 2, cudaMemcpyDeviceToDevice);
    {
      std::vector<float> l(B * H * N, std::log(static_cast<float>(N)));
      cudaMemcpy(lse, l.data(), l.size() * 4, cudaMemcpyHostToDevice);
    }
    p.kernel = Kernel::kFA2;
    Status st = backward(p);
    if (!st.ok()) {
      printf("N=%ld d=%ld causal=%d: %s\n", (long)N, (long)D, c.causal, st.message.c_str());
      continue;
    }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int i = 0; i < 3; ++i) backward(p);
    std::vector<float> ms;
    for (int i = 0; i < 10; ++i) {
      cudaEventRecord(e0);
      backward(p);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float t = 0;
      cudaEventElapsedTime(&t, e0, e1);
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double fwd_flops = 4.0 * B * H * N * N * D / (c.causal ? 2.0 : 1.0);
    printf("%s  B=%ld H=%ld N=%ld d=%ld causal=%d det=%d: %.3f ms  %.1f TFLOPS\n", label, (long)B,
           (long)H, (long)N, (long)D, c.causal, c.det, med, 2.5 * fwd_flops / (med * 1e-3) / 1e12);
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) printf("CUDA error: %s\n", cudaGetErrorString(err));
    for (const void* ptr : {p.q, p.k, p.v, p.dout}) cudaFree(const_cast<void*>(ptr));
    cudaFree(o), cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(lse);
  }
  return 0;
}
