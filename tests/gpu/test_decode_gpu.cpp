// The CUDA split-KV decode kernel (src/cuda/decode/) vs the float64 oracle,
// with FlashAttention's tolerance rule: err(kernel) <= 2 err(lowprec) + floor,
// where lowprec is the naive low-precision forward on each sequence's dense
// equivalent (its own query rows and its first seqused_k keys). LSE checked too.
// Also append_kv on CUDA vs the CPU append_kv.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include "flashattn/kvcache.h"
#include "gpu_test_util.h"

namespace flashattn {
namespace {

using testing::DeviceBuffer;
using testing::HostTensor;
using testing::is_sm90;

struct DecodeCase {
  int64_t heads_q = 8, heads_kv = 2, seqlen_q = 1, head_dim = 128, capacity = 700;
  std::vector<int32_t> used = {700, 0, 1, 300, 65, 64};  // keys per sequence (batch = used.size())
  std::vector<int32_t> len_q;  // varlen q (cu_seqlens) when set, else every sequence has seqlen_q rows
  int64_t page_size = 0;       // 0 = contiguous cache
  bool causal = false;
  int64_t window_left = -1;
  float softcap = 0.0f;
  int num_splits = 0;
  DType dtype = DType::kBFloat16;
  Kernel kernel = Kernel::kAuto;  // kHopper: the varlen prefill path of the Hopper kernel
  bool give_totals = true;        // set total_q / total_k (the Hopper kernel needs them)
  std::string name() const {
    std::ostringstream os;
    os << "hq" << heads_q << "_hkv" << heads_kv << "_sq" << seqlen_q << "_d" << head_dim << "_cap" << capacity
       << "_page" << page_size << (causal ? "_causal" : "") << "_wl" << window_left << "_cap" << softcap << "_splits"
       << num_splits << (len_q.empty() ? "" : "_varlen") << "_" << dtype_name(dtype) << "_" << kernel_name(kernel)
       << (give_totals ? "" : "_nototals");
    return os.str();
  }
};

// Runs one case on the GPU and checks it against the oracle.
void run_case(const DecodeCase& c, uint64_t seed) {
  SCOPED_TRACE(c.name());
  const int64_t B = static_cast<int64_t>(c.used.size()), hq = c.heads_q, hkv = c.heads_kv, D = c.head_dim;
  const int64_t sq = c.seqlen_q, cap = c.capacity;
  const bool varlen = !c.len_q.empty();
  std::mt19937_64 rng(seed);

  // Logical dense tensors: q [B, sq, hq, D], cache [B, cap, hkv, D].
  HostTensor q(c.dtype, B * sq * hq * D), k(c.dtype, B * cap * hkv * D), v(c.dtype, B * cap * hkv * D);
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  std::vector<int32_t> lq(B, static_cast<int32_t>(sq));
  if (varlen) lq = c.len_q;

  FwdParams p;
  p.batch = B;
  p.seqlen_q = sq;
  p.seqlen_k = cap;
  p.heads_q = hq;
  p.heads_kv = hkv;
  p.head_dim = D;
  p.dtype = c.dtype;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.softcap = c.softcap;
  p.num_splits = c.num_splits;
  p.seqused_k = c.used.data();

  // Query / output layout: dense, or packed by cu_seqlens_q (then keys are packed too, unless paged).
  HostTensor q_lay = q;
  std::vector<int32_t> cu_q(B + 1, 0), cu_k(B + 1, 0);
  int64_t q_rows = B * sq;
  if (varlen) {
    for (int64_t b = 0; b < B; ++b) {
      cu_q[b + 1] = cu_q[b] + lq[b];
      cu_k[b + 1] = cu_k[b] + c.used[b];
    }
    q_rows = cu_q[B];
    q_lay = HostTensor(c.dtype, std::max<int64_t>(q_rows, 1) * hq * D);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t e = 0; e < lq[b] * hq * D; ++e) q_lay.set(cu_q[b] * hq * D + e, q.get(b * sq * hq * D + e));
    p.cu_seqlens_q = cu_q.data();
    p.cu_seqlens_k = cu_k.data();
    if (c.give_totals) {
      p.total_q = q_rows;
      p.total_k = c.page_size > 0 ? 0 : cu_k[B];
    }
  }
  p.kernel = c.kernel;
  p.q_row_stride = p.o_row_stride = hq * D;
  p.q_head_stride = p.o_head_stride = D;
  p.q_batch_stride = p.o_batch_stride = varlen ? 0 : sq * hq * D;

