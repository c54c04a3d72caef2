// Kernel::kCpuFlash backward: the FlashAttention-2 backward on the CPU (docs/cpu-backend.md).
//
// 1. Pack once per call, fp32:  Qs = scale * Q and dO  [b, hq, sq, pad(d)],
//    Delta = rowsum(dO o O) [b, hq, sq],  K [b, hkv, sk, pad(d)],
//    K^T and V^T blocks [d x kBlockK] per (b, hkv, kv-block).
// 2. One OpenMP work item per (batch, kv head, kv block): dK, dV of the block
//    accumulate in thread-local fp32 tiles (summed over the query heads of the
//    KV group), so no two threads write the same dK/dV rows. For every q-block
//    the mask leaves partly visible:
//      S  = Qs K^T, softcap, mask;  P = exp(S - LSE)     (P recomputed from the saved LSE)
//      dV += P^T dO
//      dP = dO V^T;  dS = P o (dP - Delta) [o (1 - tanh^2) with softcap]
//      dK += dS^T Qs                                      (= scale * dS^T Q)
//      dQ_thread += dS K                                  (per-thread fp32 buffer)
// 3. dQ = scale * sum of the per-thread buffers, rounded to the dtype.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#include "common/mask.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_gemm.h"
#include "cpu/cpu_gemm_pack.h"

