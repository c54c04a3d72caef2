// Kernel::kCpuFlash forward: tiled FlashAttention with an online softmax (docs/cpu-backend.md).
//
// 1. Pack K and V once per call into fp32 blocks of kBlockK keys:
//      Kt[b, hkv, kb] : [head_dim x kBlockK]  (K^T, so S = Q K^T is a row-major GEMM)
//      Vp[b, hkv, kb] : [kBlockK x pad(head_dim_v)]
//    Columns past seqlen_k / head_dim are zero.
// 2. One OpenMP work item per (batch, head, q-block of kBlockQ rows), largest
//    causal blocks first. Per item, with Qs = scale * Q (fp32):
//      for each KV block the mask leaves partly visible:
//        S = Qs Kt                       (GEMM, fp32; log2(e) folded into Qs)
//        softcap, mask (boundary blocks only)
//        m' = max(m, rowmax S); O *= exp2(m - m') and l *= exp2(m - m') only where m' != m
//        P = exp2(S - m'), l += rowsum P (online_softmax.h, equations (3)-(4), in base 2)
//        O += P Vp                       (GEMM, fp32)
//      O /= l, LSE = ln2 * (m + log2 l) (fully masked rows: O = 0, LSE = -inf).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#include "common/mask.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_gemm.h"
#include "cpu/cpu_gemm_pack.h"