  // Key layout: dense [B, cap], paged pool (shuffled pages, a few spare pages
  // filled with huge values that must never be read), or packed (varlen).
  HostTensor k_lay = k, v_lay = v;
  std::vector<int32_t> table;
  p.k_row_stride = p.v_row_stride = hkv * D;
  p.k_head_stride = p.v_head_stride = D;
  p.k_batch_stride = p.v_batch_stride = cap * hkv * D;
  if (c.page_size > 0) {
    const int64_t ps = c.page_size, per_seq = (cap + ps - 1) / ps, pages = B * per_seq + 2;
    std::vector<int32_t> perm(pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    table.assign(perm.begin(), perm.begin() + B * per_seq);
    k_lay = HostTensor(c.dtype, pages * ps * hkv * D);
    v_lay = HostTensor(c.dtype, pages * ps * hkv * D);
    k_lay.fill(3000.0f);
    v_lay.fill(3000.0f);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < cap; ++j)
        for (int64_t e = 0; e < hkv * D; ++e) {
          const int64_t dst = (table[b * per_seq + j / ps] * ps + j % ps) * hkv * D + e;
          k_lay.set(dst, k.get((b * cap + j) * hkv * D + e));
          v_lay.set(dst, v.get((b * cap + j) * hkv * D + e));
        }
    p.block_table = table.data();
    p.block_table_batch_stride = per_seq;
    p.page_size = ps;
    p.num_pages = pages;
    p.k_batch_stride = p.v_batch_stride = ps * hkv * D;
  } else if (varlen) {
    k_lay = HostTensor(c.dtype, std::max<int64_t>(cu_k[B], 1) * hkv * D);
    v_lay = HostTensor(c.dtype, std::max<int64_t>(cu_k[B], 1) * hkv * D);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t e = 0; e < c.used[b] * hkv * D; ++e) {
        k_lay.set(cu_k[b] * hkv * D + e, k.get(b * cap * hkv * D + e));
        v_lay.set(cu_k[b] * hkv * D + e, v.get(b * cap * hkv * D + e));
      }
    p.seqused_k = nullptr;  // lengths from cu_seqlens_k
  }

  // Oracle on the host, with the very same layout.
  FwdParams host = p;
  host.q = q_lay.data();
  host.k = k_lay.data();
  host.v = v_lay.data();
  host.device = Device::kCPU;
  const cpu::RefForward ref = cpu::reference_forward_f64(host);

