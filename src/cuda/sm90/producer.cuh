// The load pipeline (producer warp): one thread schedules the tiles (hands each
// tile's coordinates to the consumers) and issues every TMA copy: Q once per tile
// (after the consumers released the previous Q), then K and V of
// each visited KV block into rings of kStages buffers guarded by full/empty
// mbarriers (K and V released separately, see traits.cuh). The copies' byte
// counts complete the full barriers (expect_tx).
#pragma once

#include "cuda/sm90/block_mask.cuh"
#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/ptx.cuh"
#include "cuda/sm90/traits.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

// One ring position per KV block; K and V keep their own (stage, phase) because
// K is issued one block ahead of V.
struct RingPos {
  int stage = 0;
  uint32_t phase = 0;
  template <int kStages>
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

template <class Tr>
__device__ __forceinline__ void producer_loop(SharedStorage<Tr>& s, const KernelParams& p, const void* tm_q,
                                              const void* tm_k, const void* tm_v) {
  RingPos kpos, vpos;
  uint32_t tile_iter = 0;
  auto load_k = [&](int n, int head_kv, const TileSeq& seq) {
    mbar_wait(&s.k_empty[kpos.stage], kpos.phase ^ 1);
    mbar_arrive_expect_tx(&s.k_full[kpos.stage], Tr::kKBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.k[kpos.stage] + c * Tr::kBlockN * 128, tm_k, &s.k_full[kpos.stage], c * 64,
                  seq.k_row0 + n * Tr::kBlockN, head_kv, seq.k_batch);
    kpos.advance<Tr::kStages>();
  };
  auto load_v = [&](int n, int head_kv, const TileSeq& seq) {
    mbar_wait(&s.v_empty[vpos.stage], vpos.phase ^ 1);
    mbar_arrive_expect_tx(&s.v_full[vpos.stage], Tr::kVBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.v[vpos.stage] + c * Tr::kBlockN * 128, tm_v, &s.v_full[vpos.stage], c * 64,
                  seq.k_row0 + n * Tr::kBlockN, head_kv, seq.k_batch);
    vpos.advance<Tr::kStages>();
  };
  // Tile order (tile_scheduler.cuh): the first tile is blockIdx.x; the next one is
  // claimed once the current one's loads are issued. The producer runs kStages KV
  // blocks ahead of the consumers, so the atomic's round trip is hidden behind
  // their last blocks, and a CTA that runs late simply claims fewer tiles.
  auto claim = [&](int t) {
    return p.tile_counter != nullptr ? static_cast<int>(gridDim.x) + atomicAdd(p.tile_counter, 1)
                                     : t + static_cast<int>(gridDim.x);
  };
  TileWalk walk;
  for (int t = blockIdx.x;; ++tile_iter) {
    int m_block = 0, head = 0, b = 0;
    const bool live = walk.at(p, Tr::kBlockM, t, m_block, head, b);
    // Hand the tile over ({0, 0, 0, 0}: none left, the consumers stop) with two
    // named barriers: sync on FREE (the consumers arrive on it right after reading
    // the last tile), store, arrive on FULL (the consumers sync on it, then read).
    // An arrive synchronizes-with the sync of the same barrier (PTX memory model),
    // which orders both the store after their last read and their read after the
    // store; compute-sanitizer racecheck still reports the pair (it reported the
    // mbarrier-published store too), see docs/06-hopper.md. One lane: the
    // unaligned barrier counts this warp as 32 threads.
    //   kSyncHandoff: slot tile_iter % 2, no FREE barrier; both sides *sync* on FULL,
    //   the producer after issuing the tile's first loads (below). The slot it writes
    //   was last read at the start of tile_iter - 2, before the consumers' previous
    //   FULL sync, which this thread has passed.
    if constexpr (Tr::kSyncHandoff) {
      *reinterpret_cast<int4*>(s.tile[tile_iter & 1]) = live ? make_int4(m_block, head, b, 1) : make_int4(0, 0, 0, 0);
      if (!live) {
        named_bar_sync_unaligned(Tr::kTileFullBar, Tr::kTileBarThreads);
        break;
      }
    } else {
      if (tile_iter > 0) named_bar_sync_unaligned(Tr::kTileFreeBar, Tr::kTileBarThreads);
      *reinterpret_cast<int4*>(s.tile[0]) = live ? make_int4(m_block, head, b, 1) : make_int4(0, 0, 0, 0);
      named_bar_arrive_unaligned(Tr::kTileFullBar, Tr::kTileBarThreads);
      if (!live) break;
    }
    mbar_wait(&s.q_empty, (tile_iter & 1) ^ 1);
    const TileSeq seq = tile_seq(p, b);
    const BlockMask<Tr::kBlockM, Tr::kBlockN> bm{seq.mask(p)};
    int n_begin, n_end;
    bm.range(m_block, &n_begin, &n_end);
    const int head_kv = head / p.group;
    // Q of this tile (always loaded, so the q barriers advance once per tile).
    mbar_arrive_expect_tx(&s.q_full, Tr::kQBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c)
      tma_load_4d(s.q + c * Tr::kBlockM * 128, tm_q, &s.q_full, c * 64, seq.q_row0 + m_block * Tr::kBlockM, head,
                  seq.q_batch);
    // K_{n+1} before V_n: the consumers need K_{n+1} (for S_{n+1}) before they
    // need V_n (for O += P_n V_n, issued after S_{n+1} in the overlapped loop).
    const int blocks = n_end - n_begin;
    // kSyncHandoff: meet the consumers once the loads that the stages hold are
    // issued (the later ones wait for stages this tile frees anyway), so the sync
    // costs the pipeline nothing; they reach it when the previous tile is done.
    const int sync_after = blocks < Tr::kStages ? blocks : Tr::kStages;
    if (Tr::kSyncHandoff && sync_after == 0) named_bar_sync_unaligned(Tr::kTileFullBar, Tr::kTileBarThreads);
    if (blocks > 0) load_k(kv_block(p, n_begin, n_end, 0), head_kv, seq);
    for (int i = 0; i < blocks; ++i) {
      if (i + 1 < blocks) load_k(kv_block(p, n_begin, n_end, i + 1), head_kv, seq);
      load_v(kv_block(p, n_begin, n_end, i), head_kv, seq);
      if (Tr::kSyncHandoff && i + 1 == sync_after) named_bar_sync_unaligned(Tr::kTileFullBar, Tr::kTileBarThreads);
    }
    t = claim(t);
  }
  // The last CTA out resets the counters for the next launch on this stream.
  if (p.tile_counter != nullptr) {
    __threadfence();  // this CTA's last claim comes before its "done"
    if (atomicAdd(p.tile_counter + 1, 1) == static_cast<int>(gridDim.x) - 1) {
      p.tile_counter[0] = 0;
      p.tile_counter[1] = 0;
    }
  }
}

}}}  // namespace flashattn::cuda::sm90
