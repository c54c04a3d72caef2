// Split-KV decode (flash-decoding) kernel, docs/07-inference.md.
//
// Grid (heads_kv * row_tiles, splits, batch). One CTA owns one kv head of one
// sequence and one slice ("split") of its keys. All query rows that read this
// kv head -- the GQA group times seqlen_q, packed as row r = g * seqlen_q + i --
// form one 16-row tile (more rows: several tiles), so every K/V byte is read
// from HBM once per tile. The keys stream through a kStages-deep cp.async
// pipeline of 16-byte loads (zero-filled past the end): the first blocks' K/V
// go out before Q, and each block's copy is issued before the math on the one
// before it. Paged caches (any page_size) look their block_table entries up a
// block ahead and walk (page, slot) without divisions. The 4 warps each take 16 of the 64
// keys of a stage: S = Q K^T and O += P V run on mma.sync m16n8k16 with fp32
// accumulators, the online softmax runs per warp in registers (base-2 units).
// At the end the 4 warps' (m, l, O) are merged through shared memory with
// equation (4) (flashattn::merge) and written either to O / LSE (one split) or,
// as fp32 partial O and LSE, to a workspace. With several splits the combine
// is fused: the last CTA of a (sequence, kv head, row tile) to finish -- found
// with a per-group atomic counter -- merges all the splits' partials, again
// with equation (4), writes O / LSE and resets the counter to 0 for the next
// launch. No second kernel, so no launch gap and no dependency bubble.
// The kv heads are the fastest grid dimension: the CTAs of all heads of one
// (sequence, split) start together and walk the same key rows at about the same
// time, so in a [.., seqlen, heads_kv, D] cache (or page) each 256-byte head
// slice is read close in time to its neighbours of the same row (DRAM locality).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/mask.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/fa2/mma_sm80.cuh"
#include "flashattn/online_softmax.h"

