// Rung 2: FlashAttention-1 loop order, one thread per query row (docs/03-fa1.md).
//
// A block owns kRows query rows of one (batch, head). It walks over the keys in
// tiles of kBc rows: the block copies K and V of the tile into shared memory
// (fp32), then every thread scores its own query row against the tile, updates
// its running max m and sum l with the online-softmax rule (docs/01, equations
// (3)-(4)) and rescales its fp32 O accumulator, which never leaves registers.
// S and P exist only kBc at a time, in registers: nothing quadratic touches HBM.
//
// Head dims are padded up to a bucket kD in {32, 64, 128, 256} (the padding
// columns of the smem tiles are zero, so they add nothing). For kD >= 128 a row
// is shared by kTPR = kD / 64 adjacent threads, each holding 64 dims of q and O
// (a whole 256-wide O row in one thread would spill); their partial dot products
// are summed with two or three shuffles. Thread part p owns the float4 groups
// p, p + kTPR, p + 2 kTPR, ... so the kTPR threads of a row hit distinct banks.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/mask.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "flashattn/online_softmax.h"

namespace flashattn {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // threads per block
constexpr int kBc = 32;        // keys per shared-memory tile

struct Fa1Args {
  const void *q, *k, *v;
  void* o;
  float* lse;
  int64_t q_bs, q_rs, q_hs, k_bs, k_rs, k_hs, v_bs, v_rs, v_hs, o_bs, o_rs, o_hs;
  int64_t nq, nk, hq, group, d;
  int64_t row_blocks;  // ceil(nq / rows per block)
  float scale, softcap;
  Mask mask;
};

// kD: padded head dim; kTPR: threads per query row.
template <typename T, int kD, int kTPR>
__global__ void __launch_bounds__(kThreads) fa1_kernel(Fa1Args a) {
  constexpr int kRows = kThreads / kTPR;  // query rows per block
  constexpr int kGroups = kD / 4 / kTPR;  // float4 groups of q / O per thread
  constexpr int kVec = 16 / sizeof(T);    // elements per 16-byte global load
  extern __shared__ float4 smem[];
  float4* ks = smem;                      // [kBc][kD / 4]
  float4* vs = smem + kBc * kD / 4;       // [kBc][kD / 4]

  const int64_t rb = blockIdx.x % a.row_blocks, bh = blockIdx.x / a.row_blocks;
  const int64_t b = bh / a.hq, h = bh % a.hq, hk = h / a.group;
  const int part = threadIdx.x % kTPR;
  const int64_t i0 = rb * kRows;
  const int64_t i = i0 + threadIdx.x / kTPR;
  const bool row_valid = i < a.nq;
  const T* kp = static_cast<const T*>(a.k) + b * a.k_bs + hk * a.k_hs;
  const T* vp = static_cast<const T*>(a.v) + b * a.v_bs + hk * a.v_hs;

  // Zero the padding columns [d, kD) once; tile loads never write them.
  for (int e = threadIdx.x; e < kBc * kD; e += kThreads) {
    const int c = e % kD;
    if (c >= a.d) {
      reinterpret_cast<float*>(ks)[e] = 0.0f;
      reinterpret_cast<float*>(vs)[e] = 0.0f;
    }
  }

  // This thread's slice of q (pre-multiplied by the scale) and of the O accumulator.
  float4 q[kGroups], o[kGroups];
  {
    const T* qp = static_cast<const T*>(a.q) + b * a.q_bs + (row_valid ? i : 0) * a.q_rs + h * a.q_hs;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int d0 = 4 * (part + kTPR * g);
      float f[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) f[e] = d0 + e < a.d ? to_float(qp[d0 + e]) * a.scale : 0.0f;
      q[g] = make_float4(f[0], f[1], f[2], f[3]);
      o[g] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  SoftmaxStats st;  // (m, l) of this row so far: (-inf, 0)

  // Keys any row of the block may see (key_begin / key_end grow with i), and this row's own range.
  const int64_t i_last = (i0 + kRows < a.nq ? i0 + kRows : a.nq) - 1;
  const int64_t kb = a.mask.key_begin(i0), ke = a.mask.key_end(i_last);
  const int64_t jb = a.mask.key_begin(i), je = a.mask.key_end(i);

  for (int64_t j0 = kb; j0 < ke; j0 += kBc) {
    // K, V tile -> shared memory as fp32; rows past the end are zero (0 * V, never NaN).
    __syncthreads();
    const int vecs_per_row = static_cast<int>(a.d) / kVec;
    for (int e = threadIdx.x; e < kBc * vecs_per_row; e += kThreads) {
      const int r = e / vecs_per_row, c = (e % vecs_per_row) * kVec;
      const int64_t j = j0 + r;
      float* kd = reinterpret_cast<float*>(ks) + r * kD + c;
      float* vd = reinterpret_cast<float*>(vs) + r * kD + c;
      if (j < a.nk) {
        struct alignas(16) Chunk { T x[kVec]; };
        const Chunk kc = *reinterpret_cast<const Chunk*>(kp + j * a.k_rs + c);
        const Chunk vc = *reinterpret_cast<const Chunk*>(vp + j * a.v_rs + c);
#pragma unroll
        for (int x = 0; x < kVec; ++x) {
          kd[x] = to_float(kc.x[x]);
          vd[x] = to_float(vc.x[x]);
        }
      } else {
#pragma unroll
        for (int x = 0; x < kVec; ++x) kd[x] = vd[x] = 0.0f;
      }
    }
    __syncthreads();

    // Scores of this row against the tile: s_j = softcap(scale q . k_j), masked (eq. (1)-(2) of docs/00).
    float s[kBc];
    float tile_max = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < kBc; ++jj) {
      float dot = 0.0f;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const float4 kk = ks[jj * (kD / 4) + part + kTPR * g];
        dot += q[g].x * kk.x + q[g].y * kk.y + q[g].z * kk.z + q[g].w * kk.w;
      }
#pragma unroll
      for (int off = kTPR / 2; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      if (a.softcap > 0.0f) dot = a.softcap * tanhf(dot / a.softcap);
      const int64_t j = j0 + jj;
      s[jj] = (j >= jb && j < je) ? dot : -INFINITY;
      tile_max = fmaxf(tile_max, s[jj]);
    }

    // Online softmax, equation (4) with the tile as the new block: rescale l and O
    // by exp(m_old - m_new) once, then add exp(s_j - m_new) and exp(s_j - m_new) v_j.
    const float m_new = fmaxf(st.max, tile_max);
    if (m_new == -INFINITY) continue;  // nothing visible yet for this row
    const float alpha = rescale_factor(st.max, m_new);
    float l = st.sum * alpha;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      o[g].x *= alpha;
      o[g].y *= alpha;
      o[g].z *= alpha;
      o[g].w *= alpha;
    }
#pragma unroll
    for (int jj = 0; jj < kBc; ++jj) {
      const float pj = __expf(s[jj] - m_new);  // exp(-inf) = 0 for masked keys
      l += pj;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const float4 vv = vs[jj * (kD / 4) + part + kTPR * g];
        o[g].x += pj * vv.x;
        o[g].y += pj * vv.y;
        o[g].z += pj * vv.z;
        o[g].w += pj * vv.w;
      }
    }
    st.max = m_new;
    st.sum = l;
  }

  if (!row_valid) return;
  // O = acc / l; a row that saw no key has l = 0: O = 0 and LSE = -inf.
  const float inv_l = st.sum > 0.0f ? 1.0f / st.sum : 0.0f;
  T* op = static_cast<T*>(a.o) + b * a.o_bs + i * a.o_rs + h * a.o_hs;
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const int d0 = 4 * (part + kTPR * g);
    if (d0 < a.d) {  // d is a multiple of 8, so a group is all in or all out
      op[d0 + 0] = from_float<T>(o[g].x * inv_l);
      op[d0 + 1] = from_float<T>(o[g].y * inv_l);
      op[d0 + 2] = from_float<T>(o[g].z * inv_l);
      op[d0 + 3] = from_float<T>(o[g].w * inv_l);
    }
  }
  if (a.lse && part == 0) a.lse[bh * a.nq + i] = log_sum_exp(st);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T, int kD, int kTPR>