  // Tolerance baseline: lowprec on each sequence's dense equivalent.
  double err_low = 0.0, err_low_lse = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    if (lq[b] == 0 || c.used[b] == 0) continue;
    FwdParams d = host;
    d.cu_seqlens_q = d.cu_seqlens_k = d.seqused_k = d.block_table = nullptr;
    d.page_size = d.num_pages = 0;
    d.batch = 1;
    d.seqlen_q = lq[b];
    d.seqlen_k = c.used[b];
    d.q = q.bytes.data() + b * sq * hq * D * dtype_size(c.dtype);
    d.k = k.bytes.data() + b * cap * hkv * D * dtype_size(c.dtype);
    d.v = v.bytes.data() + b * cap * hkv * D * dtype_size(c.dtype);
    const testing::LowPrecForward low = testing::lowprec_forward(d);
    const int64_t row0 = varlen ? cu_q[b] : b * sq;
    for (int64_t e = 0; e < lq[b] * hq * D; ++e)
      err_low = std::max(err_low, std::fabs(low.out[e] - ref.out[row0 * hq * D + e]));
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t i = 0; i < lq[b]; ++i) {
        const double r = ref.lse[(b * hq + h) * sq + i], l = low.lse[h * lq[b] + i];
        if (!std::isinf(r)) err_low_lse = std::max(err_low_lse, std::fabs(r - l));
      }
  }

  // GPU run.
  DeviceBuffer dq = testing::to_device(q_lay), dk = testing::to_device(k_lay), dv = testing::to_device(v_lay);
  HostTensor o(c.dtype, std::max<int64_t>(q_rows, 1) * hq * D);
  DeviceBuffer d_o(o.bytes.size()), d_lse(B * hq * sq * sizeof(float));
  ASSERT_EQ(d_o.poison(), cudaSuccess);
  ASSERT_EQ(d_lse.poison(), cudaSuccess);
  DeviceBuffer d_used(B * 4), d_table(std::max<size_t>(table.size(), 1) * 4), d_cuq((B + 1) * 4), d_cuk((B + 1) * 4);
  d_used.upload(c.used.data(), B * 4);
  if (!table.empty()) d_table.upload(table.data(), table.size() * 4);
  d_cuq.upload(cu_q.data(), (B + 1) * 4);
  d_cuk.upload(cu_k.data(), (B + 1) * 4);
  p.device = Device::kCUDA;
  p.q = dq.get();
  p.k = dk.get();
  p.v = dv.get();
  p.o = d_o.get();
  p.lse = d_lse.as<float>();
  if (p.seqused_k) p.seqused_k = d_used.as<int32_t>();
  if (p.block_table) p.block_table = d_table.as<int32_t>();
  if (varlen) {
    p.cu_seqlens_q = d_cuq.as<int32_t>();
    p.cu_seqlens_k = d_cuk.as<int32_t>();
  }
  const Status st = forward(p);
  ASSERT_TRUE(st.ok()) << status_code_name(st.code) << ": " << st.message;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(testing::to_host(d_o, o), cudaSuccess);
  std::vector<float> lse(B * hq * sq);
  ASSERT_EQ(d_lse.download(lse.data(), lse.size() * 4), cudaSuccess);

  const double floor = testing::tolerance_floor(c.dtype);
  const double err = testing::max_abs_diff(ref.out, o);
  EXPECT_LE(err, 2 * err_low + floor) << "O: kernel err " << err << ", lowprec err " << err_low;
  // Rows with no keys: O exactly 0 and LSE -inf (max_abs_diff_lse checks the infinities match).
  const double err_lse = testing::max_abs_diff_lse(ref.lse, lse);
  EXPECT_LE(err_lse, 2 * err_low_lse + floor) << "LSE: kernel err " << err_lse << ", lowprec err " << err_low_lse;
}

// Varlen prefill (many query rows per sequence) through the Hopper kernel
// (kHopper) and kAuto (decode refuses -> Hopper on sm_90, else FA2): ragged
// lengths incl. 0 and 1, rows across tile boundaries, causal / window, GQA,
// seqused_k shorter than the packed span, fp16, head dims 64/128/256.
std::vector<DecodeCase> varlen_prefill_cases() {
  std::vector<DecodeCase> cs;
  for (Kernel kern : {Kernel::kHopper, Kernel::kAuto}) {
    DecodeCase c;
    c.kernel = kern;
    c.heads_q = 8; c.heads_kv = 2; c.seqlen_q = 300; c.capacity = 400;
    c.len_q = {300, 0, 1, 129, 128, 77};
    c.used = {400, 5, 1, 129, 0, 250};
    cs.push_back(c);
    c.causal = true;
    cs.push_back(c);
    c.causal = false; c.window_left = 40; c.dtype = DType::kFloat16; c.head_dim = 64;
    cs.push_back(c);
  }
  DecodeCase c;
  c.kernel = Kernel::kHopper; c.heads_q = 4; c.heads_kv = 1; c.seqlen_q = 260; c.capacity = 260; c.head_dim = 256;
  c.causal = true; c.len_q = {260, 3, 131}; c.used = {260, 200, 131};
  cs.push_back(c);
  c = DecodeCase();
  c.kernel = Kernel::kHopper; c.heads_q = 8; c.heads_kv = 8; c.seqlen_q = 200; c.capacity = 300; c.head_dim = 96;
  c.softcap = 20.0f; c.len_q = {200, 64, 65}; c.used = {300, 63, 1};
  cs.push_back(c);
  c.give_totals = false; c.kernel = Kernel::kAuto;  // Hopper refuses without totals: FA2 runs it
  cs.push_back(c);
  for (Kernel kern : {Kernel::kHopper, Kernel::kAuto}) {  // dense q, cache lengths (seqused_k), chunked prefill
    c = DecodeCase();
    c.kernel = kern; c.heads_q = 16; c.heads_kv = 4; c.seqlen_q = 150; c.capacity = 300; c.causal = true;
    c.used = {300, 0, 1, 150, 299};
    cs.push_back(c);
  }
  return cs;
}