namespace flashattn {
namespace cuda {
namespace decode {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kBlockN = 64;    // keys per pipeline stage (16 per warp)
constexpr int kTileRows = 16;  // query rows per tile (the mma M)
constexpr int kMaxRowTiles = 4;
constexpr int kMaxSplits = 256;  // = the num_splits limit of validate; sizes the combine's weight table
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Pipeline depth per head dim; shared by the host launcher and the kernel.
template <int D> constexpr int stages() { return D <= 64 ? 4 : 3; }
template <int D> constexpr int smem_bytes() {
  return (kTileRows * D + 2 * stages<D>() * kBlockN * D) * 2;
}
// The epilogue reuses the K/V stage buffers: the 4 warps' O [warps][16][D] and
// (m, l) [warps][16] in fp32, then the combine's per-split weights [splits][16]
// and per-row stats.
template <int D> constexpr int epilogue_bytes() {
  return (kWarps * kTileRows * D + 2 * kWarps * kTileRows + kMaxSplits * kTileRows + 2 * kTileRows) * 4;
}

struct DecodeArgs {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;       // [batch, heads_q, seqlen_q] or null
  float* o_part;    // [splits, batch, heads_q, seqlen_q, D] fp32 (splits > 1)
  float* lse_part;  // [splits, batch, heads_q, seqlen_q] (splits > 1)
  // [batch, heads_kv, row_tiles] arrival counters of the fused combine (splits > 1).
  // 0 between launches: the last CTA of each group puts it back to 0.
  unsigned int* counters;
  int64_t q_bs, q_rs, q_hs, k_bs, k_rs, k_hs, v_bs, v_rs, v_hs, o_bs, o_rs, o_hs;
  const int32_t* cu_q;
  const int32_t* cu_k;
  const int32_t* seqused_k;
  const int32_t* block_table;
  int64_t bt_bs;
  int page_size, num_pages;
  int batch, heads_q, heads_kv, group, seqlen_q, seqlen_k, rows, row_tiles, splits;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e)
  float softcap;     // 0 = off
  int window_left, window_right;  // -1 = unbounded; causal is window_right = 0
};

// Lengths of sequence b, clamped to what its buffers hold (so a bad index
// array gives wrong numbers, never an out-of-bounds access).
struct SeqInfo {
  int len_q, len_k;
};
__device__ __forceinline__ SeqInfo seq_info(const DecodeArgs& a, int b) {
  SeqInfo s;
  s.len_q = a.cu_q ? a.cu_q[b + 1] - a.cu_q[b] : a.seqlen_q;
  s.len_q = min(max(s.len_q, 0), a.seqlen_q);
  int cap = a.seqlen_k;
  if (a.cu_k && !a.block_table) cap = max(a.cu_k[b + 1] - a.cu_k[b], 0);
  int len_k = a.cu_k ? a.cu_k[b + 1] - a.cu_k[b] : a.seqlen_k;
  if (a.seqused_k) len_k = a.seqused_k[b];
  s.len_k = min(max(len_k, 0), cap);
  return s;
}

// ---- PTX helpers: the FA2 rung's (cuda/fa2/mma_sm80.cuh), plus one copy -----
// 16-byte async copy global -> shared with an L2 256-byte prefetch hint (the
// decode kernel streams K/V once); src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(sm80::smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}

// Shared-memory tiles are [rows][D] of 16-bit elements in 16-byte chunks; chunk
// c of row r is stored at chunk c ^ (r % 8), so the 8 rows an ldmatrix reads
// hit 8 different bank groups (needs D >= 64).
template <int D> __device__ __forceinline__ int swz(int row, int chunk) { return row * D + ((chunk ^ (row & 7)) << 3); }

// ---- the fused combine -------------------------------------------------------
// Called by every CTA of a split launch after it wrote its partials. The CTA
// that brings the group's counter to `splits` is the last one: every other
// split's partials are then in global memory (each CTA fences before counting),
// so it merges them with equation (4), taking split s as the statistics
// (m, l) = (LSE_s, 1):  LSE = log sum_s exp(LSE_s),  O = sum_s exp(LSE_s - LSE) O_s.
// Empty splits (LSE_s = -inf) weigh 0. The splits are summed in a fixed order,
// so the result does not depend on which CTA finishes last.
template <typename T, int D>
__device__ __forceinline__ void combine_if_last(const DecodeArgs& a, float* smem, int b, int hkv, int tile,
                                                int len_q) {
  __shared__ bool is_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  __threadfence();  // release: this CTA's partials are visible device-wide before it counts
  __syncthreads();  // ... for all threads of the CTA
  if (tid == 0) {
    unsigned int* counter = a.counters + (static_cast<int64_t>(b) * a.heads_kv + hkv) * a.row_tiles + tile;
    is_last = atomicAdd(counter, 1u) == static_cast<unsigned>(a.splits - 1);
    // Every split has counted: nobody touches the counter again in this launch,
    // and the next launch on the stream starts after this one ends.
    if (is_last) atomicExch(counter, 0u);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // acquire: see the other CTAs' partials (read below with ld.cg, past L1)

  // Rows of this tile that exist: rg < rows. Rows past the sequence's query
  // length get LSE -inf and no O row.
  const int row0 = tile * kTileRows;
  const int n_rows = min(kTileRows, a.rows - row0);
  const int64_t split_stride = static_cast<int64_t>(a.batch) * a.heads_q * a.seqlen_q;
  auto lse_index = [&](int r) {
    const int rg = row0 + r, g = rg / a.seqlen_q, i = rg % a.seqlen_q;
    return (static_cast<int64_t>(b) * a.heads_q + hkv * a.group + g) * a.seqlen_q + i;
  };
  float* w_tab = smem;                           // [kMaxSplits][16]: weight of split s in row r
  float* row_lse = w_tab + kMaxSplits * kTileRows;  // [16]

  // 1. Per row: the merged statistics (a warp per row, lanes over splits, all
  //    loads independent), then every split's weight exp(LSE_s - m) / l,
  //    computed once. The LSEs wait in the weight table between the two passes.
  for (int r = warp; r < n_rows; r += kWarps) {
    if ((row0 + r) % a.seqlen_q >= len_q) continue;  // no partials were written for it
    const int64_t li = lse_index(r);
    for (int s = lane; s < a.splits; s += 32) w_tab[s * kTileRows + r] = __ldcg(a.lse_part + s * split_stride + li);
    SoftmaxStats st;
    for (int s = lane; s < a.splits; s += 32) {
      const float l = w_tab[s * kTileRows + r];
      st = merge(st, SoftmaxStats{l, l == -INFINITY ? 0.0f : 1.0f});
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      SoftmaxStats other;
      other.max = __shfl_xor_sync(0xffffffffu, st.max, off);
      other.sum = __shfl_xor_sync(0xffffffffu, st.sum, off);
      st = merge(st, other);
    }
    for (int s = lane; s < a.splits; s += 32) {  // each lane rewrites only its own entries
      const float l = w_tab[s * kTileRows + r];
      w_tab[s * kTileRows + r] = st.sum > 0.0f ? rescale_factor(l, st.max) / st.sum : 0.0f;
    }
    if (lane == 0) row_lse[r] = log_sum_exp(st);
  }
  __syncthreads();

  // 2. O = sum_s w_s O_s: one thread per (row, 4 columns), the loads of 16
  //    splits in flight at once (the partials were just written: L2 hits). This
  //    runs at the very end of the launch on one SM per group, so it is made of
  //    independent loads: 128 threads x 16 x 16 B = 32 KB per L2 round trip.
  constexpr int kQuads = D / 4;
  for (int idx = tid; idx < n_rows * kQuads; idx += kThreads) {
    const int r = idx / kQuads, col = (idx % kQuads) * 4;
    const int rg = row0 + r, i = rg % a.seqlen_q;
    const int64_t li = lse_index(r);
    if (i >= len_q) {
      if (col == 0 && a.lse) a.lse[li] = -INFINITY;
      continue;
    }
    const float* src = a.o_part + li * D + col;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 16
    for (int s = 0; s < a.splits; ++s) {
      const float w = w_tab[s * kTileRows + r];  // 0 for an empty split (its O_s is 0, never garbage)
      const float4 x = __ldcg(reinterpret_cast<const float4*>(src + s * split_stride * D));
      acc.x += w * x.x;
      acc.y += w * x.y;
      acc.z += w * x.z;
      acc.w += w * x.w;
    }
    const int g = rg / a.seqlen_q;
    const int64_t h = static_cast<int64_t>(hkv) * a.group + g;
    const int64_t orow = a.cu_q ? static_cast<int64_t>(a.cu_q[b]) + i : i;
    const int64_t off = (a.cu_q ? 0 : static_cast<int64_t>(b) * a.o_bs) + orow * a.o_rs + h * a.o_hs + col;
    uint2 packed;
    packed.x = sm80::pack2<T>(acc.x, acc.y);
    packed.y = sm80::pack2<T>(acc.z, acc.w);
    *reinterpret_cast<uint2*>(static_cast<T*>(a.o) + off) = packed;
    if (col == 0 && a.lse) a.lse[li] = row_lse[r];
  }
}

// ---- the split kernel --------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(const DecodeArgs a) {
  static_assert(D % 16 == 0 && D >= 64, "head dim must be a multiple of 16, at least 64");
  static_assert(epilogue_bytes<D>() <= 2 * stages<D>() * kBlockN * D * 2, "epilogue must fit the stage buffers");
  constexpr int kStages = stages<D>();
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);            // [16][D]
  T* sK = sQ + kTileRows * D;                        // [kStages][kBlockN][D]
  T* sV = sK + kStages * kBlockN * D;                // [kStages][kBlockN][D]

