// The Hopper backward main kernel (sm_90a): wgmma + TMA + warp specialization.
// docs/05-backward.md has the math (equation numbers Bn below); the FA2 rung
// (fa2/fa2_bwd_kernel.cuh) is the same algorithm on mma.sync, and its
// bwd_preprocess (Delta) and bwd_convert_dq run before and after this kernel.
//
// One CTA per (key block of 128 keys, kv head, batch), 3 warpgroups:
//   WG0: producer. Warp 0 loads K_j, V_j once (TMA), then for every
//        (query head of the kv group, Q block that sees the key block): Q_i and
//        dO_i (TMA, 64 rows) plus LSE_i and Delta_i (plain loads, 64 floats)
//        into a 2-stage ring guarded by full / empty mbarriers.
//        kBulkDq (below): lane 0 of warps 1 and 2 writes dQ out.
//   WG1, WG2: consumers, each owning 64 of the 128 keys. Per Q block, in
//   issue order (each GEMM its own commit group, so the math of one step runs
//   while the tensor cores do the previous GEMM):
//     S^T  = K_w Q^T            wgmma m64n64k16 ss (K, Q K-major)            (B1)
//     dP^T = V_w dO^T           wgmma m64n64k16 ss (V, dO K-major)           (B4)
//     P^T  = exp2(S^T scale log2e - LSE log2e), masked   [while dP^T runs]  (B2)
//     dV  += P^T dO             wgmma m64nDk16 rs (P^T from registers, dO MN-major) (B5)
//     dS^T = P^T (dP^T - Delta) [x softcap derivative]   [while dV runs]    (B6, B7)
//     dS^T -> shared memory ([128 keys][64 queries], 128B-swizzled by hand)
//     dK  += dS^T Q             wgmma m64nDk16 rs (dS^T from registers, Q MN-major) (B8)
//     dQ_i += dS K              wgmma m64n64k16 ss, both operands MN-major  (B9)
//       d128: WG w computes dQ columns [64w, 64w + 64) over all 128 keys (the
//             two warpgroups' dS^T halves meet in shared memory: named barrier);
//       d64:  WG w computes all 64 columns over its own 64 keys; both add.
//     dQ goes to the fp32 dq_accum with red.global.add.v4.f32 (unscaled, like
//     the FA2 rung: bwd_convert_dq multiplies by the scale).
//   Variants (kFlags, picked on the host: FLASHATTN_HOPPER_BWD_VARIANT, and
//   `deterministic`):
//     kBulkDq: dQ is not added from registers; each consumer warpgroup stores its
//       64 x 64 dQ tile into shared memory (a swizzled layout, see dq_offset) and
//       a writer warp of WG0 (warp 1 + k) adds the whole 16 KB tile to dq_accum
//       with one cp.reduce.async.bulk .add.f32 (dq_accum then has that layout
//       inside every 64-row Q block; hopper_bwd.cu converts it).
//     kDet (implies kBulkDq): bit-identical dQ. Key blocks run in decreasing
//       order (blockIdx.x 0 = the last key block), and the writer adds a Q
//       block's tile only after every higher key block that visits that Q block
//       has added its own (a counter per (batch, query head, Q block, writer)
//       in the workspace: wait until it equals the number of such key blocks,
//       add, wait for completion, release-increment). A CTA only ever waits for
//       CTAs with a lower linear block index, which were scheduled before it.
//       d64: both warpgroups add to the same 64 columns; writer 0 adds before
//       writer 1 (one semaphore per Q block, two increments per key block).
//     kDqFirst: dQ is issued before dK, so the dQ tile is written out while the
//       dK GEMM still runs (instead of after both); dK then reads dS^T from its
//       shared-memory tile (ss) instead of registers, to free them.
//     kDq32 (d64 only): each warpgroup computes 32 of the 64 dQ columns over
//       all 128 keys (m64n32, after the barrier of both warpgroups) instead of
//       all 64 columns over its own 64 keys: half the dQ additions.
//   Epilogue: dK * scale and dV in the dtype, rows >= seqlen_k and columns >=
//   head_dim dropped.
//
// Accumulator layout of wgmma m64nNk16 (per warp w of the warpgroup, rows
// 16w..16w+15): lane owns rows lane/4 and lane/4 + 8; register 4j + {0,1} /
// {2,3} holds columns 8j + 2(lane%4) + {0,1} of the first / second row.
// Shared-memory tiles are [rows][64-column chunk] with 128-byte rows, the
// 16-byte unit c of row r stored at c ^ (r % 8) (TMA SWIZZLE_128B), every tile
// 1024-byte aligned; a tile with head_dim > 64 is head_dim / 64 such chunks.
// Included only by the hopper_bwd_hdimNNN instantiation files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <string>

#include "cuda/cuda_utils.cuh"
#include "cuda/sm90/bwd_params.cuh"
#include "cuda/sm90/ptx.cuh"
#include "cuda/sm90/wgmma.cuh"