class VarlenPrefillGpu : public ::testing::TestWithParam<int> {};
TEST_P(VarlenPrefillGpu, MatchesReference) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const DecodeCase c = varlen_prefill_cases()[GetParam()];
  if (c.kernel == Kernel::kHopper && !is_sm90()) GTEST_SKIP() << "not an sm_90 GPU";
  run_case(c, 2000 + GetParam());
}
INSTANTIATE_TEST_SUITE_P(Cases, VarlenPrefillGpu,
                         ::testing::Range(0, static_cast<int>(varlen_prefill_cases().size())));

// The Hopper kernel refuses a varlen request without total_q / total_k, and a
// paged one, with a message; kAuto still answers both.
TEST(VarlenPrefillGpu, HopperRefusals) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  if (!is_sm90()) GTEST_SKIP() << "not an sm_90 GPU";
  FwdParams p;
  p.device = Device::kCUDA;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = 128;
  p.heads_q = p.heads_kv = 1;
  p.head_dim = 64;
  p.dtype = DType::kBFloat16;
  set_contiguous_strides(p);
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = 0;
  DeviceBuffer buf(3 * 128 * 64 * 2 + 128 * 64 * 2), cu(2 * 4);
  const int32_t cu_host[2] = {0, 128};
  ASSERT_EQ(cu.upload(cu_host, sizeof cu_host), cudaSuccess);
  char* base = static_cast<char*>(buf.get());
  p.q = base;
  p.k = base + 128 * 64 * 2;
  p.v = base + 2 * 128 * 64 * 2;
  p.o = base + 3 * 128 * 64 * 2;
  p.cu_seqlens_q = p.cu_seqlens_k = cu.as<int32_t>();
  p.kernel = Kernel::kHopper;
  Status st = forward(p);
  EXPECT_EQ(st.code, StatusCode::kUnsupported);
  EXPECT_NE(st.message.find("total_q"), std::string::npos) << st.message;
  p.kernel = Kernel::kAuto;
  st = forward(p);
  EXPECT_TRUE(st.ok()) << st.message;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// For compute-sanitizer (gpu_check.sh runs Sanitize*): packed varlen through
// the Hopper kernel with more tiles than SMs, so the dynamic tile counter, the
// skipped tiles past short sequences and the TMA reads at the end of the packed
// tensors all run.
TEST(SanitizeVarlenPrefill, HopperManyTiles) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  if (!is_sm90()) GTEST_SKIP() << "not an sm_90 GPU";
  DecodeCase c;
  c.kernel = Kernel::kHopper; c.heads_q = 64; c.heads_kv = 8; c.head_dim = 64; c.seqlen_q = 300; c.capacity = 300;
  c.causal = true; c.len_q = {300, 5, 129}; c.used = {300, 1, 129};
  run_case(c, 79);
}

class DecodeGpu : public ::testing::TestWithParam<int> {};