  const int split = blockIdx.y;
  const int hkv = blockIdx.x / a.row_tiles;
  const int tile = blockIdx.x % a.row_tiles;
  const int b = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const SeqInfo seq = seq_info(a, b);
  const Mask mask{seq.len_q, seq.len_k, a.window_left, a.window_right};

  // Keys any row of this tile may see: [kb, ke). Rows are monotone in i, so a scan is cheap.
  int kb = seq.len_k, ke = 0;
  for (int r = tile * kTileRows; r < min(a.rows, (tile + 1) * kTileRows); ++r) {
    const int i = r % a.seqlen_q;
    if (i >= seq.len_q) continue;
    kb = min(kb, static_cast<int>(mask.key_begin(i)));
    ke = max(ke, static_cast<int>(mask.key_end(i)));
  }
  kb = max(kb, 0);
  ke = min(ke, seq.len_k);
  // This split's key blocks: an even share of the tile's blocks (maybe none).
  const int n_total = ke > kb ? (ke - kb + kBlockN - 1) / kBlockN : 0;
  const int blk_begin = static_cast<int>(static_cast<int64_t>(n_total) * split / a.splits);
  const int blk_end = static_cast<int>(static_cast<int64_t>(n_total) * (split + 1) / a.splits);
  const int n_blocks = blk_end - blk_begin;
  const int key_lo = kb + blk_begin * kBlockN;
  const int key_hi = min(ke, kb + blk_end * kBlockN);

