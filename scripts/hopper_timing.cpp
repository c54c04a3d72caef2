// Timing of the Hopper forward against the FA2 rung (when it runs) on the
// issue-4 shapes: bf16, 16k tokens per batch, hidden 2048 (heads = 2048 / d).
// Built by hand against the library (outside the test/bench globs):
//   g++ -O2 -std=c++17 scripts/hopper_timing.cpp -Iinclude -I/usr/local/cuda/include \
//       $BUILD/src/libflashattn.a -L/usr/local/cuda/lib64 -lcudart -fopenmp -o /tmp/hopper_timing
// Prints one line per (d, N, causal, kernel): median ms of 20 runs and TFLOPS
// (FlashAttention convention: 4 B H N^2 D, halved when causal).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "flashattn/flashattn.h"

using namespace flashattn;

static uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "quick") == 0;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("card: %s\n", prop.name);
  std::vector<int> dims = {64, 128, 256};
  std::vector<int> lens = quick ? std::vector<int>{512, 8192} : std::vector<int>{512, 1024, 2048, 4096, 8192, 16384};
  for (int d : dims)
    for (int n : lens)
      for (int causal = 0; causal < 2; ++causal) {
        const int64_t B = 16384 / n, H = 2048 / d;
        const int64_t elems = B * n * H * d;
        std::vector<uint16_t> host(elems);
        std::mt19937 rng(1);
        std::normal_distribution<float> dist(0.f, 1.f);
        for (auto& x : host) x = to_bf16(dist(rng));
        void *q, *k, *v, *o;
        float* lse;
        cudaMalloc(&q, elems * 2);
        cudaMalloc(&k, elems * 2);
        cudaMalloc(&v, elems * 2);
        cudaMalloc(&o, elems * 2);
        cudaMalloc(&lse, B * H * n * 4);
        cudaMemcpy(q, host.data(), elems * 2, cudaMemcpyHostToDevice);
        cudaMemcpy(k, host.data(), elems * 2, cudaMemcpyHostToDevice);  // same values are fine for timing
        cudaMemcpy(v, host.data(), elems * 2, cudaMemcpyHostToDevice);
        FwdParams p;
        p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse;
        p.batch = B, p.seqlen_q = p.seqlen_k = n, p.heads_q = p.heads_kv = H, p.head_dim = d;
        p.dtype = DType::kBFloat16;
        p.causal = causal;
        p.device = Device::kCUDA;
        set_contiguous_strides(p);
        const double flops = 4.0 * B * H * n * static_cast<double>(n) * d / (causal ? 2 : 1);
        for (Kernel kern : {Kernel::kHopper, Kernel::kFA2}) {
          p.kernel = kern;
          Status st = forward(p);
          if (!st.ok()) {
            std::printf("d=%3d N=%5d causal=%d %-7s : %s\n", d, n, causal, kernel_name(kern), st.message.c_str());
            continue;
          }
          for (int i = 0; i < 3; ++i) forward(p);
          cudaEvent_t e0, e1;
          cudaEventCreate(&e0);
          cudaEventCreate(&e1);
          std::vector<float> ms;
          for (int r = 0; r < 20; ++r) {
            cudaEventRecord(e0);
            forward(p);
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            float t;
            cudaEventElapsedTime(&t, e0, e1);
            ms.push_back(t);
          }
          std::sort(ms.begin(), ms.end());
          const float med = ms[ms.size() / 2];
          const cudaError_t err = cudaGetLastError();
          std::printf("d=%3d N=%5d causal=%d %-7s : %8.3f ms %7.1f TFLOPS %s\n", d, n, causal, kernel_name(kern), med,
                      flops / (med * 1e-3) / 1e12, err == cudaSuccess ? "" : cudaGetErrorString(err));
          cudaEventDestroy(e0);
          cudaEventDestroy(e1);
        }
        cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(lse);
      }
  return 0;
}
