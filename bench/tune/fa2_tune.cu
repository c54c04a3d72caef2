// flashattn-fa2-tune: times the FA2 forward kernel (src/cuda/fa2/fa2_fwd_kernel.cuh)
// under several tile shapes for head dims 64 and 128, bf16, causal and not, on
// the issue-3 problem family (16k tokens per batch, hidden 2048) at N = 2k and
// 8k, so the default in fa2_fwd_tile() is picked from measurements over more
// than one shape. Each candidate's output is compared with the default tile's
// (same inputs): a candidate that disagrees is reported, not timed.
//
// Dev tool, built only with -DFLASHATTN_FA2_TUNE=ON (scripts/gpu_check.sh does).
// Timing: CUDA events around each launch, 3 warm-ups, median of 15 reps.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda/fa2/fa2_fwd_kernel.cuh"

namespace fa = flashattn::cuda;
using Element = __nv_bfloat16;

#define TUNE_CUDA(expr)                                                                 \
  do {                                                                                  \
    cudaError_t e_ = (expr);                                                            \
    if (e_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

struct Problem {
  int b, h, n, d;
  bool causal;
  Element *q, *k, *v;
};

template <class Tr>
float time_config(const Problem& pb, Element* out, const char* name, const std::vector<float>* ref,
                  std::vector<float>* result) {
  fa::Fa2FwdArgs a;
  a.q = pb.q;
  a.k = pb.k;
  a.v = pb.v;
  a.o = out;
  const int64_t row = static_cast<int64_t>(pb.h) * pb.d, batch = row * pb.n;
  a.q_batch_stride = a.k_batch_stride = a.v_batch_stride = a.o_batch_stride = batch;
  a.q_row_stride = a.k_row_stride = a.v_row_stride = a.o_row_stride = row;
  a.q_head_stride = a.k_head_stride = a.v_head_stride = a.o_head_stride = pb.d;
  a.batch = pb.b;
  a.seqlen_q = a.seqlen_k = pb.n;
  a.heads_q = pb.h;
  a.group = 1;
  a.head_dim = pb.d;
  a.scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(pb.d));
  a.window_right = pb.causal ? 0 : -1;
  auto kernel = pb.causal ? fa::fa2::fwd_kernel<Tr, true, false, false> : fa::fa2::fwd_kernel<Tr, false, false, false>;
  TUNE_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  const dim3 grid((pb.n + Tr::kBlockM - 1) / Tr::kBlockM, pb.h, pb.b);
  const size_t elems = static_cast<size_t>(pb.b) * batch;
  TUNE_CUDA(cudaMemset(out, 0xff, elems * sizeof(Element)));
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes>>>(a);
  TUNE_CUDA(cudaGetLastError());
  TUNE_CUDA(cudaDeviceSynchronize());
  // Check against the reference tile's output (or record it as the reference).
  std::vector<Element> host(elems);
  TUNE_CUDA(cudaMemcpy(host.data(), out, elems * sizeof(Element), cudaMemcpyDeviceToHost));
  std::vector<float> got(elems);
  for (size_t i = 0; i < elems; ++i) got[i] = __bfloat162float(host[i]);
  if (ref) {
    double worst = 0.0;
    for (size_t i = 0; i < elems; ++i) {
      const double diff = std::fabs(static_cast<double>(got[i]) - (*ref)[i]);
      worst = std::isnan(diff) ? INFINITY : std::max(worst, diff);
    }
    if (!(worst < 2e-2)) {
      std::printf("  %-22s MISMATCH vs default tile: max |diff| %.3g\n", name, worst);
      return -1.0f;
    }
  }
  if (result) *result = std::move(got);

  cudaEvent_t e0, e1;
  TUNE_CUDA(cudaEventCreate(&e0));
  TUNE_CUDA(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int rep = 0; rep < 18; ++rep) {
    TUNE_CUDA(cudaEventRecord(e0));
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes>>>(a);
    TUNE_CUDA(cudaEventRecord(e1));
    TUNE_CUDA(cudaEventSynchronize(e1));
    float t = 0.0f;
    TUNE_CUDA(cudaEventElapsedTime(&t, e0, e1));
    if (rep >= 3) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  const double t = ms[ms.size() / 2];
  const double flops = 4.0 * pb.b * pb.h * static_cast<double>(pb.n) * pb.n * pb.d / (pb.causal ? 2.0 : 1.0);
  const double tflops = flops / (t * 1e-3) / 1e12;
  std::printf("  %-22s %8.3f ms %7.1f TFLOPS\n", name, t, tflops);
  return static_cast<float>(tflops);
}

// Candidates: <block_m, block_n, warps, min CTAs per SM>.
template <int D>
void sweep(const Problem& pb, Element* out);

#define CAND(D, BM, BN, W, MB)                                                                        \
  time_config<fa::fa2::FwdTraits<D, BM, BN, W, Element, MB>>(pb, out, #BM "x" #BN " w" #W " minB" #MB, \
                                                               &ref, nullptr)

template <>
void sweep<64>(const Problem& pb, Element* out) {
  std::vector<float> ref;
  constexpr fa::Fa2FwdTile t = fa::fa2_fwd_tile(64);
  time_config<fa::fa2::FwdTraits<64, t.block_m, t.block_n, t.warps, Element, t.min_blocks>>(pb, out, "default", nullptr, &ref);
  time_config<fa::fa2::FwdTraits<64, t.block_m, t.block_n, t.warps, Element, t.min_blocks, false>>(
      pb, out, "default, eager rescale", &ref, nullptr);
  CAND(64, 128, 64, 4, 1);
  CAND(64, 128, 64, 4, 3);
  CAND(64, 128, 128, 4, 1);
  CAND(64, 128, 128, 8, 1);
  CAND(64, 64, 64, 4, 1);
  CAND(64, 64, 128, 4, 1);
  CAND(64, 256, 64, 8, 1);
  CAND(64, 128, 32, 4, 3);
}

template <>
void sweep<128>(const Problem& pb, Element* out) {
  std::vector<float> ref;
  constexpr fa::Fa2FwdTile t = fa::fa2_fwd_tile(128);
  time_config<fa::fa2::FwdTraits<128, t.block_m, t.block_n, t.warps, Element, t.min_blocks>>(pb, out, "default", nullptr, &ref);
  time_config<fa::fa2::FwdTraits<128, t.block_m, t.block_n, t.warps, Element, t.min_blocks, false>>(
      pb, out, "default, eager rescale", &ref, nullptr);
  CAND(128, 128, 32, 4, 1);
  CAND(128, 128, 128, 8, 1);
  CAND(128, 128, 64, 8, 1);
  CAND(128, 64, 64, 4, 1);
  CAND(128, 64, 128, 4, 1);
  CAND(128, 256, 64, 8, 1);
  CAND(128, 64, 32, 4, 2);
}

int main(int argc, char** argv) {
  std::vector<int> lengths = {2048, 8192};
  if (argc > 1) lengths = {std::atoi(argv[1])};
  cudaDeviceProp prop{};
  TUNE_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("flashattn-fa2-tune on %s: bf16, 16k tokens per batch, hidden 2048\n", prop.name);
  const size_t max_elems = 16384ull * 2048;
  std::vector<Element> host(max_elems);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Element *q, *k, *v, *out;
  TUNE_CUDA(cudaMalloc(&q, max_elems * sizeof(Element)));
  TUNE_CUDA(cudaMalloc(&k, max_elems * sizeof(Element)));
  TUNE_CUDA(cudaMalloc(&v, max_elems * sizeof(Element)));
  TUNE_CUDA(cudaMalloc(&out, max_elems * sizeof(Element)));
  for (Element* buf : {q, k, v}) {
    for (auto& x : host) x = __float2bfloat16(normal(rng));
    TUNE_CUDA(cudaMemcpy(buf, host.data(), max_elems * sizeof(Element), cudaMemcpyHostToDevice));
  }
  for (int d : {64, 128})
    for (int n : lengths)
      for (bool causal : {false, true}) {
        Problem pb{16384 / n, 2048 / d, n, d, causal, q, k, v};
        std::printf("d=%d N=%d B=%d H=%d %s\n", d, n, pb.b, pb.h, causal ? "causal" : "non-causal");
        if (d == 64)
          sweep<64>(pb, out);
        else
          sweep<128>(pb, out);
      }
  cudaFree(q);
  cudaFree(k);
  cudaFree(v);
  cudaFree(out);
  return 0;
}
