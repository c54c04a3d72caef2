// CPU emulation of the FA2 forward kernel: compiles src/cuda/fa2/fa2_fwd_kernel.cuh (the
// real source) for the host, with the sm80 warp instructions emulated by
// scripts/fa2_emu/cuda/fa2/mma_sm80.cuh (found first on the include path), one std::thread
// per CUDA thread, and checks every case against the float64 oracle. Slow (minutes), for
// checking fragment layouts and mask logic without a GPU. Build (BUILD = a configured
// flashattn build dir with flashattn and flashattn_test_util built):
//   g++ -std=c++20 -O1 -w -Iscripts/fa2_emu -Isrc -Iinclude -Itests/common -I/usr/local/cuda/include \
//       scripts/fa2_emu/fa2_emu_main.cpp $BUILD/tests/libflashattn_test_util.a $BUILD/src/libflashattn.a \
//       -L/usr/local/cuda/lib64 -lcudart -fopenmp $(pkg-config --libs libhwy 2>/dev/null) -lpthread -o /tmp/fa2_emu
//   /tmp/fa2_emu            (EMU_EXTRA=1: only the batch / window / varlen cases)
#include <thread>
#include <vector>
#include <cstdio>
#include "cuda/fa2/fa2_fwd_kernel.cuh"
namespace flashattn { namespace cuda { namespace fa2 {
template <class Tr, bool L, bool C> auto fwd_kernel_for(bool v) { return v ? fwd_kernel<Tr, L, C, true> : fwd_kernel<Tr, L, C, false>; }
}}}
#include "common/mask.h"
#include "test_util.h"
thread_local Dim3 threadIdx, blockIdx;
Dim3 gridDim;
namespace flashattn { namespace cuda { namespace fa2 { alignas(16) unsigned char smem[256 * 1024]; } } }
using flashattn::cuda::fa2::smem;
unsigned char* g_emu_smem = smem;
std::barrier<>* g_cta_barrier;
WarpSlots g_warps[8];
using namespace flashattn;
using namespace flashattn::cuda;
using namespace flashattn::testing;

