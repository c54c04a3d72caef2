// CPU emulation of the FA2 backward kernels (bwd_preprocess, bwd_main, bwd_convert_dq):
// compiles src/cuda/fa2/fa2_bwd_kernel.cuh (the real source) for the host with the sm80
// warp instructions emulated by scripts/fa2_emu/cuda/fa2/mma_sm80.cuh (first on the
// include path), one std::thread per CUDA thread, CTAs one after another in launch order
// (x fastest, as the deterministic mode's semaphore waits assume). The kernel params come
// from the library's own fa2bwd::make_params; the launch geometry mirrors fa2bwd::launch.
// Every case is checked against the float64 oracle with the tolerance rule
// (tests/common/varlen_bwd_case.h for the varlen ones). Slow (minutes): tiny cases only.
// Build (BUILD = a configured flashattn build dir with flashattn and flashattn_test_util built):
//   g++ -std=c++20 -O1 -w -Iscripts/fa2_emu -Isrc -Iinclude -Itests/common -Itests/gpu \
//       -I/usr/local/cuda/include scripts/fa2_emu/fa2_bwd_emu_main.cpp \
//       $BUILD/tests/libflashattn_test_util.a $BUILD/src/libflashattn.a -L/usr/local/cuda/lib64 -lcudart \
//       -lgtest -fopenmp $(pkg-config --libs libhwy 2>/dev/null) -lpthread -o /tmp/fa2_bwd_emu
//   /tmp/fa2_bwd_emu            (EMU_ONLY=<substring>: only the cases whose name contains it)
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "cuda/fa2/mma_sm80.cuh"  // the emulation (scripts/fa2_emu/cuda/fa2), before the kernels
#include "cuda/fa2/fa2_bwd_kernel.cuh"
#include "bwd_test_util.h"
#include "varlen_bwd_case.h"

thread_local Dim3 threadIdx, blockIdx;
Dim3 gridDim, blockDim;
namespace flashattn { namespace cuda { namespace fa2bwd { alignas(16) unsigned char smem_raw[256 * 1024]; } } }
unsigned char* g_emu_smem = flashattn::cuda::fa2bwd::smem_raw;
std::barrier<>* g_cta_barrier;
WarpSlots g_warps[8];

using namespace flashattn;
using namespace flashattn::cuda;
using namespace flashattn::testing;
using fa2bwd::KernelParams;

// Runs kernel(p) on grid x block threads, one CTA at a time.
void emu_launch(Dim3 grid, unsigned threads, const std::function<void(KernelParams)>& kernel, const KernelParams& p) {
  gridDim = grid;
  blockDim = {threads, 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(g_emu_smem, 0x7f, sizeof(fa2bwd::smem_raw));  // large finite garbage: catches unzeroed reads
        std::barrier<> cta(threads);
        g_cta_barrier = &cta;
        std::vector<std::unique_ptr<std::barrier<>>> wb;
        for (unsigned w = 0; w < threads / 32; ++w) {
          wb.emplace_back(new std::barrier<>(32));
          g_warps[w].bar = wb.back().get();
        }
        std::vector<std::thread> th;
        for (unsigned i = 0; i < threads; ++i)
          th.emplace_back([&, i] {
            threadIdx = {i, 0, 0};
            blockIdx = {x, y, z};
            kernel(p);
          });
        for (auto& t : th) t.join();
      }
}