namespace flashattn { namespace cuda { namespace sm90 { namespace bwd {

constexpr int kThreads = 384;       // WG0 producer, WG1 + WG2 consumers
constexpr int kConsumerWarps = 8;   // arrivals on an empty barrier
constexpr int kProducerLanes = 32;  // arrivals on a full barrier (warp 0 of WG0)
constexpr float kLog2e = 1.4426950408889634f;

template <int kHeadDim_, bool kBF16_, int kFlags_ = 0>
struct Traits {
  static constexpr int kHeadDim = kHeadDim_;  // padded head dim: 64 or 128
  static constexpr bool kBF16 = kBF16_;
  static constexpr bool kDet = (kFlags_ & kFlagDet) != 0;
  static constexpr bool kBulkDq = kDet || (kFlags_ & kFlagBulkDq) != 0;
  static constexpr bool kDqFirst = (kFlags_ & kFlagDqFirst) != 0;
  // dQ = dS K per warpgroup, 64 query rows x kDqCols columns:
  //   d128: columns [64 wg, +64) over all 128 keys (the two dS^T halves meet);
  //   d64: all 64 columns over the warpgroup's own 64 keys (both add to them),
  //   or with kFlagDq32 columns [32 wg, +32) over all 128 keys (m64n32).
  static constexpr bool kDq32 = kHeadDim_ == 64 && (kFlags_ & kFlagDq32) != 0;
  static constexpr bool kDqSplitCols = kHeadDim_ == 128 || kDq32;  // the warpgroups own disjoint columns
  static constexpr int kDqCols = kDq32 ? 32 : 64;
  static constexpr int kDqKSteps = kDqSplitCols ? bwd::kBlockN / 16 : 64 / 16;
  // Writer warps of the bulk dQ: one per consumer warpgroup.
  static constexpr int kWriters = 2;
  // Registers after setmaxnreg. The pool is what the launch got: 168 per thread
  // (__launch_bounds__(384, 1)) x 384 = 64512, not 65536, and setmaxnreg.inc waits
  // until the pool has the registers, so a split that needs more never starts:
  // WG0 at 32 (once given to the bulk-dQ writers) with 240 per consumer asked for
  // 65536, and every kBulkDq launch (bulk, deterministic) hung in the consumers'
  // setmaxnreg. The writers fit in 24 (0 spills; only bulk + dqfirst at d128
  // spills 64 B in its consumers).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= 384 * (65536 / 384 / 8 * 8),
                "the register split must fit the pool of a 384-thread launch (168 registers each)");
  static constexpr int kDqTileBytes = 64 * kDqCols * 4;  // one warpgroup's dQ tile (fp32)
  static constexpr int kBlockM = bwd::kBlockM;  // query rows per Q block (64)
  static constexpr int kBlockN = bwd::kBlockN;  // keys per CTA (128), 64 per consumer warpgroup
  static constexpr int kStages = 2;    // Q / dO / LSE / Delta ring
  static constexpr int kChunks = kHeadDim / 64;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;  // Q or dO tile of one stage
  static constexpr int kKBytes = kBlockN * kHeadDim * 2;  // K or V tile
  static constexpr int kDsBytes = kBlockN * kBlockM * 2;  // dS^T tile
  static_assert(kHeadDim == 64 || kHeadDim == 128, "the Hopper backward has head dims 64 and 128");
  static_assert(kQBytes % 1024 == 0 && kKBytes % 1024 == 0 && kDsBytes % 1024 == 0,
                "tiles must keep the 1024-byte swizzle alignment");
};

template <class Tr>
struct SharedStorage {
  alignas(1024) uint8_t k[Tr::kKBytes];
  alignas(1024) uint8_t v[Tr::kKBytes];
  alignas(1024) uint8_t q[Tr::kStages][Tr::kQBytes];
  alignas(1024) uint8_t dout[Tr::kStages][Tr::kQBytes];
  // dS^T of the whole key block, double-buffered by Q-block parity: with the
  // per-iteration barrier between the consumers, a warpgroup can be at most one
  // iteration ahead, so it never overwrites a buffer the other one still reads.
  alignas(1024) uint8_t ds[2][Tr::kDsBytes];
  // kBulkDq: each consumer warpgroup's dQ tile on its way to dq_accum.
  alignas(1024) uint8_t dq[Tr::kBulkDq ? 2 : 1][Tr::kBulkDq ? Tr::kDqTileBytes : 16];
  float lse2[Tr::kStages][Tr::kBlockM];   // LSE * log2(e); +inf for rows that see nothing or are padding
  float delta[Tr::kStages][Tr::kBlockM];  // rowsum(dO * O)
  uint64_t kv_full;                       // K and V landed
  uint64_t full[Tr::kStages];             // Q, dO (TMA bytes) + LSE, Delta (32 producer-lane arrivals)
  uint64_t empty[Tr::kStages];            // consumers are done with the stage (8 warp arrivals)
  uint64_t dq_full[2];                    // kBulkDq: warpgroup w's dQ tile is in shared memory (128 arrivals)
  uint64_t dq_empty[2];                   // kBulkDq: the writer has read it (1 arrival); right after dq_full
};

// Shared-memory address of a member, from the storage's address `base`.
#define FA_SMEM(base, member) ((base) + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, member)))

// +1024: the dynamic smem base is only 16-byte aligned; the kernel rounds it up.
template <class Tr>
constexpr int smem_bytes() {
  return static_cast<int>(sizeof(SharedStorage<Tr>)) + 1024;
}

// The Q blocks whose rows see at least one key of key block n_block (the mask
// of common/mask.h inverted, as in the FA2 rung), times the query heads of the
// kv group: iteration it is query head hk * group + it / num_m, Q block
// m_begin + it % num_m. Producer and consumers walk the same sequence.
struct QBlocks {
  int m_begin = 0, num_m = 0, total = 0;
};
template <class Tr>
__device__ __forceinline__ QBlocks q_blocks(const MainParams& p, int n_block) {
  QBlocks qb;
  const int64_t j0 = static_cast<int64_t>(n_block) * Tr::kBlockN;
  const int64_t j_last = min(j0 + Tr::kBlockN, static_cast<int64_t>(p.seqlen_k)) - 1;
  const int64_t off = static_cast<int64_t>(p.seqlen_k) - p.seqlen_q;  // bottom-right alignment
  int64_t i_lo = 0, i_hi = p.seqlen_q - 1;
  if (p.mask.window_right >= 0) i_lo = max(i_lo, j0 - off - p.mask.window_right);
  if (p.mask.window_left >= 0) i_hi = min(i_hi, j_last - off + p.mask.window_left);
  if (i_lo > i_hi) return qb;
  qb.m_begin = static_cast<int>(i_lo / Tr::kBlockM);
  qb.num_m = static_cast<int>(i_hi / Tr::kBlockM) + 1 - qb.m_begin;
  qb.total = qb.num_m * p.group;
  return qb;
}

// Shared-memory descriptors: make_desc of the tile's address, plus the byte
// offset of the sub-tile in the start-address field (addresses stay < 256 KB,
// so the 14-bit field never carries).
// K-major operand (rows of head_dim): rows [row0, row0 + 64) of a tile with
// `rows` rows, k-step kk (16 head-dim columns): chunk kk / 4, +32 B per step
// inside the 128-byte row (the forward's desc_q / desc_k).
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t tile, int rows, int row0, int kk) {
  return make_desc(tile, 16, 1024) + (static_cast<uint32_t>((kk / 4) * rows * 128 + row0 * 128 + (kk % 4) * 32) >> 4);
}
// MN-major operand (the K dimension runs down the rows, M or N along them):
// K rows [k0, k0 + 16) of a tile with `rows` rows; 64-element M/N chunks are
// rows * 128 bytes apart (LBO), 8-row groups 1024 bytes (SBO) (the forward's desc_v).
__device__ __forceinline__ uint64_t desc_mnmajor(uint32_t tile, int rows, int k0) {
  return make_desc(tile, rows * 128, 1024) + (static_cast<uint32_t>(k0 * 128) >> 4);
}
// The shared-memory address of the storage, hidden from the optimizer once per
// iteration: otherwise it hoists ~30 loop-invariant descriptors out of the loop
// and spills them (the accumulators leave ~48 registers for everything else).
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// Explicit shared-memory accesses with 32-bit addresses (the SharedStorage
// reference comes from an aligned integer, so plain C++ accesses would be
// generic ones with 64-bit addresses).
// Inverse of pack2: (lo, hi) of a bf16x2 / f16x2 register.
__device__ __forceinline__ float2 unpack2(uint32_t v, bool bf16) {
  if (bf16) return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
  __half2 h;
  memcpy(&h, &v, 4);
  return __half22float2(h);
}

__device__ __forceinline__ float2 ld_shared_f32x2(uint32_t addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(addr) : "memory");
  return v;
}
// *(row_addr ^ flip) = v: the 128B swizzle of a store, computed at the store
// (kept inside the asm so the compiler can't hoist 16 addresses per buffer).
__device__ __forceinline__ void st_shared_xor_u32(uint32_t row_addr, uint32_t flip, uint32_t v) {
  asm volatile(
      "{\n.reg .b32 a;\nxor.b32 a, %0, %1;\nst.shared.b32 [a], %2;\n}" ::"r"(row_addr), "r"(flip), "r"(v)
      : "memory");
}

// dst[0..3] += (a, b, c, d); dst 16-byte aligned.
__device__ __forceinline__ void red_add_f32x4(float* dst, float a, float b, float c, float d) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(a), "f"(b), "f"(c), "f"(d)
               : "memory");
}