template <int D, typename E>
void launch(const Fa2FwdArgs& a) {
  constexpr Fa2FwdTile t = fa2_fwd_tile(D);
  using Tr = fa2::FwdTraits<D, t.block_m, t.block_n, t.warps, E, t.min_blocks>;
  const bool local = a.window_left >= 0 || a.window_right >= 0, cap = a.softcap_pre != 0;
  const bool vl = a.cu_seqlens_q || a.seqused_k;
  auto k = local ? (cap ? fa2::fwd_kernel_for<Tr, true, true>(vl) : fa2::fwd_kernel_for<Tr, true, false>(vl))
                 : (cap ? fa2::fwd_kernel_for<Tr, false, true>(vl) : fa2::fwd_kernel_for<Tr, false, false>(vl));
  gridDim = {unsigned((a.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM), unsigned(a.heads_q), unsigned(a.batch)};
  for (unsigned z = 0; z < gridDim.z; ++z)
    for (unsigned y = 0; y < gridDim.y; ++y)
      for (unsigned x = 0; x < gridDim.x; ++x) {
        std::memset(smem, 0x7f, sizeof(smem));  // garbage (large finite) to catch unzeroed reads
        std::barrier<> cta(Tr::kThreads);
        g_cta_barrier = &cta;
        std::vector<std::unique_ptr<std::barrier<>>> wb;
        for (int w = 0; w < Tr::kWarps; ++w) { wb.emplace_back(new std::barrier<>(32)); g_warps[w].bar = wb.back().get(); }
        std::vector<std::thread> th;
        for (int i = 0; i < Tr::kThreads; ++i)
          th.emplace_back([&, i] { threadIdx = {unsigned(i), 0, 0}; blockIdx = {x, y, z}; k(a); });
        for (auto& t2 : th) t2.join();
      }
}

void launch_params(const FwdParams& p) {
  Fa2FwdArgs a;
  a.cu_seqlens_q = p.cu_seqlens_q; a.cu_seqlens_k = p.cu_seqlens_k; a.seqused_k = p.seqused_k;
  a.q = p.q; a.k = p.k; a.v = p.v; a.o = p.o; a.lse = p.lse;
  a.q_batch_stride = p.q_batch_stride; a.q_row_stride = p.q_row_stride; a.q_head_stride = p.q_head_stride;
  a.k_batch_stride = p.k_batch_stride; a.k_row_stride = p.k_row_stride; a.k_head_stride = p.k_head_stride;
  a.v_batch_stride = p.v_batch_stride; a.v_row_stride = p.v_row_stride; a.v_head_stride = p.v_head_stride;
  a.o_batch_stride = p.o_batch_stride; a.o_row_stride = p.o_row_stride; a.o_head_stride = p.o_head_stride;
  a.batch = p.batch; a.seqlen_q = p.seqlen_q; a.seqlen_k = p.seqlen_k; a.heads_q = p.heads_q;
  a.group = p.heads_q / p.heads_kv; a.head_dim = p.head_dim;
  const float scale = effective_scale(p);
  if (p.softcap > 0) { a.softcap_pre = scale / p.softcap; a.scale_log2 = p.softcap * 1.4426950408889634f; }
  else a.scale_log2 = scale * 1.4426950408889634f;
  const Mask m = make_mask(p);
  a.window_left = m.window_left >= p.seqlen_k ? -1 : m.window_left;
  a.window_right = m.window_right >= p.seqlen_q ? -1 : m.window_right;
  const int kd = p.head_dim <= 64 ? 64 : p.head_dim <= 96 ? 96 : p.head_dim <= 128 ? 128 : p.head_dim <= 192 ? 192 : 256;
  const bool bf = p.dtype == DType::kBFloat16;
  switch (kd) {
    case 64: bf ? launch<64, __nv_bfloat16>(a) : launch<64, __half>(a); break;
    case 96: bf ? launch<96, __nv_bfloat16>(a) : launch<96, __half>(a); break;
    case 128: bf ? launch<128, __nv_bfloat16>(a) : launch<128, __half>(a); break;
    case 192: bf ? launch<192, __nv_bfloat16>(a) : launch<192, __half>(a); break;
    default: bf ? launch<256, __nv_bfloat16>(a) : launch<256, __half>(a); break;
  }
}

bool run(const Shape& s, uint64_t seed) {
  Problem prob(s, seed);
  const FwdParams& p = prob.params;
  launch_params(p);
  const auto ref = cpu::reference_forward_f64(p);
  const auto low = lowprec_forward(p);
  const double tol = 2 * max_abs_diff(ref.out, low.out) + tolerance_floor(p.dtype);
  const double err = max_abs_diff(ref.out, prob.o);
  const double lt = 2 * max_abs_diff_lse(ref.lse, low.lse) + 1e-3, le = max_abs_diff_lse(ref.lse, prob.lse);
  const bool ok = err <= tol && le <= lt;
  std::printf("%s %-60s err %.3g tol %.3g lse %.3g/%.3g\n", ok ? "OK  " : "FAIL", s.name().c_str(), err, tol, le, lt);
  return ok;
}

// Varlen: 3 sequences packed; optionally seqused_k caps the keys. Fixed tolerance (no varlen lowprec).
bool run_varlen(bool causal, bool used, int64_t d, DType dt, uint64_t seed) {
  std::vector<int32_t> cq = {0, 5, 135, 199}, ck = {0, 70, 90, 154}, su = {33, 20, 0};
  const int64_t hq = 4, hkv = 2, tq = cq.back(), tk = ck.back();
  HostTensor q(dt, tq * hq * d), k(dt, tk * hkv * d), v(dt, tk * hkv * d), o(dt, tq * hq * d);
  std::mt19937_64 rng(seed);
  q.fill_normal(rng); k.fill_normal(rng); v.fill_normal(rng); o.fill(NAN);
  std::vector<float> lse(3 * hq * 130, NAN);
  FwdParams p;
  p.q = q.data(); p.k = k.data(); p.v = v.data(); p.o = o.data(); p.lse = lse.data();
  p.batch = 3; p.seqlen_q = 130; p.seqlen_k = 70; p.heads_q = hq; p.heads_kv = hkv; p.head_dim = d; p.dtype = dt;
  p.causal = causal;
  set_contiguous_strides(p);
  p.cu_seqlens_q = cq.data(); p.cu_seqlens_k = ck.data(); if (used) p.seqused_k = su.data();
  launch_params(p);
  const auto ref = cpu::reference_forward_f64(p);
  const double tol = dt == DType::kBFloat16 ? 3e-2 : 4e-3;
  const double err = max_abs_diff(ref.out, o);
  double le = 0;
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t i = 0; i < cq[b + 1] - cq[b]; ++i) {
        const size_t idx = (b * hq + h) * 130 + i;
        const double r = ref.lse[idx], g = lse[idx];
        if (std::isinf(r) || std::isinf(g)) { if (r != g) le = INFINITY; } else le = std::max(le, std::fabs(r - g));
        if (std::isnan(g)) le = INFINITY;
      }
  const bool ok = err <= tol && le <= 1e-3;
  std::printf("%s varlen causal=%d seqused=%d d=%ld %s err %.3g lse %.3g\n", ok ? "OK  " : "FAIL", causal, used, (long)d,
              dtype_name(dt), err, le);
  return ok;
}