  // Element offset of query row r of this tile (-1 when the row does not exist).
  auto q_row_offset = [&](int r, int64_t bs, int64_t rs, int64_t hs) -> int64_t {
    if (r >= a.rows) return -1;
    const int g = r / a.seqlen_q, i = r % a.seqlen_q;
    if (i >= seq.len_q) return -1;
    const int64_t h = static_cast<int64_t>(hkv) * a.group + g;
    const int64_t row = a.cu_q ? static_cast<int64_t>(a.cu_q[b]) + i : i;
    return (a.cu_q ? 0 : static_cast<int64_t>(b) * bs) + row * rs + h * hs;
  };

  // ---- K/V loader --------------------------------------------------------------
  // Thread tid copies 16-byte chunk c = tid % kChunks of rows r0, r0 + kRowStep, ...
  // of each 64-key block: 2 * kRowsPerThread cp.asyncs (K and V) per block.
  constexpr int kRowStep = kThreads / kChunks;        // 8 at D = 128, 16 at D = 64
  constexpr int kRowsPerThread = kBlockN / kRowStep;  // 8 at D = 128, 4 at D = 64
  const int c_ld = tid % kChunks, r0 = tid / kChunks;
  const T* kbase = static_cast<const T*>(a.k) + static_cast<int64_t>(hkv) * a.k_hs;
  const T* vbase = static_cast<const T*>(a.v) + static_cast<int64_t>(hkv) * a.v_hs;
  // Dense caches: key j of this sequence is at seq_k + j * row stride.
  const int64_t seq_k = a.cu_k ? static_cast<int64_t>(a.cu_k[b]) * a.k_rs : static_cast<int64_t>(b) * a.k_bs;
  const int64_t seq_v = a.cu_k ? static_cast<int64_t>(a.cu_k[b]) * a.v_rs : static_cast<int64_t>(b) * a.v_bs;