// fa2bwd::launch, with emu_launch for <<<>>> and host vectors for the workspace.
template <typename T, int kD>
void emu_backward(const BwdParams& bp) {
  using namespace fa2bwd;
  constexpr int kWarps = bwd_warps(kD), kSplit = bwd_split(kD), kStages = bwd_stages(kD);
  constexpr int kBlockN = bwd_block_n(kD);
  KernelParams p = make_params(bp, kD);
  p.num_n_blocks = (p.seqlen_k + kBlockN - 1) / kBlockN;
  std::vector<float> delta(p.batch * p.heads_q * p.seqlen_q_pad, NAN);
  std::vector<float> accum(delta.size() * kD, 0.0f);
  std::vector<int> sem(bp.deterministic ? kSplit * p.batch * p.heads_q * p.num_m_blocks : 0, 0);
  p.delta = delta.data(), p.dq_accum = accum.data(), p.dq_sem = sem.data();

  const bool varlen_q = p.cu_seqlens_q != nullptr;  // as launch_preprocess / launch_convert_dq
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q_pad;
  emu_launch({unsigned((rows + 7) / 8), 1, 1}, 256,
             varlen_q ? bwd_preprocess<T, true> : bwd_preprocess<T, false>, p);
  const Dim3 grid{unsigned(p.num_n_blocks * kSplit), unsigned(p.heads_kv), unsigned(p.batch)};
  emu_launch(grid, 32 * kWarps,
             kernel_is_varlen(p) ? bwd_main<T, kD, kWarps, kSplit, kStages, true>
                                 : bwd_main<T, kD, kWarps, kSplit, kStages, false>,
             p);
  const int64_t chunks = p.batch * p.seqlen_q * p.heads_q * (p.head_dim / 8);
  emu_launch({unsigned((chunks + 255) / 256), 1, 1}, 256,
             varlen_q ? bwd_convert_dq<T, true> : bwd_convert_dq<T, false>, p);
}

void emu_backward(const BwdParams& p) {
  const bool bf = p.dtype == DType::kBFloat16;
  if (p.head_dim <= 64) return bf ? emu_backward<__nv_bfloat16, 64>(p) : emu_backward<__half, 64>(p);
  if (p.head_dim <= 128) return bf ? emu_backward<__nv_bfloat16, 128>(p) : emu_backward<__half, 128>(p);
  return bf ? emu_backward<__nv_bfloat16, 256>(p) : emu_backward<__half, 256>(p);
}

bool selected(const std::string& name) {
  const char* only = std::getenv("EMU_ONLY");
  return only == nullptr || name.find(only) != std::string::npos;
}

// Dense: proves the emulation itself (same rule as tests/gpu/bwd_test_util.h).
bool run_dense(const Shape& s, uint64_t seed) {
  if (!selected("dense_" + s.name())) return true;
  Problem pb(s, seed);
  FwdParams f = pb.params;
  f.kernel = Kernel::kReference;
  if (!forward(f).ok()) return false;
  emu_backward(pb.params);
  const auto ref = cpu::reference_backward_f64(pb.params);
  const auto low = lowprec_backward(pb.params);
  const double floor = bwd_floor(s);
  const double e[3] = {max_abs_diff(ref.dq, pb.dq), max_abs_diff(ref.dk, pb.dk), max_abs_diff(ref.dv, pb.dv)};
  const double t[3] = {2 * max_abs_diff(ref.dq, low.dq) + floor, 2 * max_abs_diff(ref.dk, low.dk) + floor,
                       2 * max_abs_diff(ref.dv, low.dv) + floor};
  const bool ok = e[0] <= t[0] && e[1] <= t[1] && e[2] <= t[2];
  std::printf("%s dense_%s dq %.2e/%.2e dk %.2e/%.2e dv %.2e/%.2e\n", ok ? "OK  " : "FAIL", s.name().c_str(), e[0],
              t[0], e[1], t[1], e[2], t[2]);
  std::fflush(stdout);
  return ok;
}

// Varlen, optionally deterministic (then run twice: the results must be bit-identical).
bool run_varlen(const VarlenCase& c, uint64_t seed, bool deterministic = false) {
  const std::string tag = deterministic ? "det_" : "";
  if (!selected(tag + c.name())) return true;
  VarlenProblem pb(c, seed);
  if (!pb.host_forward().ok()) return false;
  pb.params.deterministic = deterministic;
  emu_backward(pb.params);
  Shape s;
  s.seqlen_q = pb.max_q, s.seqlen_k = pb.max_k, s.dtype = c.dtype;
  VarlenCheck r = check_varlen_backward(pb, bwd_floor(s));
  if (deterministic) {
    const auto first = pb.dq.bytes;
    pb.dq.fill(NAN);
    emu_backward(pb.params);
    if (first != pb.dq.bytes) r.ok = false, r.report += " (dq differs between two deterministic runs)";
  }
  std::printf("%s%s\n", tag.c_str(), r.report.c_str());
  std::fflush(stdout);
  return r.ok;
}