namespace flashattn {
namespace cpu {
namespace {

// Tile sizes (measured on a 2-core AMD EPYC, AVX2, docs/cpu-backend.md): the
// S tile [kBlockQ x kBlockK] and a K^T block stay in L2; kBlockQ a multiple of
// the 6-row GEMM micro-tile. 96 x 128 was ~5% faster than 64 x 128, 48 x 256
// and 144 x 128 (single thread, N = 2048, D = 64/128); 96 x 96 tied.
constexpr int64_t kBlockQ = 96;
constexpr int64_t kBlockK = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

Status forward_impl(const FwdParams& p) {
  const Mask mask = make_mask(p);
  const float scale = effective_scale(p);
  // Scores in base 2: S = log2(e) * scale * Q K^T, so exp becomes exp2. With a
  // softcap the cap applies to scale * Q K^T first, then S is multiplied by log2(e).
  const float q_scale = p.softcap > 0.0f ? scale : scale * kLog2e;
  const int64_t D = p.head_dim, Dv = effective_head_dim_v(p), Dvp = pad_cols(Dv);
  const int64_t Nq = p.seqlen_q, Nk = p.seqlen_k, Hq = p.heads_q, Hkv = p.heads_kv, group = Hq / Hkv;
  const int64_t nqb = (Nq + kBlockQ - 1) / kBlockQ, nkb = (Nk + kBlockK - 1) / kBlockK;
  // Leading dims one 16-float panel wider than the data: a power-of-two row pitch
  // would map every row of a B panel to the same few L1 sets.
  const int64_t ld_kt = kBlockK + kColPad, ld_vp = Dvp + kColPad;
  const int64_t kt_size = D * ld_kt, vp_size = kBlockK * ld_vp;
  const int max_threads = omp_get_max_threads();

  // --- 1. Pack K^T and V blocks (fp32) ---------------------------------------------
  const int64_t n_kv_blocks = p.batch * Hkv * nkb;
  std::vector<float> kt(n_kv_blocks * kt_size), vp(n_kv_blocks * vp_size);
#pragma omp parallel for schedule(static) num_threads(pick_threads(p.num_threads, max_threads, n_kv_blocks))
  for (int64_t w = 0; w < n_kv_blocks; ++w) {
    const int64_t kb = w % nkb, hk = (w / nkb) % Hkv, b = w / (nkb * Hkv);
    const int64_t j0 = kb * kBlockK, nk = std::min(kBlockK, Nk - j0);
    load_rows_transposed_f32(p.k, p.dtype, b * p.k_batch_stride + j0 * p.k_row_stride + hk * p.k_head_stride,
                             p.k_row_stride, nk, D, kt.data() + w * kt_size, ld_kt);
    load_rows_f32(p.v, p.dtype, b * p.v_batch_stride + j0 * p.v_row_stride + hk * p.v_head_stride, p.v_row_stride,
                  nk, Dv, 1.0f, vp.data() + w * vp_size, ld_vp);
  }

  // --- 2. One work item per (batch, head, q-block) ----------------------------------
  const int64_t n_items = p.batch * Hq * nqb;
  const int nt = pick_threads(p.num_threads, max_threads, n_items);
  // Per-thread scratch, allocated once per call (and outside the parallel region,
  // so running out of memory is a Status, not std::terminate):
  //   Qs [kBlockQ x D], S/P [kBlockQ x kBlockK], O [kBlockQ x Dvp], row max and sum [kBlockQ].
  const int64_t per_thread = kBlockQ * (D + kBlockK + Dvp + 2);
  std::vector<float> scratch(static_cast<size_t>(nt) * per_thread);
#pragma omp parallel num_threads(nt)
  {
    float* const qs = scratch.data() + omp_get_thread_num() * per_thread;
    float* const s = qs + kBlockQ * D;
    float* const o = s + kBlockQ * kBlockK;
    float* const row_max = o + kBlockQ * Dvp;  // online-softmax statistics (base 2)
    float* const row_sum = row_max + kBlockQ;

#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_items; ++w) {
      // Last q-blocks first: under a causal mask they see the most keys.
      const int64_t qb = nqb - 1 - w % nqb, h = (w / nqb) % Hq, b = w / (nqb * Hq), hk = h / group;
      const int64_t i0 = qb * kBlockQ, mq = std::min(kBlockQ, Nq - i0);
      load_rows_f32(p.q, p.dtype, b * p.q_batch_stride + i0 * p.q_row_stride + h * p.q_head_stride, p.q_row_stride,
                    mq, D, q_scale, qs, D);
      std::fill(o, o + mq * Dvp, 0.0f);
      std::fill(row_max, row_max + kBlockQ, -INFINITY);
      std::fill(row_sum, row_sum + kBlockQ, 0.0f);

      // Keys any row of the block sees: key_begin / key_end grow with the row.
      const int64_t j_begin = mask.key_begin(i0), j_end = mask.key_end(i0 + mq - 1);
      const int64_t kb_begin = j_begin / kBlockK;
      const int64_t kb_end = j_end > j_begin ? (j_end + kBlockK - 1) / kBlockK : kb_begin;
      for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
        // Columns past the last row's key_end are masked for every row: not computed
        // (on the causal diagonal this trims up to half of the block).
        const int64_t j0 = kb * kBlockK, nk = std::min({kBlockK, Nk - j0, j_end - j0}), nkp = pad_cols(nk);
        const int64_t blk = (b * Hkv + hk) * nkb + kb;
        // S [mq x nkp] = Qs [mq x D] * Kt [D x nkp]
        gemm(mq, nkp, D, qs, D, false, kt.data() + blk * kt_size, ld_kt, s, kBlockK, false);
        if (p.softcap > 0.0f)
          for (int64_t r = 0; r < mq; ++r) {
            softcap_row(s + r * kBlockK, nkp, p.softcap);
            scale_row(s + r * kBlockK, nkp, kLog2e);
          }
        // Mask only blocks the mask cuts (and the zero padding past seqlen_k).
        const bool full = mask.key_begin(i0 + mq - 1) <= j0 && mask.key_end(i0) >= j0 + nk;
        for (int64_t r = 0; r < mq; ++r) {
          float* srow = s + r * kBlockK;
          if (!full) {
            const int64_t lo = mask.key_begin(i0 + r) - j0, hi = mask.key_end(i0 + r) - j0;
            for (int64_t c = 0; c < nk; ++c)
              if (c < lo || c >= hi) srow[c] = -INFINITY;
          }
          for (int64_t c = nk; c < nkp; ++c) srow[c] = -INFINITY;
        }
        // Online softmax (base 2), P overwrites S; rescales O rows whose max moved.
        softmax_block_log2(s, kBlockK, mq, nkp, row_max, row_sum, o, Dvp, Dvp);
        // O [mq x Dvp] += P [mq x nk] * Vp [nk x Dvp]
        gemm(mq, Dvp, nk, s, kBlockK, false, vp.data() + blk * vp_size, ld_vp, o, Dvp, true);
      }

      // Normalize and store; fully masked rows (sum 0) get O = 0 and LSE = -inf.
      // LSE in natural log: ln 2 * (m + log2 l).
      for (int64_t r = 0; r < mq; ++r) {
        const float sum = row_sum[r];
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        store_row(o + r * Dvp, Dv, inv, p.o, p.dtype,
                  b * p.o_batch_stride + (i0 + r) * p.o_row_stride + h * p.o_head_stride);
        if (p.lse) p.lse[(b * Hq + h) * Nq + i0 + r] = sum > 0.0f ? kLn2 * (row_max[r] + std::log2(sum)) : -INFINITY;
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Status flash_forward(const FwdParams& p) {
  try {
    return forward_impl(p);
  } catch (const std::bad_alloc&) {
    return Status::Invalid("cpu_flash forward: out of host memory for its fp32 scratch (K and V are packed "
                           "to fp32 once per call: about 2 x batch x heads_kv x seqlen_k x head_dim floats)");
  }
}

}  // namespace cpu
}  // namespace flashattn