  // Paged caches: key j is in slot j % page_size of page block_table[b][j / page_size].
  // The table entries are a global load that the copy depends on, so they are
  // looked up one block ahead of the copy (their latency hides behind a block of
  // math), and (table index, slot) are walked incrementally -- a step of k rows
  // moves k / page_size entries and k % page_size slots, carried like digits --
  // so there is no division per row or per block, for any page size.
  const int32_t* bt = a.block_table ? a.block_table + static_cast<int64_t>(b) * a.bt_bs : nullptr;
  struct PagedRows {
    int page[kRowsPerThread];  // physical page of each of the thread's rows (-1: none)
    int slot[kRowsPerThread];
  };
  const int ps = max(a.page_size, 1);
  const int row_dp = kRowStep / ps, row_ds = kRowStep % ps;  // one step of kRowStep rows
  const int blk_dp = kBlockN / ps, blk_ds = kBlockN % ps;    // one step of a block
  int walk_key = key_lo + r0;  // the thread's first row in the next block to look up
  int walk_lp = bt ? walk_key / ps : 0, walk_sl = bt ? walk_key % ps : 0;
  auto lookup_pages = [&]() {
    PagedRows pr;
    int lp = walk_lp, sl = walk_sl;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      pr.page[i] = bt && walk_key + i * kRowStep < key_hi ? __ldg(bt + lp) : -1;
      pr.slot[i] = sl;
      lp += row_dp;
      sl += row_ds;
      if (sl >= ps) sl -= ps, ++lp;
    }
    walk_key += kBlockN;
    walk_lp += blk_dp;
    walk_sl += blk_ds;
    if (walk_sl >= ps) walk_sl -= ps, ++walk_lp;
    return pr;
  };

