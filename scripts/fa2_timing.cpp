// Timing of the FA2 forward (Kernel::kFA2) on the issue-3 shapes: 16k tokens
// per batch, hidden 2048 (B = 16384 / N, H = 2048 / D), bf16. Built by hand
// against the library (outside the test/bench globs):
//   g++ -O2 -std=c++17 scripts/fa2_timing.cpp -Iinclude -I/usr/local/cuda/include \
//       $BUILD/src/libflashattn.a -L/usr/local/cuda/lib64 -lcudart -fopenmp -o /tmp/fa2_timing
// Each sample times 10 back-to-back forwards between two CUDA events (so the
// host-side validation overlaps the previous kernel); prints the median of 7
// samples per call and TFLOPS (4 B H N^2 D, halved when causal).
// Output lines: "fa2 d=128 N=8192 causal=1 ms=... tflops=...".
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "flashattn/flashattn.h"

using namespace flashattn;

static uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

int main(int argc, char** argv) {
  std::vector<int> dims = {64, 128};
  std::vector<int> lens = {1024, 2048, 4096, 8192, 16384};
  if (argc > 1) dims = {std::atoi(argv[1])};
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("card: %s\n", prop.name);
  const int64_t max_elems = int64_t{16384} * 2048;  // B * N * H * D is the same for every shape
  std::vector<uint16_t> host(max_elems);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.f, 1.f);
  for (auto& x : host) x = float_to_bf16(dist(rng));
  void *q, *k, *v, *o;
  float* lse;
  cudaMalloc(&q, max_elems * 2);
  cudaMalloc(&k, max_elems * 2);
  cudaMalloc(&v, max_elems * 2);
  cudaMalloc(&o, max_elems * 2);
  cudaMalloc(&lse, max_elems * 4);
  cudaMemcpy(q, host.data(), max_elems * 2, cudaMemcpyHostToDevice);
  std::reverse(host.begin(), host.end());
  cudaMemcpy(k, host.data(), max_elems * 2, cudaMemcpyHostToDevice);
  std::shuffle(host.begin(), host.end(), rng);
  cudaMemcpy(v, host.data(), max_elems * 2, cudaMemcpyHostToDevice);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int d : dims)
    for (int n : lens)
      for (int causal = 0; causal < 2; ++causal) {
        FwdParams p;
        p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse;
        p.batch = 16384 / n;
        p.seqlen_q = p.seqlen_k = n;
        p.heads_q = p.heads_kv = 2048 / d;
        p.head_dim = d;
        p.dtype = DType::kBFloat16;
        p.causal = causal;
        p.device = Device::kCUDA;
        p.kernel = Kernel::kFA2;
        set_contiguous_strides(p);
        Status st = forward(p);
        if (!st.ok()) {
          std::printf("fa2 d=%d N=%d causal=%d error: %s\n", d, n, causal, st.message.c_str());
          continue;
        }
        for (int i = 0; i < 5; ++i) forward(p);
        std::vector<float> per_call;
        for (int s = 0; s < 7; ++s) {
          cudaEventRecord(e0);
          for (int i = 0; i < 10; ++i) forward(p);
          cudaEventRecord(e1);
          cudaEventSynchronize(e1);
          float ms = 0;
          cudaEventElapsedTime(&ms, e0, e1);
          per_call.push_back(ms / 10);
        }
        std::sort(per_call.begin(), per_call.end());
        const double ms = per_call[per_call.size() / 2];
        const double flops = 4.0 * p.batch * p.heads_q * double(n) * n * d / (causal ? 2 : 1);
        const cudaError_t err = cudaGetLastError();
        std::printf("fa2 d=%d N=%d causal=%d ms=%.4f tflops=%.1f%s\n", d, n, causal, ms, flops / ms / 1e9,
                    err == cudaSuccess ? "" : " CUDA-ERROR");
      }
  return 0;
}
