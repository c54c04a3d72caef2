// HOST EMULATION of src/cuda/fa2/mma_sm80.cuh for scripts/fa2_emu/fa2_emu_main.cpp (forward)
// and fa2_bwd_emu_main.cpp (backward): the same functions, executed by one std::thread per
// CUDA thread. Warp collectives (ldmatrix,
// mma.sync, shuffles) exchange operands through per-warp slots between two barriers and
// follow the PTX fragment layouts; cp.async copies synchronously. Not part of the library.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
using std::min; using std::max;
#undef __global__
#undef __launch_bounds__
#undef __shared__
#undef __align__
#define __global__
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
struct Dim3 { unsigned x, y, z; };
extern thread_local Dim3 threadIdx, blockIdx;
extern Dim3 gridDim;
extern Dim3 blockDim;  // defined by the mains whose kernels read it (the backward's)
namespace flashattn { namespace cuda { namespace fa2 { extern unsigned char smem[]; } } }
extern std::barrier<>* g_cta_barrier;
inline void __syncthreads() { g_cta_barrier->arrive_and_wait(); }
// Global-memory atomics of the backward (dQ accumulation, deterministic semaphores).
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
struct WarpSlots { uint64_t v[32][8]; std::barrier<>* bar; };
extern WarpSlots g_warps[8];
inline WarpSlots& my_warp() { return g_warps[threadIdx.x / 32]; }
inline void __syncwarp() { my_warp().bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float x, int m) {
  WarpSlots& w = my_warp(); int l = threadIdx.x % 32;
  std::memcpy(&w.v[l][0], &x, 4); w.bar->arrive_and_wait();
  float y; std::memcpy(&y, &w.v[l ^ m][0], 4); w.bar->arrive_and_wait(); return y;
}
inline int __any_sync(unsigned, int pred) {  // every lane of the warp takes part (as in the kernels)
  WarpSlots& w = my_warp(); int l = threadIdx.x % 32;
  w.v[l][0] = pred != 0; w.bar->arrive_and_wait();
  int any = 0; for (int i = 0; i < 32; ++i) any |= (int)w.v[i][0];
  w.bar->arrive_and_wait(); return any;
}
// Base of the emulated shared memory: each main points it at the array its kernel
// declares (fa2::smem for the forward, fa2bwd::smem_raw for the backward).
extern unsigned char* g_emu_smem;
namespace flashattn { namespace cuda { namespace sm80 {
inline uint32_t smem_addr(const void* p) { return (uint32_t)((const unsigned char*)p - g_emu_smem); }
inline void cp_async_16(uint32_t dst, const void* src, bool valid) {
  if (valid) std::memcpy(g_emu_smem + dst, src, 16); else std::memset(g_emu_smem + dst, 0, 16);
}
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}
inline uint16_t ld16(uint32_t a) { uint16_t v; std::memcpy(&v, g_emu_smem + a, 2); return v; }
inline void ldm(uint32_t (&r)[4], uint32_t addr, bool trans) {
  WarpSlots& w = my_warp(); int L = threadIdx.x % 32;
  w.v[L][0] = addr; w.bar->arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    uint32_t lo, hi;
    if (!trans) { uint32_t a = w.v[8 * i + L / 4][0] + 4 * (L % 4); lo = ld16(a); hi = ld16(a + 2); }
    else { lo = ld16(w.v[8 * i + 2 * (L % 4)][0] + 2 * (L / 4)); hi = ld16(w.v[8 * i + 2 * (L % 4) + 1][0] + 2 * (L / 4)); }
    r[i] = lo | (hi << 16);
  }
  w.bar->arrive_and_wait();
}
inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) { ldm(r, addr, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) { ldm(r, addr, true); }
inline float h2f(uint16_t b, __half*) { __half_raw r; r.x = b; return __half2float(__half(r)); }
inline float h2f(uint16_t b, __nv_bfloat16*) { uint32_t u = (uint32_t)b << 16; float f; std::memcpy(&f, &u, 4); return f; }
template <typename Element>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  WarpSlots& w = my_warp(); int L = threadIdx.x % 32;
  for (int i = 0; i < 4; ++i) w.v[L][i] = a[i];
  w.v[L][4] = b0; w.v[L][5] = b1; w.bar->arrive_and_wait();
  auto half = [&](uint64_t reg, int hi) { return h2f((uint16_t)(reg >> (16 * hi)), (Element*)nullptr); };
  auto A = [&](int r, int c) { return half(w.v[(r % 8) * 4 + (c % 8) / 2][(r >= 8 ? 1 : 0) + (c >= 8 ? 2 : 0)], c % 2); };
  auto B = [&](int k, int n) { return half(w.v[n * 4 + (k % 8) / 2][k >= 8 ? 5 : 4], k % 2); };
  int g = L / 4, t = L % 4;
  float out[4] = {d[0], d[1], d[2], d[3]};
  for (int k = 0; k < 16; ++k) {
    out[0] += A(g, k) * B(k, 2 * t); out[1] += A(g, k) * B(k, 2 * t + 1);
    out[2] += A(g + 8, k) * B(k, 2 * t); out[3] += A(g + 8, k) * B(k, 2 * t + 1);
  }
  w.bar->arrive_and_wait();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}
template <typename Element> inline uint32_t pack2(float lo, float hi);
template <> inline uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat16 a = __float2bfloat16_rn(lo), b = __float2bfloat16_rn(hi);
  uint16_t x, y; std::memcpy(&x, &a, 2); std::memcpy(&y, &b, 2); return x | ((uint32_t)y << 16);
}
template <> inline uint32_t pack2<__half>(float lo, float hi) {
  __half a = __float2half_rn(lo), b = __float2half_rn(hi);
  uint16_t x, y; std::memcpy(&x, &a, 2); std::memcpy(&y, &b, 2); return x | ((uint32_t)y << 16);
}
inline float exp2_approx(float x) { return exp2f(x); }
inline float tanh_approx(float x) { return tanhf(x); }
}}}