int main() {
  int fails = 0;
  uint64_t seed = 1;
  // Dense (the kVarlen = false kernels): one causal, one GQA + window.
  {
    Shape s;
    s.seqlen_q = 70, s.seqlen_k = 130, s.heads_q = 2, s.heads_kv = 1, s.head_dim = 64, s.causal = true;
    s.dtype = DType::kFloat16;
    fails += !run_dense(s, seed++);
  }
  {
    Shape s;
    s.batch = 2, s.seqlen_q = 65, s.seqlen_k = 40, s.heads_q = 4, s.heads_kv = 2, s.head_dim = 128;
    s.window_left = 9, s.window_right = 3, s.dtype = DType::kBFloat16;
    fails += !run_dense(s, seed++);
  }
  // Varlen: ragged lengths with 0 and 1, Nq != Nk per sequence, > 1 Q block (70 rows)
  // and > 1 key block (140 keys, Bc = 128 at d <= 128).
  auto base = [](DType dt, int64_t d) {
    VarlenCase c;
    c.q_lens = {5, 0, 70, 1, 3};
    c.k_lens = {9, 4, 140, 1, 0};
    c.heads_q = 2, c.heads_kv = 1, c.head_dim = d, c.dtype = dt;
    return c;
  };
  {
    VarlenCase c = base(DType::kFloat16, 64);
    fails += !run_varlen(c, seed++);
    c.causal = true;
    fails += !run_varlen(c, seed++);
  }
  {
    VarlenCase c = base(DType::kBFloat16, 128);
    c.causal = true;
    c.heads_q = 4, c.heads_kv = 2;  // GQA
    fails += !run_varlen(c, seed++);
  }
  {
    VarlenCase c = base(DType::kBFloat16, 64);
    c.window_left = 20, c.window_right = 5;  // sliding window, per-sequence bottom-right
    fails += !run_varlen(c, seed++);
  }
  {
    VarlenCase c = base(DType::kFloat16, 64);
    c.used_k = {7, 0, 100, 1, 0};  // seqused_k: keys past it get dK = dV = 0
    c.causal = true;
    fails += !run_varlen(c, seed++);
  }
  {
    VarlenCase c = base(DType::kFloat16, 40);  // head dim 40 on the d64 kernel
    c.softcap = 5.0f;
    c.heads_q = 3, c.heads_kv = 1;
    fails += !run_varlen(c, seed++);
  }
  {
    VarlenCase c = base(DType::kBFloat16, 64);
    c.causal = true;
    fails += !run_varlen(c, seed++, /*deterministic=*/true);
  }
  {  // dense batch with seqused_k alone (no cu_seqlens)
    VarlenCase c;
    c.packed = false;
    c.q_lens = {70, 70}, c.k_lens = {140, 140}, c.used_k = {1, 131};
    c.heads_q = 2, c.heads_kv = 1, c.head_dim = 64, c.dtype = DType::kFloat16, c.causal = true;
    fails += !run_varlen(c, seed++);
  }
  // d > 128: 4 warps, Bc = 64, single-buffered, two CTAs per key block (kSplit = 2).
  {
    VarlenCase c = base(DType::kFloat16, 256);
    c.heads_q = 4, c.heads_kv = 2;
    c.used_k = {9, 2, 120, 0, 0};
    fails += !run_varlen(c, seed++);
  }
  {
    VarlenCase c = base(DType::kBFloat16, 192);  // on the d256 kernel
    c.causal = true;
    fails += !run_varlen(c, seed++, /*deterministic=*/true);
  }
  std::printf("%d failures\n", fails);
  return fails != 0;
}