std::vector<DecodeCase> decode_cases() {
  std::vector<DecodeCase> cs;
  DecodeCase c;
  c.heads_q = 8; c.heads_kv = 8;  // GQA ratio 1, contiguous, heuristic splits
  cs.push_back(c);
  c = DecodeCase(); c.heads_q = 8; c.heads_kv = 2; c.page_size = 16; c.num_splits = 1;  // ratio 4, paged 16
  cs.push_back(c);
  c = DecodeCase(); c.heads_q = 16; c.heads_kv = 2; c.page_size = 256; c.num_splits = 3;  // ratio 8, page 256
  cs.push_back(c);
  c = DecodeCase(); c.heads_q = 16; c.heads_kv = 2; c.seqlen_q = 2; c.causal = true; c.page_size = 3;
  c.num_splits = 7;  // two query rows per head, odd page size, 7 splits
  cs.push_back(c);
  c = DecodeCase(); c.seqlen_q = 3; c.causal = true; c.num_splits = 7; c.dtype = DType::kFloat16;
  cs.push_back(c);
  c = DecodeCase(); c.heads_q = 4; c.heads_kv = 4; c.seqlen_q = 4; c.causal = true; c.window_left = 50;
  c.page_size = 16; c.num_splits = 3; c.head_dim = 64;
  cs.push_back(c);
  c = DecodeCase(); c.heads_q = 8; c.heads_kv = 1; c.seqlen_q = 4; c.causal = true; c.page_size = 1;
  c.capacity = 200; c.used = {200, 1, 0, 129};  // 32 rows per kv head: two row tiles; page size 1
  cs.push_back(c);
  c = DecodeCase(); c.softcap = 30.0f; c.num_splits = 3; c.dtype = DType::kFloat16; c.head_dim = 64;
  cs.push_back(c);
  for (int s : {1, 3, 7}) {  // the same problem under forced splits
    c = DecodeCase(); c.heads_q = 32; c.heads_kv = 8; c.capacity = 2000; c.used = {2000, 1999, 1}; c.num_splits = s;
    c.page_size = 16;
    cs.push_back(c);
  }
  c = DecodeCase(); c.heads_q = 32; c.heads_kv = 8; c.capacity = 5000; c.used = {5000, 4097};  // heuristic: many splits
  cs.push_back(c);
  c = DecodeCase(); c.seqlen_q = 2; c.causal = true; c.len_q = {2, 1, 0, 2, 1, 1}; c.num_splits = 3;  // varlen packed
  cs.push_back(c);
  c = DecodeCase(); c.seqlen_q = 2; c.causal = true; c.len_q = {1, 2, 2, 0, 1, 2}; c.page_size = 16;  // varlen + paged
  cs.push_back(c);
  // Forced split counts, small to the maximum (256): most splits of the short
  // sequences are empty (LSE -inf, weight 0 in the fused combine).
  for (int s : {2, 64, 256})
    for (int64_t page : {0, 16}) {
      c = DecodeCase(); c.heads_q = 32; c.heads_kv = 8; c.capacity = 2000; c.used = {2000, 1999, 1, 0, 640};
      c.num_splits = s; c.page_size = page;
      cs.push_back(c);
    }
  // Page sizes 1, 16, 256 and ones that are no power of two (48 does not divide
  // the 64-key block, 100 neither), with cache lengths 0, 1 and around page
  // boundaries; heuristic and forced splits.
  for (int64_t ps : {1, 16, 256, 48, 100})
    for (int s : {0, 5}) {
      c = DecodeCase(); c.heads_q = 16; c.heads_kv = 2; c.capacity = 600; c.page_size = ps; c.num_splits = s;
      c.used = {0, 1, static_cast<int32_t>(std::max<int64_t>(ps - 1, 1)), static_cast<int32_t>(ps),
                static_cast<int32_t>(ps + 1), static_cast<int32_t>(std::min<int64_t>(2 * ps, 600)), 600};
      cs.push_back(c);
    }
  // GQA packing: 32 query heads on one kv head (two row tiles), and 16 heads x
  // 3 query rows (three row tiles), both split.
  c = DecodeCase(); c.heads_q = 32; c.heads_kv = 1; c.page_size = 16; c.num_splits = 9;
  cs.push_back(c);
  c = DecodeCase(); c.heads_q = 16; c.heads_kv = 1; c.seqlen_q = 3; c.causal = true; c.num_splits = 4;
  cs.push_back(c);
  // More (sequence, kv head) groups than the first counter buffer holds (4096):
  // the per-stream counters grow.
  c = DecodeCase(); c.heads_q = 8; c.heads_kv = 8; c.head_dim = 64; c.capacity = 130; c.num_splits = 2;
  c.used.assign(520, 130);
  for (size_t b = 0; b < c.used.size(); b += 7) c.used[b] = static_cast<int32_t>(b % 131);
  cs.push_back(c);
  return cs;
}

TEST_P(DecodeGpu, MatchesReference) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  run_case(decode_cases()[GetParam()], 1000 + GetParam());
}
INSTANTIATE_TEST_SUITE_P(Cases, DecodeGpu, ::testing::Range(0, static_cast<int>(decode_cases().size())));