// ---- bulk dQ (kBulkDq) and the deterministic semaphores ---------------------
// *(addr ^ flip) = (a, b), the swizzle computed at the store (see st_shared_xor_u32).
__device__ __forceinline__ void st_shared_xor_f32x2(uint32_t addr, uint32_t flip, float a, float b) {
  asm volatile("{\n.reg .b32 x;\nxor.b32 x, %0, %1;\nst.shared.v2.f32 [x], {%2, %3};\n}" ::"r"(addr), "r"(flip),
               "f"(a), "f"(b)
               : "memory");
}
// dst[0 .. bytes/4) += the floats at shared address src (one bulk reduction, async proxy).
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// All committed bulk operations have finished reading shared memory / have completed.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
// Orders this thread's async-proxy (bulk) global accesses with its generic ones.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;" ::: "memory");
}
__device__ __forceinline__ int ld_acquire_gpu(const int* ptr) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(ptr) : "memory");
  return v;
}
// Everything this thread wrote before (and, through the fence's cumulativity,
// what it observed) becomes visible before the increment.
__device__ __forceinline__ void release_inc_gpu(int* ptr) {
  asm volatile("fence.acq_rel.gpu;\nred.relaxed.gpu.global.add.s32 [%0], 1;" ::"l"(ptr) : "memory");
}

// wgmma with A K-major and B MN-major from shared memory (tnspA = 0, tnspB = 1):
// dK += dS^T Q with dS^T read from its shared-memory tile (kDqFirst), so the
// packed dS^T registers are free while dQ is written out. Written out like
// wgmma.cuh (generated by the loop in the commit that added it).
template <int N, bool BF16> struct WgmmaSsTB;
template <> struct WgmmaSsTB<64, false> {
  __device__ __forceinline__ static void ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
};
template <> struct WgmmaSsTB<64, true> {
  __device__ __forceinline__ static void ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
};
template <> struct WgmmaSsTB<128, false> {
  __device__ __forceinline__ static void ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
};
template <> struct WgmmaSsTB<128, true> {
  __device__ __forceinline__ static void ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
};

