// Timing of the first rungs: GPU row softmax (GB/s, vs a device-to-device copy)
// and the naive / FA1 attention forwards (TFLOPS). Built by hand against the library:
//   g++ -O2 -std=c++17 scripts/ladder_timing.cpp -Iinclude -I/usr/local/cuda/include
//       $BUILD/src/libflashattn.a -L/usr/local/cuda/lib64 -lcudart -fopenmp -o /tmp/ladder_timing
// Softmax GB/s counts bytes read + written once (2 * rows * cols * elem); the copy
// the same way. Median of 9 samples, each timing several back-to-back calls.
// Output lines: "softmax dtype=... rows=... cols=... variant=... us=... GBs=..." etc.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "flashattn/flashattn.h"

using namespace flashattn;

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e = (x);                                                       \
    if (e != cudaSuccess) {                                                    \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

// Median time in ms of one call of f (samples of `reps` calls each).
static double time_ms(const std::function<void()>& f, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> t;
  for (int s = 0; s < 9; ++s) {
    CK(cudaEventRecord(a));
    for (int r = 0; r < reps; ++r) f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / reps);
  }
  std::sort(t.begin(), t.end());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

// Random-ish bytes that are valid numbers in any dtype: N(0,1)-like values.
static void fill_device(void* d, int64_t n, DType dt) {
  std::vector<float> f(n);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    f[i] = static_cast<float>((s >> 40) & 0xffff) / 16384.0f - 2.0f;
  }
  if (dt == DType::kFloat32) {
    CK(cudaMemcpy(d, f.data(), n * 4, cudaMemcpyHostToDevice));
    return;
  }
  std::vector<uint16_t> h(n);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &f[i], 4);
    if (dt == DType::kBFloat16) {
      h[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    } else {  // fp16 of a value in [-2, 2): normal range, truncate the mantissa
      const uint32_t sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xff;
      h[i] = exp < 113 ? static_cast<uint16_t>(sign) : static_cast<uint16_t>(sign | ((exp - 112) << 10) | ((u >> 13) & 0x3ff));
    }
  }
  CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s\n", prop.name);

  // --- Softmax ---------------------------------------------------------------
  struct SmCase { DType dt; int64_t rows, cols; };
  const SmCase sm_cases[] = {
      {DType::kFloat32, 32768, 4096},   {DType::kBFloat16, 32768, 4096}, {DType::kFloat16, 65536, 1024},
      {DType::kFloat32, 4096, 16384},   {DType::kBFloat16, 4096, 32768}, {DType::kFloat32, 64, 1 << 20},
      {DType::kFloat32, 131072, 512},   {DType::kFloat32, 2048, 65536},
  };
  void *x = nullptr, *y = nullptr;
  const size_t max_bytes = size_t{512} << 20;
  CK(cudaMalloc(&x, max_bytes));
  CK(cudaMalloc(&y, max_bytes));
  {
    const double ms = time_ms([&] { CK(cudaMemcpyAsync(y, x, max_bytes, cudaMemcpyDeviceToDevice)); }, 10);
    std::printf("copy bytes=%zu us=%.1f GBs=%.0f\n", max_bytes, ms * 1e3, 2.0 * max_bytes / (ms * 1e-3) / 1e9);
  }
  for (const SmCase& c : sm_cases) {
    const int64_t n = c.rows * c.cols, bytes = n * dtype_size(c.dt);
    fill_device(x, n, c.dt);
    for (SoftmaxVariant v : {SoftmaxVariant::kNaive, SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) {
      SoftmaxParams p;
      p.x = x;
      p.y = y;
      p.rows = c.rows;
      p.cols = c.cols;
      p.x_row_stride = p.y_row_stride = c.cols;
      p.dtype = c.dt;
      p.variant = v;
      p.device = Device::kCUDA;
      Status st = softmax(p);
      if (!st.ok()) {
        std::printf("softmax error: %s\n", st.message.c_str());
        continue;
      }
      const double ms = time_ms([&] { softmax(p); }, 10);
      std::printf("softmax dtype=%s rows=%ld cols=%ld variant=%s us=%.1f GBs=%.0f\n", dtype_name(c.dt),
                  static_cast<long>(c.rows), static_cast<long>(c.cols), softmax_variant_name(v), ms * 1e3,
                  2.0 * bytes / (ms * 1e-3) / 1e9);
    }
  }
  CK(cudaFree(x));
  CK(cudaFree(y));

  // --- Attention: naive and FA1 -------------------------------------------------
  struct AttCase { DType dt; int64_t b, h, n, d; bool causal; };
  const AttCase att_cases[] = {
      {DType::kFloat16, 4, 16, 2048, 64, false}, {DType::kFloat16, 4, 16, 2048, 128, false},
      {DType::kFloat16, 4, 16, 2048, 128, true}, {DType::kBFloat16, 1, 16, 4096, 128, false},
      {DType::kFloat32, 4, 16, 2048, 64, false}, {DType::kFloat16, 2, 8, 2048, 256, false},
  };
  for (const AttCase& c : att_cases) {
    const int64_t n_elems = c.b * c.n * c.h * c.d, bytes = n_elems * dtype_size(c.dt);
    void *q, *k, *v, *o;
    float* lse;
    CK(cudaMalloc(&q, bytes));
    CK(cudaMalloc(&k, bytes));
    CK(cudaMalloc(&v, bytes));
    CK(cudaMalloc(&o, bytes));
    CK(cudaMalloc(&lse, c.b * c.h * c.n * sizeof(float)));
    fill_device(q, n_elems, c.dt);
    fill_device(k, n_elems, c.dt);
    fill_device(v, n_elems, c.dt);
    for (Kernel kernel : {Kernel::kNaive, Kernel::kFA1}) {
      FwdParams p;
      p.q = q;
      p.k = k;
      p.v = v;
      p.o = o;
      p.lse = lse;
      p.batch = c.b;
      p.seqlen_q = p.seqlen_k = c.n;
      p.heads_q = p.heads_kv = c.h;
      p.head_dim = c.d;
      p.dtype = c.dt;
      p.causal = c.causal;
      p.device = Device::kCUDA;
      p.kernel = kernel;
      set_contiguous_strides(p);
      Status st = forward(p);
      if (!st.ok()) {
        std::printf("%s error: %s\n", kernel_name(kernel), st.message.c_str());
        continue;
      }
      const double ms = time_ms([&] { forward(p); }, 3);
      const double flops = 4.0 * c.b * c.h * c.n * c.n * c.d / (c.causal ? 2 : 1);
      std::printf("attn kernel=%s dtype=%s b=%ld h=%ld n=%ld d=%ld causal=%d ms=%.3f tflops=%.2f\n",
                  kernel_name(kernel), dtype_name(c.dt), static_cast<long>(c.b), static_cast<long>(c.h),
                  static_cast<long>(c.n), static_cast<long>(c.d), c.causal ? 1 : 0, ms, flops / (ms * 1e-3) / 1e12);
    }
    CK(cudaFree(q));
    CK(cudaFree(k));
    CK(cudaFree(v));
    CK(cudaFree(o));
    CK(cudaFree(lse));
  }
  return 0;
}