// Small cases for compute-sanitizer (memcheck, racecheck, synccheck; named
// Sanitize* so scripts/gpu_check.sh's filter picks them up): odd page size,
// ragged, causal, splits; then many splits through the fused combine.
TEST(SanitizeDecode, SmallPaged) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  DecodeCase c;
  c.heads_q = 8; c.heads_kv = 2; c.seqlen_q = 2; c.causal = true; c.capacity = 70; c.used = {70, 0, 1, 33};
  c.page_size = 3; c.num_splits = 3; c.head_dim = 64;
  run_case(c, 77);
}
TEST(SanitizeDecode, ManySplitsPaged) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  DecodeCase c;
  c.heads_q = 8; c.heads_kv = 2; c.capacity = 300; c.used = {300, 0, 1, 129}; c.page_size = 48; c.num_splits = 16;
  run_case(c, 78);
}

// The fused combine's arrival counters must be back at 0 after every launch:
// the same call twice in a row, with different split counts in between, and on
// two streams at once must give bit-identical O and LSE (outputs are poisoned
// before each call, so a group whose last CTA was missed keeps NaNs).
TEST(DecodeGpuCounters, RepeatAndTwoStreams) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  const int64_t B = 3, hq = 32, hkv = 8, D = 128, cap = 3000;
  std::vector<int32_t> used = {3000, 1, 2047};
  std::mt19937_64 rng(4242);
  HostTensor q(DType::kBFloat16, B * hq * D), k(DType::kBFloat16, B * cap * hkv * D),
      v(DType::kBFloat16, B * cap * hkv * D);
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  DeviceBuffer dq = testing::to_device(q), dk = testing::to_device(k), dv = testing::to_device(v), dused(B * 4);
  ASSERT_EQ(dused.upload(used.data(), B * 4), cudaSuccess);
  FwdParams p;
  p.device = Device::kCUDA;
  p.batch = B;
  p.seqlen_q = 1;
  p.seqlen_k = cap;
  p.heads_q = hq;
  p.heads_kv = hkv;
  p.head_dim = D;
  p.dtype = DType::kBFloat16;
  set_contiguous_strides(p);
  p.q = dq.get();
  p.k = dk.get();
  p.v = dv.get();
  p.seqused_k = dused.as<int32_t>();
  const size_t o_bytes = B * hq * D * 2, lse_bytes = B * hq * 4;
  // Outputs to NaN; synchronized, as cudaMemset runs on the legacy stream, which
  // the non-blocking streams below do not wait for.
  auto poison = [&](DeviceBuffer& o, DeviceBuffer& lse) {
    EXPECT_EQ(o.poison(), cudaSuccess);
    EXPECT_EQ(lse.poison(), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  };
  // One call on `stream` (no synchronization).
  auto launch = [&](int splits, cudaStream_t stream, DeviceBuffer& o, DeviceBuffer& lse) {
    FwdParams c = p;
    c.num_splits = splits;
    c.stream = stream;
    c.o = o.get();
    c.lse = lse.as<float>();
    const Status st = forward(c);
    EXPECT_TRUE(st.ok()) << st.message;
  };
  auto fetch = [&](const DeviceBuffer& o, const DeviceBuffer& lse) {
    std::vector<unsigned char> out(o_bytes + lse_bytes);
    EXPECT_EQ(o.download(out.data(), o_bytes), cudaSuccess);
    EXPECT_EQ(lse.download(out.data() + o_bytes, lse_bytes), cudaSuccess);
    return out;
  };
  DeviceBuffer o1(o_bytes), l1(lse_bytes), o2(o_bytes), l2(lse_bytes);
  for (int splits : {0, 7, 64, 3, 7, 0}) {
    SCOPED_TRACE("splits " + std::to_string(splits));
    poison(o1, l1);
    launch(splits, nullptr, o1, l1);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<unsigned char> first = fetch(o1, l1);
    poison(o1, l1);
    poison(o2, l2);
    launch(splits, nullptr, o1, l1);
    launch(splits, nullptr, o2, l2);  // back to back, no sync in between
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(fetch(o1, l1) == first) << "second call differs from the first";
    EXPECT_TRUE(fetch(o2, l2) == first) << "third call differs from the first";
    // Sanity: the first result is not poison (0xff bytes are NaN in bf16 and fp32).
    for (size_t e = 0; e < o_bytes; e += 2) ASSERT_FALSE(first[e] == 0xff && first[e + 1] == 0xff) << "O left NaN";
  }
  // Two streams at once, each with its own counters.
  cudaStream_t s1 = nullptr, s2 = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
  poison(o1, l1);
  launch(64, nullptr, o1, l1);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<unsigned char> ref = fetch(o1, l1);
  for (int rep = 0; rep < 3; ++rep) {
    poison(o1, l1);
    poison(o2, l2);
    launch(64, s1, o1, l1);
    launch(64, s2, o2, l2);
    ASSERT_EQ(cudaStreamSynchronize(s1), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s2), cudaSuccess);
    EXPECT_TRUE(fetch(o1, l1) == ref) << "stream 1, rep " << rep;
    EXPECT_TRUE(fetch(o2, l2) == ref) << "stream 2, rep " << rep;
  }
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
}