// m64n32k16, both operands MN-major from shared memory (dQ with kFlagDq32).
template <bool BF16> struct Wgmma32TT;
template <> struct Wgmma32TT<false> {
  __device__ __forceinline__ static void ss(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
};
template <> struct Wgmma32TT<true> {
  __device__ __forceinline__ static void ss(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
};

// A 64x64 accumulator (keys x queries) re-packed as the A fragments of four
// k16 steps over the queries (the forward's pack_p).
template <bool kBF16>
__device__ __forceinline__ void pack_frag(const float (&acc)[32], uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) a[kk][r] = pack2(acc[8 * kk + 2 * r], acc[8 * kk + 2 * r + 1], kBF16);
}

// ---- producer (warp 0 of WG0) -------------------------------------------------
template <class Tr>
__device__ __forceinline__ void producer(SharedStorage<Tr>& s, const MainParams& p, const QBlocks& qb, int n_block,
                                         int hk, int b, const void* tm_q, const void* tm_k, const void* tm_v,
                                         const void* tm_do, int lane) {
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;
  if (qb.total == 0) return;  // nothing to load; the consumers write dK = dV = 0
  if (lane == 0) {
    mbar_arrive_expect_tx(&s.kv_full, 2 * Tr::kKBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.k + c * BN * 128, tm_k, &s.kv_full, c * 64, n_block * BN, hk, b);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.v + c * BN * 128, tm_v, &s.kv_full, c * 64, n_block * BN, hk, b);
  }
  int stage = 0;
  uint32_t phase = 0;
  for (int it = 0; it < qb.total; ++it) {
    const int h = hk * p.group + it / qb.num_m;
    const int i0 = (qb.m_begin + it % qb.num_m) * BM;
    const int64_t bh = static_cast<int64_t>(b) * p.heads_q + h;
    mbar_wait(&s.empty[stage], phase ^ 1);
#pragma unroll
    for (int r = lane; r < BM; r += 32) {
      const int i = i0 + r;
      const float l = i < p.seqlen_q ? p.lse[bh * p.seqlen_q + i] : -INFINITY;
      // A row that sees nothing (LSE = -inf) or a padding row: P = exp2(x - inf) = 0, never NaN.
      s.lse2[stage][r] = l == -INFINITY ? INFINITY : l * kLog2e;
      s.delta[stage][r] = p.delta[bh * p.seqlen_q_pad + i];
    }
    if (lane == 0) {
      // Lane 0 arrives after its own LSE/Delta stores, the other lanes below;
      // the phase completes when all 32 arrived and the TMA bytes landed.
      mbar_arrive_expect_tx(&s.full[stage], 2 * Tr::kQBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(s.q[stage] + c * BM * 128, tm_q, &s.full[stage], c * 64, i0, h, b);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        tma_load_4d(s.dout[stage] + c * BM * 128, tm_do, &s.full[stage], c * 64, i0, h, b);
    } else {
      mbar_arrive(&s.full[stage]);
    }
    if (++stage == Tr::kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
}

// ---- dQ writer (kBulkDq: lane 0 of warp 1 + k of WG0) ----------------------------
// Writer k adds consumer warpgroup k's dQ tile: d128 columns [64k, 64k + 64)
// (16 KB at 16 KB * k in the Q block), kDq32 columns [32k, 32k + 32) (8 KB at
// 8 KB * k), d64 all 64 columns (16 KB at 0: both writers add to the same floats).
// The tile's shared memory is handed back (dq_empty) as soon as the bulk copy
// has read it; kDet then waits for the adds to complete and releases the
// semaphore: per (Q block, writer) where the writers own disjoint columns
// (the count of key blocks that have added), one per Q block at d64 (two
// increments per key block: writer 0, then writer 1).
template <class Tr>
__device__ __forceinline__ void dq_writer(SharedStorage<Tr>& s, const MainParams& p, const QBlocks& qb, int n_block,
                                          int hk, int b, int k) {
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, D = Tr::kHeadDim;
  const int num_m_total = p.seqlen_q_pad / BM;
  const uint32_t sb0 = smem_addr(&s);
  for (int it = 0; it < qb.total; ++it) {
    const int hh = it / qb.num_m;
    const int m = qb.m_begin + (it - hh * qb.num_m);
    const int64_t bhm = (static_cast<int64_t>(b) * p.heads_q + hk * p.group + hh) * num_m_total + m;
    int* sem = nullptr;
    if constexpr (Tr::kDet) {
      // The key blocks that visit Q block m are a contiguous range ending at
      // n_last (the mask's key range of its last row); the ones above this CTA
      // add first.
      const int i_last = min(m * BM + BM, p.seqlen_q) - 1;
      int64_t j_top = p.seqlen_k - 1;
      if (p.mask.window_right >= 0)
        j_top = min(j_top, static_cast<int64_t>(i_last) + p.seqlen_k - p.seqlen_q + p.mask.window_right);
      const int above = static_cast<int>(j_top / BN) - n_block;
      const int target = Tr::kDqSplitCols ? above : 2 * above + k;
      sem = p.dq_sem + (Tr::kDqSplitCols ? bhm * 2 + k : bhm);
      while (ld_acquire_gpu(sem) < target) {
      }
      fence_proxy_async_global();  // the adds below come after the ones observed
    }
    // (Addresses from an opaque base per iteration: hoisted, they would not
    // fit the writer's 24 registers.)
    const uint32_t sb = opaque(sb0);
    mbar_wait_addr(sb + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, dq_full)) + 8 * k, it & 1);
    bulk_reduce_add_f32(p.dq_accum + bhm * (BM * D) + (Tr::kDqSplitCols ? k * (Tr::kDqTileBytes / 4) : 0),
                        sb + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, dq)) + k * Tr::kDqTileBytes,
                        Tr::kDqTileBytes);
    bulk_commit();
    bulk_wait_read();
    mbar_arrive_addr(sb + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, dq_empty)) + 8 * k);
    if constexpr (Tr::kDet) {
      bulk_wait_all();
      fence_proxy_async_global();
      release_inc_gpu(sem);
    }
  }
  bulk_wait_all();
}

