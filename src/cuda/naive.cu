// Rung 1: naive attention, the obvious three-kernel baseline (docs/02-naive.md).
//
//   1. scores_kernel:  S = mask(softcap(scale * Q K^T))        -> fp32 S [B*Hq, Nq, Nk] in HBM
//   2. softmax rows:   P = softmax(S) in place, LSE per row    (softmax.cu, equations (3)/(4))
//   3. pv_kernel:      O = P V                                 -> O in the input dtype
//
// S is materialized: B*Hq*Nq*Nk*4 bytes of HBM written once and read twice, which
// is what every later rung removes. Both matmuls are plain 32x32 shared-memory
// tiles on CUDA cores (each thread computes 2x2 outputs).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/mask.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/softmax_rows.cuh"

namespace flashattn {
namespace cuda {
namespace {

constexpr int kTile = 32;   // output tile kTile x kTile, reduction step kTile
constexpr int kThreads = 16;  // block kThreads x kThreads; thread owns rows ty + 16a, cols tx + 16b
constexpr int64_t kMaxScoresBytes = int64_t{8} << 30;  // refuse S workspaces above 8 GiB

struct NaiveArgs {
  const void *q, *k, *v;
  void* o;
  int64_t q_bs, q_rs, q_hs, k_bs, k_rs, k_hs, v_bs, v_rs, v_hs, o_bs, o_rs, o_hs;
  int64_t batch, nq, nk, hq, group, d;
  int64_t tiles_i, tiles_j;  // output tiles per (b, h)
  float scale, softcap;
  Mask mask;
};

// S[bh, i, j] = mask(softcap(scale * q_i . k_j)), equations (1)-(2) of docs/00-attention.md.
template <typename T>
__global__ void __launch_bounds__(kThreads* kThreads) scores_kernel(NaiveArgs a, float* S) {
  __shared__ float qs[kTile][kTile + 1];
  __shared__ float ks[kTile][kTile + 1];
  const int64_t tile = blockIdx.x;
  const int64_t tj = tile % a.tiles_j, ti = (tile / a.tiles_j) % a.tiles_i, bh = tile / (a.tiles_j * a.tiles_i);
  const int64_t b = bh / a.hq, h = bh % a.hq, hk = h / a.group;
  const int64_t i0 = ti * kTile, j0 = tj * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreads + tx;
  const T* q = static_cast<const T*>(a.q) + b * a.q_bs + h * a.q_hs;
  const T* k = static_cast<const T*>(a.k) + b * a.k_bs + hk * a.k_hs;

  float acc[2][2] = {};
  for (int64_t d0 = 0; d0 < a.d; d0 += kTile) {
    for (int e = tid; e < kTile * kTile; e += kThreads * kThreads) {
      const int r = e / kTile, c = e % kTile;
      const bool dok = d0 + c < a.d;
      qs[r][c] = (i0 + r < a.nq && dok) ? to_float(q[(i0 + r) * a.q_rs + d0 + c]) : 0.0f;
      ks[r][c] = (j0 + r < a.nk && dok) ? to_float(k[(j0 + r) * a.k_rs + d0 + c]) : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTile; ++c)
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int y = 0; y < 2; ++y) acc[x][y] += qs[ty + 16 * x][c] * ks[tx + 16 * y][c];
    __syncthreads();
  }
#pragma unroll
  for (int x = 0; x < 2; ++x)
#pragma unroll
    for (int y = 0; y < 2; ++y) {
      const int64_t i = i0 + ty + 16 * x, j = j0 + tx + 16 * y;
      if (i >= a.nq || j >= a.nk) continue;
      float s = acc[x][y] * a.scale;
      if (a.softcap > 0.0f) s = a.softcap * tanhf(s / a.softcap);
      if (!a.mask.visible(i, j)) s = -INFINITY;
      S[(bh * a.nq + i) * a.nk + j] = s;
    }
}

// O[b, i, h, :] = sum_j P[bh, i, j] V[b, j, h / group, :]
template <typename T>
__global__ void __launch_bounds__(kThreads* kThreads) pv_kernel(NaiveArgs a, const float* P) {
  __shared__ float ps[kTile][kTile + 1];
  __shared__ float vs[kTile][kTile + 1];
  const int64_t tile = blockIdx.x;
  const int64_t td = tile % a.tiles_j, ti = (tile / a.tiles_j) % a.tiles_i, bh = tile / (a.tiles_j * a.tiles_i);
  const int64_t b = bh / a.hq, h = bh % a.hq, hk = h / a.group;
  const int64_t i0 = ti * kTile, c0 = td * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreads + tx;
  const T* v = static_cast<const T*>(a.v) + b * a.v_bs + hk * a.v_hs;
  const float* prow = P + bh * a.nq * a.nk;

  float acc[2][2] = {};
  for (int64_t j0 = 0; j0 < a.nk; j0 += kTile) {
    for (int e = tid; e < kTile * kTile; e += kThreads * kThreads) {
      const int r = e / kTile, c = e % kTile;
      ps[r][c] = (i0 + r < a.nq && j0 + c < a.nk) ? prow[(i0 + r) * a.nk + j0 + c] : 0.0f;
      vs[r][c] = (j0 + r < a.nk && c0 + c < a.d) ? to_float(v[(j0 + r) * a.v_rs + c0 + c]) : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTile; ++c)
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int y = 0; y < 2; ++y) acc[x][y] += ps[ty + 16 * x][c] * vs[c][tx + 16 * y];
    __syncthreads();
  }
  T* o = static_cast<T*>(a.o) + b * a.o_bs + h * a.o_hs;
#pragma unroll
  for (int x = 0; x < 2; ++x)
#pragma unroll
    for (int y = 0; y < 2; ++y) {
      const int64_t i = i0 + ty + 16 * x, c = c0 + tx + 16 * y;
      if (i < a.nq && c < a.d) o[i * a.o_rs + c] = from_float<T>(acc[x][y]);
    }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
Status run_naive(const FwdParams& p, cudaStream_t stream) {
  NaiveArgs a{p.q, p.k, p.v, p.o,
              p.q_batch_stride, p.q_row_stride, p.q_head_stride,
              p.k_batch_stride, p.k_row_stride, p.k_head_stride,
              p.v_batch_stride, p.v_row_stride, p.v_head_stride,
              p.o_batch_stride, p.o_row_stride, p.o_head_stride,
              p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_q / p.heads_kv, p.head_dim,
              ceil_div(p.seqlen_q, kTile), ceil_div(p.seqlen_k, kTile),
              effective_scale(p), p.softcap, make_mask(p)};
  const int64_t bh = p.batch * p.heads_q;
  // In double first: the int64 product can overflow for absurd shapes.
  const double s_bytes_d = static_cast<double>(bh) * static_cast<double>(p.seqlen_q) *
                           static_cast<double>(p.seqlen_k) * sizeof(float);
  if (s_bytes_d > static_cast<double>(kMaxScoresBytes))
    return Status::Unsupported("naive: the score matrix S would need " +
                               std::to_string(static_cast<int64_t>(s_bytes_d / (1 << 20))) +
                               " MiB of workspace (limit " + std::to_string(kMaxScoresBytes >> 30) +
                               " GiB); use fa1 or fa2, which never materialize S");
  const int64_t s_bytes = bh * p.seqlen_q * p.seqlen_k * static_cast<int64_t>(sizeof(float));
  const int64_t s_blocks = bh * a.tiles_i * a.tiles_j;
  const int64_t o_blocks = bh * a.tiles_i * ceil_div(p.head_dim, kTile);
  if (s_blocks > INT32_MAX || o_blocks > INT32_MAX) return Status::Unsupported("naive: grid too large");

  float* S = nullptr;
  FA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&S), static_cast<size_t>(s_bytes), stream));
  const dim3 block(kThreads, kThreads);
  scores_kernel<T><<<static_cast<unsigned>(s_blocks), block, 0, stream>>>(a, S);
  cudaError_t err = cudaGetLastError();
  Status st = Status::Ok();
  if (err == cudaSuccess) {
    SoftmaxParams sp;
    sp.x = S;
    sp.y = S;
    sp.rows = bh * p.seqlen_q;
    sp.cols = p.seqlen_k;
    sp.x_row_stride = sp.y_row_stride = p.seqlen_k;
    sp.dtype = DType::kFloat32;
    sp.variant = SoftmaxVariant::kOnline;
    st = launch_softmax_rows(sp, p.lse, stream);
  }
  if (err == cudaSuccess && st.ok()) {
    a.tiles_j = ceil_div(p.head_dim, kTile);  // pv tiles run over head_dim columns
    pv_kernel<T><<<static_cast<unsigned>(o_blocks), block, 0, stream>>>(a, S);
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(S, stream);
  if (!st.ok()) return st;
  FA_CUDA_CHECK(err);
  FA_CUDA_CHECK(free_err);
  return Status::Ok();
}

}  // namespace

Status naive_forward(const FwdParams& p) {
  if (effective_head_dim_v(p) != p.head_dim) return Status::Unsupported("naive: head_dim_v must equal head_dim");
  if (p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.block_table)
    return Status::Unsupported("naive: varlen / KV-cache layouts are not supported (use kernel auto)");
  const cudaStream_t stream = as_stream(p.stream);
  switch (p.dtype) {
    case DType::kFloat32: return run_naive<float>(p, stream);
    case DType::kFloat16: return run_naive<__half>(p, stream);
    case DType::kBFloat16: return run_naive<__nv_bfloat16>(p, stream);
  }
  return Status::Internal("naive: unknown dtype");
}

}  // namespace cuda
}  // namespace flashattn
