"""What the Python layer costs (run on the GPU machine; CPU-only numbers otherwise).

1. Per-call overhead on a tiny problem, many calls, wall clock per call:
     api   = flashattn.flash_attn_func(q, k, v)            (torch; allocates out)
     dlpack= flashattn._C.fwd(capsules..., out preallocated) (binding + DLPack import)
     raw   = flashattn._C.fwd_raw(addresses...)             (the nb-bound C++ entry, no DLPack)
   overhead = api - raw (target < 10 us).
2. End-to-end forward at N = 4096 on the GPU: the Python API timed with CUDA events
   vs the same kernel timed in C++ (_C.time_fwd_raw_cuda), and torch SDPA (same run).

    python3 python/bench/overhead.py [--n 4096] [--batch 2] [--heads 16] [--dim 128]
"""
import argparse
import statistics
import time

import flashattn
from flashattn import _C


def per_call_us(fn, calls, sync=None, repeats=5):
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        if sync:
            sync()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def tiny_overhead(torch, device, calls):
    dt = torch.float16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(1, 16, 1, 64, device=device, dtype=dt) for _ in range(3))
    out = torch.empty_like(q)
    sync = torch.cuda.synchronize if device == "cuda" else None
    cap = torch._C._to_dlpack
    from flashattn._torch import _stream

    s = _stream(q)
    dtype_id = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dt]
    dev_id, dev_index = (1, q.device.index) if device == "cuda" else (0, -1)
    addrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), 0)
    fns = {
        "api  flash_attn_func": lambda: flashattn.flash_attn_func(q, k, v),
        "dlpk _C.fwd(capsules)": lambda: _C.fwd(cap(q), cap(k), cap(v), cap(out), None, 0.0, False, -1, -1, 0.0, 0,
                                                s, 0, -1),
        "raw  _C.fwd_raw(addrs)": lambda: _C.fwd_raw(*addrs, 1, 16, 16, 1, 1, 64, dtype_id, dev_id, dev_index, False,
                                                     s),
    }
    if device == "cuda":
        import torch.nn.functional as F

        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        fns["torch SDPA (ref)"] = lambda: F.scaled_dot_product_attention(qt, kt, vt)
    for fn in fns.values():  # warm up
        for _ in range(100):
            fn()
    res = {name: per_call_us(fn, calls, sync) for name, fn in fns.items()}
    print(f"\n[{device}] tiny problem q=k=v [1,16,1,64] {dt}, {calls} calls, best of 5, us/call:")
    for name, us in res.items():
        print(f"  {name:28s} {us:8.2f}")
    api, dl, raw = (res[n] for n in list(fns)[:3])
    print(f"  => wrapper overhead api - raw = {api - raw:.2f} us (DLPack import {dl - raw:.2f} us, "
          f"Python + output alloc {api - dl:.2f} us)", flush=True)
    return api - raw


def e2e(torch, n, batch, heads, dim, causal, kernel, reps=20, rounds=7):
    import torch.nn.functional as F

    dt = torch.bfloat16
    q, k, v = (torch.randn(batch, n, heads, dim, device="cuda", dtype=dt) for _ in range(3))
    out = torch.empty_like(q)
    from flashattn._torch import _stream

    print(f"  kernel={kernel} causal={causal} ...", flush=True)
    kid = flashattn._ops.kernel_id(kernel)
    try:
        flashattn.flash_attn_func(q, k, v, causal=causal, kernel=kernel)
        torch.cuda.synchronize()
    except flashattn.UnsupportedError as e:
        print(f"  e2e skipped: unsupported: {e}")
        return
    s = _stream(q)
    cpp = _C.time_fwd_raw_cuda(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), 0, batch, n, n, heads,
                               heads, dim, 2, q.device.index, causal, s, 5, reps, rounds, kid)

    def events(fn):
        # Same method as the C++ side: rounds of `reps` back-to-back calls between two events.
        for _ in range(5):
            fn()
        per_call = []
        for _ in range(rounds):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                fn()
            b.record()
            b.synchronize()
            per_call.append(a.elapsed_time(b) / reps)
        return statistics.median(per_call)

    py = events(lambda: flashattn.flash_attn_func(q, k, v, causal=causal, kernel=kernel))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    sd = events(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
    flops = 4 * batch * heads * n * n * dim / (2 if causal else 1)
    c = statistics.median(cpp)
    tf = lambda ms: flops / ms / 1e9  # noqa: E731
    print(f"  {kernel:5s} B={batch} H={heads} N={n} D={dim} bf16 causal={causal}: C++ {c:.3f} ms ({tf(c):.0f} TFLOPS) | "
          f"Python API {py:.3f} ms ({tf(py):.0f} TFLOPS) | diff {100 * (py - c) / c:+.2f}% | "
          f"torch SDPA {sd:.3f} ms ({tf(sd):.0f} TFLOPS)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--calls", type=int, default=20000)
    a = ap.parse_args()
    import torch

    print(f"flashattn {flashattn.__version__}, torch {torch.__version__}, CUDA compiled {flashattn.cuda_compiled()}")
    tiny_overhead(torch, "cpu", a.calls // 4)
    if torch.cuda.is_available() and flashattn.cuda_compiled():
        print(f"GPU: {torch.cuda.get_device_name()}")
        tiny_overhead(torch, "cuda", a.calls)
        print("\n[cuda] end-to-end forward, CUDA events around 20 back-to-back calls, median of 7 rounds:", flush=True)
        for kernel in ("fa2", "auto"):
            for causal in (False, True):
                e2e(torch, a.n, a.batch, a.heads, a.dim, causal, kernel)


if __name__ == "__main__":
    main()