// ---- consumers (WG1, WG2) -------------------------------------------------------
// Byte offset of consumer thread ctid's first dS^T store in the tile: row
// key_row = 64 wg + 16 warp + g, plus (g << 4) + 4t (see the stores).
__device__ __forceinline__ uint32_t ds_thread_offset(uint32_t ctid) {
  const uint32_t lane = ctid % 32, g = lane / 4, t = lane % 4;
  const uint32_t key_row = 64 * (ctid / 128) + 16 * ((ctid % 128) / 32) + g;
  return key_row * 128 + (g << 4) + 4 * t;
}

// The Q-block columns [lo, hi] (query rows i0 + lo .. i0 + hi) that key `key`
// sees, from common/mask.h inverted:
//   key < key_end(q)    <=>  q >= key - off - window_right  (and key < seqlen_k)
//   key >= key_begin(q) <=>  q <= key - off + window_left
// clamped to [-1, 64] / [-2, 64]; lo > hi when it sees none of them.
__device__ __forceinline__ void visible_queries(const MainParams& p, int64_t key, int i0, int& lo, int& hi) {
  const int64_t off = static_cast<int64_t>(p.seqlen_k) - p.seqlen_q;
  int64_t l = -1, h = 64;
  if (p.mask.window_right >= 0) l = max(l, key - off - p.mask.window_right - i0);
  if (p.mask.window_left >= 0) h = min(h, key - off + p.mask.window_left - i0);
  if (key >= p.seqlen_k) h = -2;
  lo = static_cast<int>(min(l, int64_t{64}));
  hi = static_cast<int>(max(h, int64_t{-2}));
}

// st = S^T -> P^T (B2) of the 64 x 64 block, in the log2 domain; column
// 8j + 2t + {0,1} of the accumulator is query 8j + 2t + {0,1}.
//   no softcap: x = S scale log2e;  softcap: x = tanh(S scale / softcap) softcap log2e
//   invisible (query, key) pairs: x = -inf;  P = exp2(x - LSE log2e)
template <bool kSoftcap>
__device__ __forceinline__ void compute_p(const MainParams& p, float (&st)[32], uint32_t lse2, int t, bool need_mask,
                                          int64_t key, int i0) {
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    if constexpr (kSoftcap) {
      // tanh(y) = 1 - 2 / (exp(2y) + 1): branch-free, ~1e-7 absolute error, +-1 at the ends.
      const float th = 1.0f - __fdividef(2.0f, fast_exp2(st[i] * p.softcap_in * (2.0f * kLog2e)) + 1.0f);
      st[i] = th * p.softcap_log2;
    } else {
      st[i] *= p.scale_log2;
    }
  }
  if (need_mask) {
    // The thread's keys are `key` and key + 8 (registers 4j + {0,1} and 4j + {2,3}).
    int lo[2], hi[2];
    visible_queries(p, key, i0, lo[0], hi[0]);
    visible_queries(p, key + 8, i0, lo[1], hi[1]);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = 8 * j + 2 * t + (e & 1);
        if (!(qc >= lo[e >> 1] && qc <= hi[e >> 1])) st[4 * j + e] = -INFINITY;
      }
  }
  const uint32_t lse_addr = lse2 + 8 * t;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 l2 = ld_shared_f32x2(lse_addr + 32 * j);
#pragma unroll
    for (int e = 0; e < 4; ++e) st[4 * j + e] = fast_exp2(st[4 * j + e] - ((e & 1) ? l2.y : l2.x));
  }
}

// dpt = dP^T -> dS^T = P^T (dP^T - Delta) (B6), P from the packed fragments of
// the dV GEMM (16 registers instead of the 32 of st, which would not fit next
// to dK, dV and the in-flight fragments at head dim 128).
template <bool kBF16>
__device__ __forceinline__ void compute_ds(const uint32_t (&pp)[4][4], float (&dpt)[32], uint32_t delta2, int t) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 dl = ld_shared_f32x2(delta2 + 8 * t + 32 * j);
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // registers 4j + 2h + {0,1}: one packed pair
      const float2 pv = unpack2(pp[j / 2][(j % 2) * 2 + h], kBF16);
      dpt[4 * j + 2 * h] = pv.x * (dpt[4 * j + 2 * h] - dl.x);
      dpt[4 * j + 2 * h + 1] = pv.y * (dpt[4 * j + 2 * h + 1] - dl.y);
    }
  }
}
// The same with softcap (B7): times 1 - tanh^2, tanh recovered from the fp32 P
// as in the FA2 rung: log2 P = x - LSE log2e, x = tanh softcap log2e (P = 0: dS = 0).
__device__ __forceinline__ void compute_ds_softcap(const MainParams& p, const float (&st)[32], float (&dpt)[32],
                                                   uint32_t lse2, uint32_t delta2, int t) {
  const float inv_softcap_log2 = __frcp_rn(p.softcap_log2);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 dl = ld_shared_f32x2(delta2 + 8 * t + 32 * j);
    const float2 l2 = ld_shared_f32x2(lse2 + 8 * t + 32 * j);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float pv = st[4 * j + e];
      const float th = (__log2f(pv) + ((e & 1) ? l2.y : l2.x)) * inv_softcap_log2;
      const float ds = pv * (dpt[4 * j + e] - ((e & 1) ? dl.y : dl.x)) * (1.0f - th * th);
      dpt[4 * j + e] = pv > 0.0f ? ds : 0.0f;
    }
  }
}