// What the decode path refuses, with a reason.
TEST(DecodeGpuErrors, Unsupported) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  DeviceBuffer buf(1 << 20), used(64);
  ASSERT_EQ(cudaMemset(buf.get(), 0, 1 << 20), cudaSuccess);
  ASSERT_EQ(cudaMemset(used.get(), 0, 64), cudaSuccess);
  FwdParams p;
  p.device = Device::kCUDA;
  p.batch = 1;
  p.seqlen_q = 1;
  p.seqlen_k = 16;
  p.heads_q = 4;
  p.heads_kv = 4;
  p.head_dim = 64;
  p.dtype = DType::kFloat32;
  set_contiguous_strides(p);
  p.q = p.k = p.v = buf.get();
  p.o = buf.as<char>() + (1 << 19);
  p.seqused_k = used.as<int32_t>();
  Status st = forward(p);
  EXPECT_EQ(st.code, StatusCode::kUnsupported) << st.message;
  p.dtype = DType::kBFloat16;
  EXPECT_TRUE(forward(p).ok()) << forward(p).message;  // every sequence empty: O = 0
  // FA2 reads seqused_k itself (varlen prefill path): pinned, and via auto once
  // the decode kernel refuses 80 query rows per kv head.
  p.kernel = Kernel::kFA2;
  st = forward(p);
  EXPECT_TRUE(st.ok()) << st.message;
  p.kernel = Kernel::kNaive;
  st = forward(p);
  EXPECT_EQ(st.code, StatusCode::kUnsupported);
  EXPECT_NE(st.message.find("seqused_k"), std::string::npos) << st.message;
  p.kernel = Kernel::kAuto;
  p.seqlen_q = 80;  // 80 query rows per kv head
  set_contiguous_strides(p);
  st = forward(p);
  EXPECT_TRUE(st.ok()) << st.message;
}