namespace flashattn {
namespace cpu {
namespace {

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;

// All allocations happen outside the parallel regions, so running out of
// memory surfaces as std::bad_alloc here (turned into a Status below).
Status backward_impl(const BwdParams& p) {
  const Mask mask = make_mask(p);
  const float scale = effective_scale(p), cap = p.softcap;
  const int64_t D = p.head_dim, Dp = pad_cols(D), Dv = effective_head_dim_v(p), Dvp = pad_cols(Dv);
  const int64_t B = p.batch, Nq = p.seqlen_q, Nk = p.seqlen_k, Hq = p.heads_q, Hkv = p.heads_kv, group = Hq / Hkv;
  const int64_t nqb = (Nq + kBlockQ - 1) / kBlockQ, nkb = (Nk + kBlockK - 1) / kBlockK;
  const int max_threads = omp_get_max_threads();

  // --- 1. Pack ----------------------------------------------------------------------
  std::vector<float> qs(B * Hq * Nq * Dp), dos(B * Hq * Nq * Dvp), delta(B * Hq * Nq);
  const int64_t n_q_items = B * Hq * nqb;
  const int nt_q = pick_threads(p.num_threads, max_threads, n_q_items);
  std::vector<float> o_tiles(static_cast<size_t>(nt_q) * kBlockQ * Dvp);
#pragma omp parallel num_threads(nt_q)
  {
    float* const o_tile = o_tiles.data() + omp_get_thread_num() * kBlockQ * Dvp;
#pragma omp for schedule(static)
    for (int64_t w = 0; w < n_q_items; ++w) {
      const int64_t qb = w % nqb, h = (w / nqb) % Hq, b = w / (nqb * Hq);
      const int64_t i0 = qb * kBlockQ, mq = std::min(kBlockQ, Nq - i0);
      const int64_t row0 = (b * Hq + h) * Nq + i0;
      load_rows_f32(p.q, p.dtype, b * p.q_batch_stride + i0 * p.q_row_stride + h * p.q_head_stride, p.q_row_stride,
                    mq, D, scale, qs.data() + row0 * Dp, Dp);
      load_rows_f32(p.dout, p.dtype, b * p.dout_batch_stride + i0 * p.dout_row_stride + h * p.dout_head_stride,
                    p.dout_row_stride, mq, Dv, 1.0f, dos.data() + row0 * Dvp, Dvp);
      load_rows_f32(p.o, p.dtype, b * p.o_batch_stride + i0 * p.o_row_stride + h * p.o_head_stride, p.o_row_stride,
                    mq, Dv, 1.0f, o_tile, Dvp);
      for (int64_t r = 0; r < mq; ++r)
        delta[row0 + r] = dot(dos.data() + (row0 + r) * Dvp, o_tile + r * Dvp, Dvp);
    }
  }
  const int64_t n_kv_items = B * Hkv * nkb, kt_size = D * kBlockK, vt_size = Dv * kBlockK;
  std::vector<float> kp(B * Hkv * Nk * Dp), kt(n_kv_items * kt_size), vt(n_kv_items * vt_size);
#pragma omp parallel for schedule(static) num_threads(pick_threads(p.num_threads, max_threads, n_kv_items))
  for (int64_t w = 0; w < n_kv_items; ++w) {
    const int64_t kb = w % nkb, hk = (w / nkb) % Hkv, b = w / (nkb * Hkv);
    const int64_t j0 = kb * kBlockK, nk = std::min(kBlockK, Nk - j0);
    const int64_t k_off = b * p.k_batch_stride + j0 * p.k_row_stride + hk * p.k_head_stride;
    load_rows_f32(p.k, p.dtype, k_off, p.k_row_stride, nk, D, 1.0f, kp.data() + ((b * Hkv + hk) * Nk + j0) * Dp, Dp);
    load_rows_transposed_f32(p.k, p.dtype, k_off, p.k_row_stride, nk, D, kt.data() + w * kt_size, kBlockK);
    load_rows_transposed_f32(p.v, p.dtype, b * p.v_batch_stride + j0 * p.v_row_stride + hk * p.v_head_stride,
                             p.v_row_stride, nk, Dv, vt.data() + w * vt_size, kBlockK);
  }

  // --- 2. One work item per (batch, kv head, kv block) --------------------------------
  const int nt = pick_threads(p.num_threads, max_threads, n_kv_items);
  const int64_t dq_size = B * Hq * Nq * Dp;
  std::vector<float> dq_acc(static_cast<size_t>(nt) * dq_size, 0.0f);
  // Per-thread tiles: S, P (softcap only), dP, dS [kBlockQ x kBlockK], dK [kBlockK x Dp], dV [kBlockK x Dvp].
  const int64_t tile = kBlockQ * kBlockK, per_thread = 4 * tile + kBlockK * (Dp + Dvp);
  std::vector<float> scratch(static_cast<size_t>(nt) * per_thread);
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num();
    float* const dq_t = dq_acc.data() + t * dq_size;
    float* const s = scratch.data() + t * per_thread;
    float* const pb = s + tile;
    float* const dp = pb + tile;
    float* const ds = dp + tile;
    float* const dk_acc = ds + tile;
    float* const dv_acc = dk_acc + kBlockK * Dp;

    auto item = [&](int64_t w) {
      const int64_t kb = w % nkb, hk = (w / nkb) % Hkv, b = w / (nkb * Hkv);
      const int64_t j0 = kb * kBlockK, nk_blk = std::min(kBlockK, Nk - j0);
      const float* kt_blk = kt.data() + w * kt_size;
      const float* vt_blk = vt.data() + w * vt_size;
      const float* k_blk = kp.data() + ((b * Hkv + hk) * Nk + j0) * Dp;
      std::fill(dk_acc, dk_acc + nk_blk * Dp, 0.0f);
      std::fill(dv_acc, dv_acc + nk_blk * Dvp, 0.0f);
      // P lives in s unless soft-capping needs the capped scores S for its derivative.
      float* const pm = cap > 0.0f ? pb : s;

      for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t i0 = qb * kBlockQ, mq = std::min(kBlockQ, Nq - i0);
          if (mask.key_end(i0 + mq - 1) <= j0 || mask.key_begin(i0) >= j0 + nk_blk) continue;  // fully masked
          // Keys past the last row's key_end are masked for every row of the q-block: skipped.
          const int64_t nk = std::min(nk_blk, mask.key_end(i0 + mq - 1) - j0), nkp = pad_cols(nk);
          const bool full = mask.key_begin(i0 + mq - 1) <= j0 && mask.key_end(i0) >= j0 + nk;
          const int64_t row0 = (b * Hq + h) * Nq + i0;
          const float* q_blk = qs.data() + row0 * Dp;
          const float* do_blk = dos.data() + row0 * Dvp;

          // S [mq x nkp] = Qs [mq x D] * K^T [D x nkp]
          gemm(mq, nkp, D, q_blk, Dp, false, kt_blk, kBlockK, s, kBlockK, false);
          for (int64_t r = 0; r < mq; ++r) {
            float* srow = s + r * kBlockK;
            if (cap > 0.0f) softcap_row(srow, nkp, cap);
            if (!full) {
              const int64_t lo = mask.key_begin(i0 + r) - j0, hi = mask.key_end(i0 + r) - j0;
              for (int64_t c = 0; c < nk; ++c)
                if (c < lo || c >= hi) srow[c] = -INFINITY;
            }
            for (int64_t c = nk; c < nkp; ++c) srow[c] = -INFINITY;
            // P = exp(S - LSE); a fully masked row (LSE = -inf) has P = 0.
            float* prow = pm + r * kBlockK;
            const float lse = p.lse[row0 + r];
            if (lse == -INFINITY) {
              std::fill(prow, prow + nkp, 0.0f);
            } else {
              if (prow != srow) std::memcpy(prow, srow, nkp * sizeof(float));
              exp_sub_sum(prow, nkp, lse);
            }
          }
          // dV [nk x Dvp] += P^T [nk x mq] * dO [mq x Dvp]
          gemm(nk, Dvp, mq, pm, kBlockK, true, do_blk, Dvp, dv_acc, Dvp, true);
          // dP [mq x nkp] = dO [mq x Dv] * V^T [Dv x nkp]
          gemm(mq, nkp, Dv, do_blk, Dvp, false, vt_blk, kBlockK, dp, kBlockK, false);
          for (int64_t r = 0; r < mq; ++r)
            ds_row(pm + r * kBlockK, dp + r * kBlockK, s + r * kBlockK, ds + r * kBlockK, nkp,
                   delta[row0 + r], cap);
          // dK [nk x Dp] += dS^T [nk x mq] * Qs [mq x Dp]
          gemm(nk, Dp, mq, ds, kBlockK, true, q_blk, Dp, dk_acc, Dp, true);
          // dQ [mq x Dp] += dS [mq x nk] * K [nk x Dp]   (times scale at the end)
          gemm(mq, Dp, nk, ds, kBlockK, false, k_blk, Dp, dq_t + row0 * Dp, Dp, true);
        }

      for (int64_t r = 0; r < nk_blk; ++r) {
        const int64_t j = j0 + r;
        store_row(dk_acc + r * Dp, D, 1.0f, p.dk, p.dtype,
                  b * p.dk_batch_stride + j * p.dk_row_stride + hk * p.dk_head_stride);
        store_row(dv_acc + r * Dvp, Dv, 1.0f, p.dv, p.dtype,
                  b * p.dv_batch_stride + j * p.dv_row_stride + hk * p.dv_head_stride);
      }
    };