// The warpgroup's 64 x 64 dQ tile (accumulator layout) to dq_accum: red.global
// from registers, or (kBulkDq) into its shared-memory tile in the dq_offset
// layout for the writer warp.
template <class Tr>
__device__ __forceinline__ void store_dq(uint32_t sb, const MainParams& p, const float (&dq)[Tr::kDqCols / 2], int b,
                                         int h, int i0, int it, int wg, int warp, int g, int t) {
  constexpr int D = Tr::kHeadDim;
  if constexpr (Tr::kBulkDq) {
    // Row r = 16 warp + g (and r + 8, same r % 8 = g), columns 8j + 2t + {0,1}:
    // chunk j / 4, 16-byte unit 2 (j % 4) + t / 2, second half for odd t.
    // Per store instruction the 32 lanes hit every bank pair exactly twice.
    // (dq_empty[wg] was waited for before the dQ GEMM: a spin loop here, with
    // dQ, dK and dV live, makes ptxas spill.)
    const uint32_t bars = sb + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, dq_full)) + 8 * wg;
    // The tile is 1024-byte aligned, so the unit bits 4..6 of `row` are zero and
    // the swizzled unit is an XOR: (2 (j % 4)) ^ (t / 2) ^ g.
    const uint32_t row = sb + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, dq)) + wg * Tr::kDqTileBytes +
                         (16 * warp + g) * 128 + (t & 1) * 8;
    const uint32_t row_x = row ^ (static_cast<uint32_t>(g ^ (t >> 1)) << 4);
#pragma unroll
    for (int j = 0; j < Tr::kDqCols / 8; ++j) {
      st_shared_xor_f32x2(row_x + (j / 4) * 8192, (2 * (j % 4)) << 4, dq[4 * j], dq[4 * j + 1]);
      st_shared_xor_f32x2(row_x + (j / 4) * 8192 + 1024, (2 * (j % 4)) << 4, dq[4 * j + 2], dq[4 * j + 3]);
    }
    fence_proxy_async();  // generic stores, read next by the bulk copy
    mbar_arrive_addr(bars);  // dq_full[wg]
  } else {
    // dq_accum += dQ. Thread pairs (t, t ^ 1) swap halves so each adds 4
    // consecutive floats of one row: even t row g, odd t row g + 8.
    const bool odd = t & 1;
    float* dst = p.dq_accum +
                 ((static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q_pad + i0 + 16 * warp + g + (odd ? 8 : 0)) * D +
                 (Tr::kDqSplitCols ? Tr::kDqCols * wg : 0);
#pragma unroll
    for (int j = 0; j < Tr::kDqCols / 8; ++j) {
      const float s0 = odd ? dq[4 * j + 0] : dq[4 * j + 2];
      const float s1 = odd ? dq[4 * j + 1] : dq[4 * j + 3];
      const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1);
      const float r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
      const int c = 8 * j + 2 * (t & ~1);
      if (odd)
        red_add_f32x4(dst + c, r0, r1, dq[4 * j + 2], dq[4 * j + 3]);
      else
        red_add_f32x4(dst + c, dq[4 * j + 0], dq[4 * j + 1], r0, r1);
    }
  }
}