// append_kv on CUDA == append_kv on the CPU (contiguous and paged, rotary both ways).
TEST(DecodeGpuAppendKv, MatchesCpu) {
  FLASHATTN_SKIP_WITHOUT_GPU();
  for (int64_t ps : {0, 16, 3})
    for (int rot : {0, 1, 2}) {
      SCOPED_TRACE("page " + std::to_string(ps) + " rotary " + std::to_string(rot));
      const int64_t B = 3, T = 5, hkv = 2, hq = 8, D = 128, cap = 40, rd = rot ? 64 : 0, max_pos = 64;
      const DType dt = DType::kBFloat16;
      std::mt19937_64 rng(11 + ps + rot);
      std::vector<int32_t> lens = {0, 17, 35};
      const int64_t per_seq = ps ? (cap + ps - 1) / ps : 0, pages = ps ? B * per_seq + 1 : 0;
      std::vector<int32_t> table(std::max<int64_t>(B * per_seq, 1));
      std::iota(table.begin(), table.end(), 1);
      const int64_t cache_elems = (ps ? pages * ps : B * cap) * hkv * D;
      HostTensor kc(dt, cache_elems), vc(dt, cache_elems), kn(dt, B * T * hkv * D), vn(dt, B * T * hkv * D),
          q(dt, B * T * hq * D);
      kc.fill_normal(rng);
      vc.fill_normal(rng);
      kn.fill_normal(rng);
      vn.fill_normal(rng);
      q.fill_normal(rng);
      std::vector<float> cs(max_pos * 32), sn(max_pos * 32);
      for (size_t i = 0; i < cs.size(); ++i) {
        cs[i] = std::cos(0.37f * i);
        sn[i] = std::sin(0.37f * i);
      }
      KvAppendParams a;
      a.k_new_row_stride = a.v_new_row_stride = hkv * D;
      a.k_new_head_stride = a.v_new_head_stride = D;
      a.k_new_batch_stride = a.v_new_batch_stride = T * hkv * D;
      a.k_cache_row_stride = a.v_cache_row_stride = hkv * D;
      a.k_cache_head_stride = a.v_cache_head_stride = D;
      a.k_cache_batch_stride = a.v_cache_batch_stride = (ps ? ps : cap) * hkv * D;
      a.batch = B;
      a.seqlen_new = T;
      a.capacity = cap;
      a.heads_kv = hkv;
      a.head_dim = D;
      a.dtype = dt;
      if (ps) {
        a.block_table_batch_stride = per_seq;
        a.page_size = ps;
        a.num_pages = pages;
      }
      if (rd) {
        a.rotary_dim = rd;
        a.rotary_max_pos = max_pos;
        a.rotary_interleaved = rot == 2;
        a.q_row_stride = hq * D;
        a.q_head_stride = D;
        a.q_batch_stride = T * hq * D;
        a.heads_q = hq;
      }
      // GPU.
      DeviceBuffer dkc = testing::to_device(kc), dvc = testing::to_device(vc), dkn = testing::to_device(kn),
                   dvn = testing::to_device(vn), dq = testing::to_device(q), dlens(B * 4), dtable(table.size() * 4),
                   dcos(cs.size() * 4), dsin(sn.size() * 4);
      dlens.upload(lens.data(), B * 4);
      dtable.upload(table.data(), table.size() * 4);
      dcos.upload(cs.data(), cs.size() * 4);
      dsin.upload(sn.data(), sn.size() * 4);
      KvAppendParams g = a;
      g.device = Device::kCUDA;
      g.k_new = dkn.get();
      g.v_new = dvn.get();
      g.k_cache = dkc.get();
      g.v_cache = dvc.get();
      g.cache_seqlens = dlens.as<int32_t>();
      if (ps) g.block_table = dtable.as<int32_t>();
      if (rd) {
        g.rotary_cos = dcos.as<float>();
        g.rotary_sin = dsin.as<float>();
        g.q = dq.get();
      }
      Status st = append_kv(g);
      ASSERT_TRUE(st.ok()) << st.message;
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      // CPU.
      a.k_new = kn.data();
      a.v_new = vn.data();
      a.k_cache = kc.data();
      a.v_cache = vc.data();
      a.cache_seqlens = lens.data();
      if (ps) a.block_table = table.data();
      if (rd) {
        a.rotary_cos = cs.data();
        a.rotary_sin = sn.data();
        a.q = q.data();
      }
      st = append_kv(a);
      ASSERT_TRUE(st.ok()) << st.message;
      HostTensor gk(dt, cache_elems), gv(dt, cache_elems), gq(dt, B * T * hq * D);
      ASSERT_EQ(testing::to_host(dkc, gk), cudaSuccess);
      ASSERT_EQ(testing::to_host(dvc, gv), cudaSuccess);
      ASSERT_EQ(testing::to_host(dq, gq), cudaSuccess);
      // One bf16 ulp of slack for fused multiply-adds on the GPU.
      auto close = [](float x, float y) { return std::fabs(x - y) <= 1e-2f * std::fabs(y) + 1e-3f; };
      for (int64_t e = 0; e < cache_elems; ++e) {
        ASSERT_TRUE(close(gk.get(e), kc.get(e))) << "k element " << e << ": " << gk.get(e) << " vs " << kc.get(e);
        ASSERT_EQ(gv.get(e), vc.get(e)) << "v element " << e;
      }
      for (int64_t e = 0; e < B * T * hq * D; ++e)
        ASSERT_TRUE(close(gq.get(e), q.get(e))) << "q element " << e;
    }
}

}  // namespace
}  // namespace flashattn
