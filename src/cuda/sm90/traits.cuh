// Tile sizes and the shared-memory plan of the Hopper forward, one place for
// both the host (launch, smem size) and the kernel templates.
#pragma once

#include <cstdint>

namespace flashattn { namespace cuda { namespace sm90 {

// WG0 = producer (TMA), then kConsumerWGs consumer warpgroups of 64 query rows
// each: 2 by default (384 threads), 3 for the d64 experiment variant `wg3`
// (512 threads, BM = 192, as FA3 does for head dim 64).
constexpr int kNumThreads = 384;  // the default configuration
constexpr int kConsumerWarps = 8;

template <int kHeadDim_, bool kBF16_, int kConsumerWGs_ = 2, bool kSyncHandoff_ = false>
struct Traits {
  static constexpr int kHeadDim = kHeadDim_;  // padded head dim: 64, 128 or 256
  static constexpr bool kBF16 = kBF16_;
  static constexpr int kConsumerWGs = kConsumerWGs_;
  // The `sync_handoff` experiment (d64 only, producer.cuh): the tile handoff through
  // two slots and one barrier that both sides sync on, which racecheck can follow.
  static constexpr bool kSyncHandoff = kSyncHandoff_;
  static constexpr int kTileSlots = kSyncHandoff ? 2 : 1;
  static constexpr int kThreads = 128 * (1 + kConsumerWGs);
  static constexpr int kConsumerWarps = 4 * kConsumerWGs;
  // The producer keeps 24 registers; the consumers split the rest of the 64K
  // (multiple of 8): 240 with two consumer warpgroups, 160 with three.
  static constexpr int kConsumerRegs = (65536 - 128 * 24) / (128 * kConsumerWGs) / 8 * 8;
  // setmaxnreg.inc waits until the CTA's pool has the registers, and the pool is
  // what the launch got (__launch_bounds__(kThreads, 1): 65536 / kThreads rounded
  // down to 8, per thread), so the split must fit that, not 65536.
  static_assert(128 * 24 + 128 * kConsumerWGs * kConsumerRegs <= kThreads * (65536 / kThreads / 8 * 8),
                "the register split must fit the launch's register pool");
  static constexpr int kBlockM = 64 * kConsumerWGs;
  // Keys per block. 256 needs a narrower block to fit two K/V stages + Q in
  // 227 KB of smem and S (40 regs) + O (128 regs) in 240 registers.
  static constexpr int kBlockN = kHeadDim <= 128 ? 128 : 80;
  // (3 stages at head dim 128 and 176-key blocks measured no better on the H100.)
  static constexpr int kStages = kHeadDim <= 64 ? 4 : 2;
  // A tile row of head_dim is stored as kChunks column chunks of 64 elements
  // (128 bytes = one 128B-swizzle atom row); chunk c of a tile with R rows
  // starts at c * R * 128 bytes. TMA writes one chunk per copy.
  static constexpr int kChunks = kHeadDim / 64;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKBytes = kBlockN * kHeadDim * 2;
  static constexpr int kVBytes = kBlockN * kHeadDim * 2;
  static_assert(kKBytes % 1024 == 0 && kQBytes % 1024 == 0, "tiles must keep the 1024-byte swizzle alignment");
  // Named barriers of the tile handoff (producer.cuh); 1..kConsumerWGs are the ping-pong turns.
  static constexpr int kTileFullBar = 8, kTileFreeBar = 9;
  static constexpr int kTileBarThreads = 32 + 128 * kConsumerWGs;  // the producer's warp + the consumers
};

template <class Tr>
struct SharedStorage {
  alignas(1024) uint8_t q[Tr::kQBytes];
  alignas(1024) uint8_t k[Tr::kStages][Tr::kKBytes];
  alignas(1024) uint8_t v[Tr::kStages][Tr::kVBytes];
  uint64_t q_full;                   // TMA of Q landed
  uint64_t q_empty;                  // consumers are done with Q (8 warp arrivals)
  uint64_t k_full[Tr::kStages];      // TMA of K landed
  uint64_t v_full[Tr::kStages];      // TMA of V landed
  // K and V of a stage are released separately: K as soon as S = Q K^T is done,
  // V after O += P V, so the next K load starts half an iteration earlier.
  uint64_t k_empty[Tr::kStages];     // consumers are done with K of the stage (8 warp arrivals)
  uint64_t v_empty[Tr::kStages];     // consumers are done with V of the stage
  // The next tile: {m_block, head, batch, 1}, or {0, 0, 0, 0} when the CTA has
  // no tile left. Handed from the producer to the consumers with two named
  // barriers (producer.cuh). (Tried first: st.async with Q's transaction raised an
  // illegal instruction outside a cluster launch; a bulk copy from global, and a
  // plain store published by the q_full arrival, both worked, and racecheck
  // reported those handoffs as it reports this one.)
  alignas(16) int tile[Tr::kTileSlots][4];
};

// +1024: the dynamic smem base is only 16-byte aligned; the kernel rounds it up.
template <class Tr>
constexpr int smem_bytes() {
  return static_cast<int>(sizeof(SharedStorage<Tr>)) + 1024;
}

}}}  // namespace flashattn::cuda::sm90
