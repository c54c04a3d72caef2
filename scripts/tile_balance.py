#!/usr/bin/env python3
"""How evenly the Hopper forward's tile orders spread causal work over the SMs.

Models src/cuda/sm90/tile_scheduler.cuh: tiles of BM query rows, causal work
of a tile = the KV blocks it visits (+ a fixed cost per tile), in the
scheduler's L2-grouped longest-first order. Prints, for the bench's shapes
(16k tokens per batch, hidden 2048), the busiest CTA's work over the mean --
the factor the launch takes longer than perfectly balanced work -- for:
  static-last    the round robin (CTA i runs tiles i, i + grid, ...) over the order
                 with the short L2 group last (the kernel before this change)
  static-first   the same round robin, short group first (the `static_sched`
                 experiment of the kernel now)
  dyn-last       a greedy claim (next free CTA takes the next tile), short group last
  dyn            a greedy claim with the short group first (the kernel now)
usage: scripts/tile_balance.py [--sms 132] [--l2-mb 50]
"""
import argparse
import heapq


def tile_lengths(n, heads, batch, d, bm, bn, l2_bytes, short_first):
    nm = (n + bm - 1) // bm
    bh = heads * batch
    kv_bytes = 2 * n * d * 2
    l2_heads = max(1, min(bh, (l2_bytes // 2) // kv_bytes))
    short = bh % l2_heads
    sizes = [l2_heads] * (bh // l2_heads)
    if short:
        sizes = [short] + sizes if short_first else sizes + [short]
    out = []
    for size in sizes:
        for r in range(size * nm):
            m_block = nm - 1 - r // size
            out.append(((m_block + 1) * bm + bn - 1) // bn)
    return out


def imbalance_static(tiles, sms, per_tile):
    load = [0.0] * sms
    for t, w in enumerate(tiles):
        load[t % sms] += w + per_tile
    return max(load) / (sum(load) / sms)


def imbalance_greedy(tiles, sms, per_tile):
    heap = [(0.0, i) for i in range(sms)]
    for w in tiles:
        l, i = heapq.heappop(heap)
        heapq.heappush(heap, (l + w + per_tile, i))
    total = sum(w + per_tile for w in tiles)
    return max(l for l, _ in heap) / (total / sms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--l2-mb", type=int, default=50)
    ap.add_argument("--per-tile", type=float, default=0.5, help="fixed cost of a tile, in KV blocks")
    a = ap.parse_args()
    print(f"{'N':>6} {'d':>4} {'static-last':>12} {'static-first':>13} {'dyn-last':>9} {'dyn':>6}")
    for n in (512, 1024, 2048, 4096, 8192, 16384):
        for d in (64, 128, 256):
            heads, batch = 2048 // d, max(1, 16384 // n)
            bn = 80 if d == 256 else 128
            args = (n, heads, batch, d, 128, bn, a.l2_mb << 20)
            last = tile_lengths(*args, short_first=False)
            first = tile_lengths(*args, short_first=True)
            print(f"{n:>6} {d:>4} {imbalance_static(last, a.sms, a.per_tile):>12.3f} "
                  f"{imbalance_static(first, a.sms, a.per_tile):>13.3f} "
                  f"{imbalance_greedy(last, a.sms, a.per_tile):>9.3f} "
                  f"{imbalance_greedy(first, a.sms, a.per_tile):>6.3f}")


if __name__ == "__main__":
    main()