  // Issue the cp.asyncs of key block n of this split into stage n % kStages
  // (zero-filled past key_hi and for a page index outside the pool).
  auto load_block = [&](int n, const PagedRows& pr) {
    const int stage = n % kStages;
    T* dk = sK + stage * kBlockN * D;
    T* dv = sV + stage * kBlockN * D;
    const int key0 = key_lo + n * kBlockN + r0;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int r = r0 + i * kRowStep, j = key0 + i * kRowStep;
      bool ok = j < key_hi;
      int64_t ko, vo;
      if (bt) {
        ok = ok && pr.page[i] >= 0 && pr.page[i] < a.num_pages;
        ko = static_cast<int64_t>(pr.page[i]) * a.k_bs + static_cast<int64_t>(pr.slot[i]) * a.k_rs;
        vo = static_cast<int64_t>(pr.page[i]) * a.v_bs + static_cast<int64_t>(pr.slot[i]) * a.v_rs;
      } else {
        ko = seq_k + static_cast<int64_t>(j) * a.k_rs;
        vo = seq_v + static_cast<int64_t>(j) * a.v_rs;
      }
      cp_async16(dk + swz<D>(r, c_ld), ok ? kbase + ko + c_ld * 8 : kbase, ok ? 16 : 0);
      cp_async16(dv + swz<D>(r, c_ld), ok ? vbase + vo + c_ld * 8 : vbase, ok ? 16 : 0);
    }
  };

  // Q tile -> shared memory by cp.async too (zeros for missing rows).
  const T* q = static_cast<const T*>(a.q);
  auto load_q = [&]() {
    for (int idx = tid; idx < kTileRows * kChunks; idx += kThreads) {
      const int r = idx / kChunks, c = idx % kChunks;
      const int64_t off = q_row_offset(tile * kTileRows + r, a.q_bs, a.q_rs, a.q_hs);
      cp_async16(sQ + swz<D>(r, c), off >= 0 ? q + off + c * 8 : q, off >= 0 ? 16 : 0);
    }
  };

  // Prologue: the K/V of the first kStages - 1 blocks go out first (all their
  // page look-ups together), Q right behind block 0 in the same commit group:
  // Q is 4 KB, K/V are what the first math waits for.
  {
    PagedRows first[kStages - 1];
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) first[s] = lookup_pages();
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < n_blocks) load_block(s, first[s]);
      if (s == 0) load_q();
      sm80::cp_async_commit();
    }
  }
  PagedRows next = lookup_pages();  // block kStages - 1, copied in iteration 0
  sm80::cp_async_wait<kStages - 2>();     // group 0: Q and block 0
  __syncthreads();

  // Q fragments (A operand) for all D/16 k-steps, kept in registers.
  uint32_t qa[D / 16][4];
  {
    const int mi = lane >> 3;
    const int row = (mi & 1) * 8 + (lane & 7);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) sm80::ldmatrix_x4(qa[kk], sm80::smem_addr(sQ + swz<D>(row, kk * 2 + (mi >> 1))));
  }

  // Per-thread rows of the accumulator: lane/4 and lane/4 + 8. Their visible key range.
  int row_kb[2], row_ke[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = tile * kTileRows + (lane >> 2) + hr * 8;
    const int i = r % a.seqlen_q;
    const bool real = r < a.rows && i < seq.len_q;
    row_kb[hr] = real ? static_cast<int>(mask.key_begin(i)) : 0;
    row_ke[hr] = real ? static_cast<int>(mask.key_end(i)) : seq.len_k;
  }
  const bool has_mask = mask.has_mask();

  float o_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[n][e] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};  // base-2 units
  float l_run[2] = {0.0f, 0.0f};            // per-thread partial sums

  for (int n = 0; n < n_blocks; ++n) {
    sm80::cp_async_wait<kStages - 2>();
    __syncthreads();  // block n landed for everyone; stage (n-1) % kStages is free
    // Copy block n + kStages - 1 before the math on block n, so kStages - 1
    // blocks (64 KB at D = 128, twice that per SM) stay in flight while it runs;
    // then look up the pages of the block after it.
    if (n + kStages - 1 < n_blocks) load_block(n + kStages - 1, next);
    sm80::cp_async_commit();
    if (bt && n + kStages < n_blocks) next = lookup_pages();

    const int stage = n % kStages;
    const T* tk = sK + stage * kBlockN * D;
    const T* tv = sV + stage * kBlockN * D;
    const int mi = lane >> 3;

    // S = Q K^T for this warp's 16 keys: two n8 tiles.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t bk[4];
      sm80::ldmatrix_x4(bk, sm80::smem_addr(tk + swz<D>(warp * 16 + (mi >> 1) * 8 + (lane & 7), kk * 2 + (mi & 1))));
      sm80::mma_16816<T>(s[0], qa[kk], bk[0], bk[1]);
      sm80::mma_16816<T>(s[1], qa[kk], bk[2], bk[3]);
    }

    // Scale / soft-cap into base-2 units, mask, online softmax per row.
    const int key_base = key_lo + n * kBlockN + warp * 16 + 2 * (lane & 3);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float x = s[nt][hr * 2 + e];
          x = a.softcap > 0.0f ? a.softcap * tanhf(x * a.scale / a.softcap) * kLog2e : x * a.scale_log2;
          const int j = key_base + nt * 8 + e;
          const bool vis = j < key_hi && (!has_mask || (j >= row_kb[hr] && j < row_ke[hr]));
          x = vis ? x : -INFINITY;
          s[nt][hr * 2 + e] = x;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[hr], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = exp2f(m_run[hr] - m_use);  // 0 when m_run was -inf
      m_run[hr] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pval = exp2f(s[nt][hr * 2 + e] - m_use);
          s[nt][hr * 2 + e] = pval;
          sum += pval;
        }
      l_run[hr] = l_run[hr] * corr + sum;