template <class Tr>
__device__ __forceinline__ void consumer(SharedStorage<Tr>& s, const MainParams& p, const QBlocks& qb, int n_block,
                                         int hk, int b) {
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  using Mma64 = Wgmma<64, Tr::kBF16>;  // S^T, dP^T (64 keys x 64 queries), dQ (64 queries x 64 columns)
  using MmaD = Wgmma<D, Tr::kBF16>;    // dK, dV (64 keys x D)
  const int ctid = threadIdx.x - 128;
  const int wg = ctid / 128;
  const int warp = (ctid % 128) / 32;
  const int lane = ctid % 32;
  const int g = lane / 4, t = lane % 4;
  const int key_row = 64 * wg + 16 * warp + g;  // the thread's first key row in the block (second: + 8)
  const int64_t j0 = static_cast<int64_t>(n_block) * BN;
  const bool softcap = p.softcap_in != 0.0f;

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;

  if (qb.total > 0) mbar_wait(&s.kv_full, 0);
  int stage = 0;
  uint32_t phase = 0;
  for (int it = 0; it < qb.total; ++it) {
    const int h = hk * p.group + it / qb.num_m;
    const int i0 = (qb.m_begin + it % qb.num_m) * BM;
    mbar_wait(&s.full[stage], phase);
    const uint32_t sb = opaque(smem_addr(&s));
    const uint32_t sk = FA_SMEM(sb, k), sv = FA_SMEM(sb, v);
    const uint32_t sq = FA_SMEM(sb, q) + stage * Tr::kQBytes, sdo = FA_SMEM(sb, dout) + stage * Tr::kQBytes;

    // S^T = K_w Q^T (B1) and dP^T = V_w dO^T (B4): 64 keys x 64 queries each,
    // two commit groups: P is computed while dP^T is still on the tensor cores.
    float st[32], dpt[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Mma64::ss(st, desc_kmajor(sk, BN, 64 * wg, kk), desc_kmajor(sq, BM, 0, kk), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Mma64::ss(dpt, desc_kmajor(sv, BN, 64 * wg, kk), desc_kmajor(sdo, BM, 0, kk), kk > 0);
    wgmma_commit();
    wgmma_wait<1>();  // S^T done
    fence_regs(st);

    // Does this (Q block, key block) pair need the element mask? Rows past
    // seqlen_q need none (their LSE is +inf); keys past seqlen_k always do.
    const int64_t i_last = min(i0 + BM, p.seqlen_q) - 1;
    const bool need_mask = j0 + BN > p.seqlen_k ||
                           (p.mask.has_mask() && !(p.mask.key_begin(i_last) <= j0 && p.mask.key_end(i0) >= j0 + BN));
    const uint32_t lse2 = FA_SMEM(sb, lse2) + stage * BM * 4, delta2 = FA_SMEM(sb, delta) + stage * BM * 4;
    if (softcap)
      compute_p<true>(p, st, lse2, t, need_mask, j0 + key_row, i0);
    else
      compute_p<false>(p, st, lse2, t, need_mask, j0 + key_row, i0);
    uint32_t pp[4][4];
    pack_frag<Tr::kBF16>(st, pp);

    // dV += P^T dO (B5): k = the 64 queries, 4 steps of 16; runs while dS is computed.
    fence_regs(dv);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) MmaD::rs(dv, pp[kk], desc_mnmajor(sdo, BM, 16 * kk), 1);
    wgmma_commit();

    if (softcap) {
      wgmma_wait<0>();  // dP^T and dV done (the fp32 P stays live instead of the fragments)
      fence_regs(dpt);
      compute_ds_softcap(p, st, dpt, lse2, delta2, t);
    } else {
      wgmma_wait<1>();  // dP^T done, dV may still run
      fence_regs(dpt);
      compute_ds<Tr::kBF16>(pp, dpt, delta2, t);
    }
    uint32_t pds[4][4];
    pack_frag<Tr::kBF16>(dpt, pds);

    // dS^T -> shared memory: row = key (k dimension of dQ = dS K), 64 queries of
    // 128 bytes per row, 16-byte unit j of row r at j ^ (r % 8). Here r % 8 = g,
    // so the address of unit j is (row + (g << 4) + 4t) ^ (j << 4); rows r and
    // r + 8 are 1024 bytes apart. (Bank-conflict free: unit j ^ g differs per g.)
    const uint32_t ds = FA_SMEM(sb, ds) + (it & 1) * Tr::kDsBytes;
    const uint32_t ds_row = ds + ds_thread_offset(opaque(ctid));  // (recomputed: else ptxas spills it)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      st_shared_xor_u32(ds_row, j << 4, pds[j / 2][(j % 2) * 2]);
      st_shared_xor_u32(ds_row + 1024, j << 4, pds[j / 2][(j % 2) * 2 + 1]);
    }
    fence_proxy_async();  // the generic-proxy stores above, read next by wgmma

    // dK += dS^T Q (B8) and dQ_i = dS K_j (B9). dQ: A = dS (64 queries x keys)
    // read from the dS^T tile as MN-major, B = K (keys x 64 columns) MN-major;
    // it needs the other warpgroup's half of dS^T at d128.
    // kDqFirst: dK is issued after the barrier, its A (dS^T) from the tile.
    auto issue_dk = [&] {
      fence_regs(dk);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        if constexpr (Tr::kDqFirst)
          WgmmaSsTB<D, Tr::kBF16>::ss(dk, desc_kmajor(ds, BN, 64 * wg, kk), desc_mnmajor(sq, BM, 16 * kk), 1);
        else
          MmaD::rs(dk, pds[kk], desc_mnmajor(sq, BM, 16 * kk), 1);
      }
      wgmma_commit();
    };
    if constexpr (!Tr::kDqFirst) issue_dk();
    if constexpr (Tr::kDqSplitCols)
      named_bar_sync(1, 256);  // both halves of dS^T are in shared memory
    else
      named_bar_sync(2 + wg, 128);  // this warpgroup's half is
    const int key0 = Tr::kDqSplitCols ? 0 : 64 * wg;
    // K columns of this warpgroup: the next 64-column chunk (d128), or 64 bytes
    // into the 128-byte swizzled rows (kDq32: the MN-major start address
    // offset, like the +32 B k-steps of desc_kmajor).
    const uint32_t kcols = sk + (Tr::kDq32 ? wg * 64 : Tr::kDqSplitCols ? wg * BN * 128 : 0);
    if constexpr (Tr::kBulkDq)  // dq_empty[wg]: the writer has read the previous dQ tile
      mbar_wait_addr(sb + static_cast<uint32_t>(offsetof(SharedStorage<Tr>, dq_empty)) + 8 * wg, (it & 1) ^ 1);
    float dq[Tr::kDqCols / 2];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Tr::kDqKSteps; ++kk) {
      if constexpr (Tr::kDq32)
        Wgmma32TT<Tr::kBF16>::ss(dq, desc_mnmajor(ds, BN, key0 + 16 * kk), desc_mnmajor(kcols, BN, key0 + 16 * kk),
                                 kk > 0);
      else
        Mma64::ss_tA(dq, desc_mnmajor(ds, BN, key0 + 16 * kk), desc_mnmajor(kcols, BN, key0 + 16 * kk), kk > 0);
    }
    wgmma_commit();

    if constexpr (Tr::kDqFirst) {
      issue_dk();
      wgmma_wait<1>();  // dV and dQ done, dK still runs while dQ is written out
      fence_regs(dv);
      fence_regs(dq);
      store_dq<Tr>(sb, p, dq, b, h, i0, it, wg, warp, g, t);
      wgmma_wait<0>();
      fence_regs(dk);
      __syncwarp();
      if (lane == 0) mbar_arrive(&s.empty[stage]);  // Q, dO, LSE, Delta of this stage are free
    } else {
      wgmma_wait<1>();  // dV, dK done: Q, dO, LSE, Delta of this stage are free
      fence_regs(dv);
      fence_regs(dk);
      __syncwarp();
      if (lane == 0) mbar_arrive(&s.empty[stage]);
      wgmma_wait<0>();
      fence_regs(dq);
      store_dq<Tr>(sb, p, dq, b, h, i0, it, wg, warp, g, t);
    }

    if (++stage == Tr::kStages) {
      stage = 0;
      phase ^= 1;
    }
  }

  // Epilogue: dK = scale * dK, dV in the dtype (B8: the scale of dS is applied here).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = j0 + key_row + 8 * r;
    if (key >= p.seqlen_k) continue;
    uint8_t* dkp = static_cast<uint8_t*>(p.dk) + 2 * (b * p.dk_batch_stride + key * p.dk_row_stride +
                                                      hk * p.dk_head_stride);
    uint8_t* dvp = static_cast<uint8_t*>(p.dv) + 2 * (b * p.dv_batch_stride + key * p.dv_row_stride +
                                                      hk * p.dv_head_stride);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const int col = 8 * j + 2 * t;
      if (col < p.head_dim) {
        *reinterpret_cast<uint32_t*>(dkp + 2 * col) =
            pack2(dk[4 * j + 2 * r] * p.scale, dk[4 * j + 2 * r + 1] * p.scale, Tr::kBF16);
        *reinterpret_cast<uint32_t*>(dvp + 2 * col) = pack2(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1], Tr::kBF16);
      }
    }
  }
}