    // Deterministic: a fixed item -> thread map, so each dQ partial sum has a fixed order.
    if (p.deterministic) {
#pragma omp for schedule(static, 1)
      for (int64_t w = 0; w < n_kv_items; ++w) item(w);
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t w = 0; w < n_kv_items; ++w) item(w);
    }
  }

  // --- 3. dQ = scale * sum over threads --------------------------------------------------
  const int64_t n_rows = B * Hq * Nq;
#pragma omp parallel for schedule(static) num_threads(pick_threads(p.num_threads, max_threads, n_rows / 64 + 1))
  for (int64_t row = 0; row < n_rows; ++row) {
    float* acc = dq_acc.data() + row * Dp;
    for (int t = 1; t < nt; ++t) {
      const float* part = dq_acc.data() + t * dq_size + row * Dp;
      for (int64_t c = 0; c < D; ++c) acc[c] += part[c];
    }
    const int64_t i = row % Nq, h = (row / Nq) % Hq, b = row / (Nq * Hq);
    store_row(acc, D, scale, p.dq, p.dtype, b * p.dq_batch_stride + i * p.dq_row_stride + h * p.dq_head_stride);
  }
  return Status::Ok();
}

}  // namespace

Status flash_backward(const BwdParams& p) {
  try {
    return backward_impl(p);
  } catch (const std::bad_alloc&) {
    return Status::Invalid("cpu_flash backward: out of host memory for its fp32 scratch (Q, dO, K packed to fp32 "
                           "and one fp32 dQ accumulator per thread; try fewer num_threads)");
  }
}

}  // namespace cpu
}  // namespace flashattn