Status launch(Fa1Args a, int64_t batch, cudaStream_t stream) {
  constexpr int kRows = kThreads / kTPR;
  constexpr int kSmemBytes = 2 * kBc * kD * sizeof(float);  // K and V tiles
  a.row_blocks = ceil_div(a.nq, kRows);
  const int64_t blocks = a.row_blocks * batch * a.hq;
  if (blocks > INT32_MAX) return Status::Unsupported("fa1: batch * heads * seqlen_q is too large for one grid");
  auto kernel = fa1_kernel<T, kD, kTPR>;
  if (kSmemBytes > 48 * 1024)  // opt in to more than the default 48 KiB of dynamic shared memory
    FA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  kernel<<<static_cast<unsigned>(blocks), kThreads, kSmemBytes, stream>>>(a);
  FA_CUDA_CHECK_LAUNCH("fa1_kernel");
  return Status::Ok();
}

// Head-dim buckets: (padded kD, threads per row).
template <typename T>
Status launch_bucket(const Fa1Args& a, int64_t batch, cudaStream_t stream) {
  if (a.d <= 32) return launch<T, 32, 1>(a, batch, stream);
  if (a.d <= 64) return launch<T, 64, 1>(a, batch, stream);
  if (a.d <= 128) return launch<T, 128, 2>(a, batch, stream);
  return launch<T, 256, 4>(a, batch, stream);
}

}  // namespace

Status fa1_forward(const FwdParams& p) {
  if (effective_head_dim_v(p) != p.head_dim) return Status::Unsupported("fa1: head_dim_v must equal head_dim");
  if (p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.block_table)
    return Status::Unsupported("fa1: varlen / KV-cache layouts are not supported (use kernel auto)");
  if (p.head_dim > 256 || p.head_dim % 8 != 0)
    return Status::Unsupported("fa1: head_dim must be a multiple of 8 up to 256 (got " +
                               std::to_string(p.head_dim) + ")");
  Fa1Args a{p.q, p.k, p.v, p.o, p.lse,
            p.q_batch_stride, p.q_row_stride, p.q_head_stride,
            p.k_batch_stride, p.k_row_stride, p.k_head_stride,
            p.v_batch_stride, p.v_row_stride, p.v_head_stride,
            p.o_batch_stride, p.o_row_stride, p.o_head_stride,
            p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_q / p.heads_kv, p.head_dim,
            0, effective_scale(p), p.softcap, make_mask(p)};
  const cudaStream_t stream = as_stream(p.stream);
  switch (p.dtype) {
    case DType::kFloat32: return launch_bucket<float>(a, p.batch, stream);
    case DType::kFloat16: return launch_bucket<__half>(a, p.batch, stream);
    case DType::kBFloat16: return launch_bucket<__nv_bfloat16>(a, p.batch, stream);
  }
  return Status::Internal("fa1: unknown dtype");
}

}  // namespace cuda
}  // namespace flashattn