template <class Tr>
__global__ void __launch_bounds__(kThreads, 1)
    hopper_bwd_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                      const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                      const __grid_constant__ MainParams p) {
  extern __shared__ uint8_t smem_raw[];
  auto& s = *reinterpret_cast<SharedStorage<Tr>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                                  ~static_cast<uintptr_t>(1023));
  // kDet: the last key block first (see the header: waits only go to lower block indices).
  const int n_block = Tr::kDet ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int hk = blockIdx.y, b = blockIdx.z;
  if (threadIdx.x == 0) {
    prefetch_tensormap(&tm_q);
    prefetch_tensormap(&tm_k);
    prefetch_tensormap(&tm_v);
    prefetch_tensormap(&tm_do);
    mbar_init(&s.kv_full, 1);
    for (int i = 0; i < Tr::kStages; ++i) {
      mbar_init(&s.full[i], kProducerLanes);
      mbar_init(&s.empty[i], kConsumerWarps);
    }
    for (int i = 0; i < 2; ++i) {
      mbar_init(&s.dq_full[i], 128);
      mbar_init(&s.dq_empty[i], 1);
    }
    fence_barrier_init();
  }
  __syncthreads();

  // (Each role computes its Q-block range after the register reallocation:
  // values live across setmaxnreg were spilled.)
  const int warp_idx = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 32, 0);  // warp-uniform
  if (warp_idx < 4) {
    setmaxnreg_dec<Tr::kProducerRegs>();
    if (warp_idx == 0) {
      producer<Tr>(s, p, q_blocks<Tr>(p, n_block), n_block, hk, b, &tm_q, &tm_k, &tm_v, &tm_do, threadIdx.x);
    } else if constexpr (Tr::kBulkDq) {
      if (warp_idx <= Tr::kWriters && threadIdx.x % 32 == 0)
        dq_writer<Tr>(s, p, q_blocks<Tr>(p, n_block), n_block, hk, b, warp_idx - 1);
    }
  } else {
    setmaxnreg_inc<Tr::kConsumerRegs>();  // see Traits: the split fits the launch's pool
    consumer<Tr>(s, p, q_blocks<Tr>(p, n_block), n_block, hk, b);
  }
}

template <class Tr>
Status launch_variant(const LaunchArgs& a) {
  constexpr int smem = smem_bytes<Tr>();
  static PerDeviceOnce smem_opt_in;
  FA_CUDA_CHECK(smem_opt_in.run(
      [] { return cudaFuncSetAttribute(hopper_bwd_kernel<Tr>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem); }));
  hopper_bwd_kernel<Tr><<<a.grid, kThreads, smem, a.stream>>>(a.tm_q, a.tm_k, a.tm_v, a.tm_do, a.params);
  FA_CUDA_CHECK_LAUNCH("hopper_bwd_kernel");
  return Status::Ok();
}

// The instantiated flag combinations (kFlagDet implies kFlagBulkDq).
template <int kHeadDim, bool kBF16, int kExtra>
Status launch_flags(const LaunchArgs& a) {
  switch (a.flags & ~kExtra) {
    case 0:
      return launch_variant<Traits<kHeadDim, kBF16, kExtra>>(a);
    case kFlagDqFirst:
      return launch_variant<Traits<kHeadDim, kBF16, kExtra | kFlagDqFirst>>(a);
    case kFlagBulkDq:
      return launch_variant<Traits<kHeadDim, kBF16, kExtra | kFlagBulkDq>>(a);
    case kFlagBulkDq | kFlagDqFirst:
      return launch_variant<Traits<kHeadDim, kBF16, kExtra | kFlagBulkDq | kFlagDqFirst>>(a);
    case kFlagBulkDq | kFlagDet:
      return launch_variant<Traits<kHeadDim, kBF16, kExtra | kFlagBulkDq | kFlagDet>>(a);
    case kFlagBulkDq | kFlagDet | kFlagDqFirst:
      return launch_variant<Traits<kHeadDim, kBF16, kExtra | kFlagBulkDq | kFlagDet | kFlagDqFirst>>(a);
    default:
      return Status::Internal("hopper backward: flag combination " + std::to_string(a.flags) + " not instantiated");
  }
}

// The instantiated flag combinations (kFlagDet implies kFlagBulkDq; kFlagDq32
// only at d64, the host drops it at d128).
template <int kHeadDim, bool kBF16>
Status launch_hopper_bwd(const LaunchArgs& a) {
  if constexpr (kHeadDim == 64) {
    if (a.flags & kFlagDq32) return launch_flags<kHeadDim, kBF16, kFlagDq32>(a);
  }
  return launch_flags<kHeadDim, kBF16, 0>(a);
}

#undef FA_SMEM

}}}}  // namespace flashattn::cuda::sm90::bwd