#pragma unroll
      for (int d = 0; d < D / 8; ++d) {
        o_acc[d][hr * 2] *= corr;
        o_acc[d][hr * 2 + 1] *= corr;
      }
    }

    // O += P V: P (16 x 16 keys) straight from the S accumulators as the A operand.
    uint32_t pa[4];
    pa[0] = sm80::pack2<T>(s[0][0], s[0][1]);
    pa[1] = sm80::pack2<T>(s[0][2], s[0][3]);
    pa[2] = sm80::pack2<T>(s[1][0], s[1][1]);
    pa[3] = sm80::pack2<T>(s[1][2], s[1][3]);
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) {
      uint32_t bv[4];
      sm80::ldmatrix_x4_trans(bv, sm80::smem_addr(tv + swz<D>(warp * 16 + (mi & 1) * 8 + (lane & 7), dt * 2 + (mi >> 1))));
      sm80::mma_16816<T>(o_acc[2 * dt], pa, bv[0], bv[1]);
      sm80::mma_16816<T>(o_acc[2 * dt + 1], pa, bv[2], bv[3]);
    }
  }
  sm80::cp_async_wait<0>();
  __syncthreads();  // the stage buffers become the merge area

  // Merge the 4 warps' states: sO [warps][16][D] fp32, sM/sL [warps][16] (natural-log max, sum).
  float* sO = reinterpret_cast<float*>(sK);
  float* sM = sO + kWarps * kTileRows * D;
  float* sL = sM + kWarps * kTileRows;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float l = l_run[hr];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = (lane >> 2) + hr * 8;
    if ((lane & 3) == 0) {
      sM[warp * kTileRows + row] = m_run[hr] == -INFINITY ? -INFINITY : m_run[hr] * kLn2;
      sL[warp * kTileRows + row] = l;
    }
#pragma unroll
    for (int d = 0; d < D / 8; ++d)
      *reinterpret_cast<float2*>(&sO[(warp * kTileRows + row) * D + d * 8 + 2 * (lane & 3)]) =
          make_float2(o_acc[d][hr * 2], o_acc[d][hr * 2 + 1]);
  }
  __syncthreads();

  for (int idx = tid; idx < kTileRows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const int rg = tile * kTileRows + r;
    if (rg >= a.rows) continue;
    const int g = rg / a.seqlen_q, i = rg % a.seqlen_q;
    const int h = hkv * a.group + g;
    const int64_t lse_idx = (static_cast<int64_t>(b) * a.heads_q + h) * a.seqlen_q + i;
    if (i >= seq.len_q) {  // a row past this sequence's end: LSE -inf, no O row
      if (c == 0) {
        if (a.splits == 1 && a.lse) a.lse[lse_idx] = -INFINITY;
      }
      continue;
    }
    SoftmaxStats st;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) st = merge(st, SoftmaxStats{sM[w * kTileRows + r], sL[w * kTileRows + r]});
    float out[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (st.sum > 0.0f) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = rescale_factor(sM[w * kTileRows + r], st.max) / st.sum;
        const float* src = &sO[(w * kTileRows + r) * D + c * 8];
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] += f * src[e];
      }
    }
    const float row_lse = log_sum_exp(st);
    if (a.splits == 1) {
      const int64_t off = q_row_offset(rg, a.o_bs, a.o_rs, a.o_hs);
      uint4 packed;
      uint32_t* pw = reinterpret_cast<uint32_t*>(&packed);
#pragma unroll
      for (int e = 0; e < 4; ++e) pw[e] = sm80::pack2<T>(out[2 * e], out[2 * e + 1]);
      *reinterpret_cast<uint4*>(static_cast<T*>(a.o) + off + c * 8) = packed;
      if (c == 0 && a.lse) a.lse[lse_idx] = row_lse;
    } else {
      const int64_t part = static_cast<int64_t>(split) * a.batch * a.heads_q * a.seqlen_q + lse_idx;
      float4* dst = reinterpret_cast<float4*>(a.o_part + part * D + c * 8);
      dst[0] = make_float4(out[0], out[1], out[2], out[3]);
      dst[1] = make_float4(out[4], out[5], out[6], out[7]);
      if (c == 0) a.lse_part[part] = row_lse;
    }
  }
  if (a.splits > 1) combine_if_last<T, D>(a, sL + kWarps * kTileRows, b, hkv, tile, seq.len_q);
}

}  // namespace decode
}  // namespace cuda
}  // namespace flashattn