int main() {
  int fails = 0;
  auto S = [](int64_t b, int64_t nq, int64_t nk, int64_t hq, int64_t hkv, int64_t d, DType dt) {
    Shape s; s.batch = b; s.seqlen_q = nq; s.seqlen_k = nk; s.heads_q = hq; s.heads_kv = hkv; s.head_dim = d; s.dtype = dt; return s; };
  uint64_t seed = 1;
  const bool quick = std::getenv("EMU_EXTRA") != nullptr;
  for (auto [nq, nk] : quick ? std::vector<std::pair<int, int>>{} : std::vector<std::pair<int, int>>{{1, 1}, {7, 63}, {65, 63}, {127, 65}, {65, 130}, {200, 70}})
    for (int causal = 0; causal < 2; ++causal)
      for (int64_t d : {64, 40, 128})
        for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
          Shape s = S(1, nq, nk, 2, 1, d, dt); s.causal = causal;
          fails += !run(s, seed++);
        }
  if (!quick) for (int64_t d : {96, 192, 256}) { Shape s = S(1, 70, 130, 1, 1, d, DType::kBFloat16); s.causal = true; fails += !run(s, seed++); s.causal = false; fails += !run(s, seed++); }
  { Shape s = S(2, 129, 200, 4, 2, 64, DType::kFloat16); s.window_left = 50; s.window_right = 20; fails += !run(s, seed++); }
  { Shape s = S(1, 300, 100, 2, 2, 64, DType::kBFloat16); s.window_left = 10; s.window_right = 0; fails += !run(s, seed++); }
  { Shape s = S(1, 129, 200, 2, 2, 64, DType::kBFloat16); s.softcap = 5; s.causal = true; fails += !run(s, seed++); }
  { Shape s = S(1, 129, 200, 2, 2, 128, DType::kFloat16); s.softcap = 3; fails += !run(s, seed++); }
  { Shape s = S(3, 300, 65, 8, 1, 64, DType::kBFloat16); s.causal = true; fails += !run(s, seed++); }
  { Shape s = S(1, 100, 300, 2, 2, 128, DType::kFloat16); s.window_left = 70; fails += !run(s, seed++); }
  { Shape s = S(1, 100, 300, 2, 2, 64, DType::kFloat16); s.window_right = 3; fails += !run(s, seed++); }
  for (int causal = 0; causal < 2; ++causal)
    for (int used = 0; used < 2; ++used)
      for (int64_t d : {64, 128}) fails += !run_varlen(causal, used, d, (d == 64) ? DType::kBFloat16 : DType::kFloat16, seed++);
  std::printf("%d failures\n", fails);
  return fails != 0;
}
