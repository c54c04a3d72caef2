#!/usr/bin/env python3
"""Time PyTorch's CPU scaled_dot_product_attention, the baseline of the flashattn
CPU backend (docs/cpu-backend.md). Prints one line per shape: median wall ms and
GFLOPS, and median process CPU time / threads (the fairer number on a machine
shared with other jobs: time the process was actually running).

FLOPs follow FlashAttention: fwd 4*B*H*Nq*Nk*D (halved when causal), bwd 2.5x fwd.

  python bench/torch_cpu_sdpa.py                       # fwd fp32 B=1 H=8 N=2048 D=64/128, causal and not
  python bench/torch_cpu_sdpa.py --d 64 --n 4096 --causal 1 --dtype bf16 --bwd --threads 2
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def time_ms(fn, reps, threads, warmup=2):
    """Median wall ms, and median process CPU ms / threads (robust on a shared, loaded machine)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3 / threads)
    return statistics.median(wall), statistics.median(cpu)


def bench(b, h, n, nk, d, causal, dtype, bwd, reps, threads):
    g = torch.Generator().manual_seed(0)
    # torch layout [B, H, N, D]; values N(0, 1), never zeros.
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float32).to(dtype)
    k = torch.randn(b, h, nk, d, generator=g, dtype=torch.float32).to(dtype)
    v = torch.randn(b, h, nk, d, generator=g, dtype=torch.float32).to(dtype)
    flops = 4.0 * b * h * n * nk * d / (2 if causal else 1)
    if not bwd:
        with torch.no_grad():
            ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), reps, threads)
        return ms, flops
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    do = torch.randn_like(o)

    def step():
        torch.autograd.grad(o, (q, k, v), do, retain_graph=True)

    return time_ms(step, reps, threads), 2.5 * flops


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--h", type=int, default=8)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--nk", type=int, default=0, help="0 = same as --n")
    ap.add_argument("--d", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--causal", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--bwd", action="store_true", help="time the backward (autograd of SDPA) instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    nk = a.nk or a.n
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"threads {torch.get_num_threads()}")
    for d in a.d:
        for causal in a.causal:
            (ms, cpu_ms), flops = bench(a.b, a.h, a.n, nk, d, bool(causal), DTYPES[a.dtype], a.bwd, a.reps,
                                        a.threads)
            print(f"torch_sdpa {'bwd' if a.bwd else 'fwd'} {a.dtype} B={a.b} H={a.h} Nq={a.n} Nk={nk} D={d} "
                  f"causal={causal}: wall {ms:9.2f} ms {flops / ms / 1e6:6.1f} GFLOPS | "
                  f"cpu/thread {cpu_ms:9.2f} ms {flops / cpu_ms / 1e6:6.1f} GFLOPS")


if __name__ == "__main__":
    main()
