#!/usr/bin/env python3
"""torch's numbers for flashattn-bench, run by it in the same benchmark run.

usage: torch_sdpa.py REQUEST.json

The request is {"cases": [...]}; each case is one table row:
  {"id", "op": "attn", "device": "cpu"|"cuda", "backend": "default"|"flash"|"cudnn"|"math",
   "dtype": "fp32"|"fp16"|"bf16", "b", "hq", "hkv", "nq", "nk", "d", "causal", "bwd", "reps"}
  {"id", "op": "softmax", "device", "dtype", "rows", "cols", "reps"}
Prints one JSON object per line on stdout: {"id": i, "ms": median, "reps": n} or
{"id": i, "error": "..."}; a first line {"torch": version, "device": name}; or
{"fatal": "..."} when torch cannot be imported. Progress goes to stderr.

Tensors are laid out like flashattn's, [batch, seqlen, heads, dim], and handed
to SDPA as transposed views ([batch, heads, seqlen, dim]), as flash-attn does.
Inputs are random normal; GPU times come from CUDA events (warm-up, median);
with several input sets when they are small enough for L2 to matter.
"""
import json
import statistics
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def clean(msg):
    return " ".join(str(msg).split())[:300]


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)["cases"]
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 - any import failure means "no torch"
        emit({"fatal": f"torch not importable ({clean(e)})"})
        return 0

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    dev_name = "cpu"
    if any(c["device"] == "cuda" for c in cases):
        if not torch.cuda.is_available():
            emit({"fatal": "torch sees no CUDA device"})
            return 0
        dev_name = torch.cuda.get_device_name()
    emit({"torch": torch.__version__, "device": dev_name})

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                    "math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION}
    except Exception:  # noqa: BLE001 - old torch: default backend only
        sdpa_kernel, backends = None, {}

    import contextlib

    def time_fn(fn, device, reps, sets):
        """Median ms of fn(i % sets) after warm-up: on CUDA ~200 ms of back-to-back
        calls (2..200, as bench_gpu.cpp's time_gpu does), so the clocks have settled."""
        warm = 3
        if device == "cuda":
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(0)
            torch.cuda.synchronize()
            first_ms = (time.perf_counter() - t0) * 1e3
            warm = min(200, max(2, int(200.0 / max(first_ms, 1e-3))))
        for i in range(warm):
            fn(i % sets)
        if device == "cuda":
            torch.cuda.synchronize()
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            stops = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for i in range(reps):
                starts[i].record()
                fn(i % sets)
                stops[i].record()
            torch.cuda.synchronize()
            return statistics.median(s.elapsed_time(e) for s, e in zip(starts, stops))
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i % sets)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    for n, c in enumerate(cases):
        cid = c["id"]
        device = c["device"]
        dtype = dtypes[c["dtype"]]
        reps = max(int(c.get("reps", 20)), 1)
        print(f"[torch {n + 1}/{len(cases)}] {c['op']} {c.get('backend', '')} {c['dtype']}", file=sys.stderr,
              flush=True)
        try:
            if c["op"] == "softmax":
                rows, cols = c["rows"], c["cols"]
                nbytes = rows * cols * dtype.itemsize
                sets = max(1, min(4, (128 << 20) // max(nbytes, 1))) if device == "cuda" else 1
                xs = [torch.randn(rows, cols, device=device, dtype=dtype) for _ in range(sets)]
                ms = time_fn(lambda i: torch.softmax(xs[i], dim=-1), device, reps, sets)
                emit({"id": cid, "ms": ms, "reps": reps})
                del xs
                continue

            b, hq, hkv, nq, nk, d = (c[k] for k in ("b", "hq", "hkv", "nq", "nk", "d"))
            causal, bwd = bool(c["causal"]), bool(c["bwd"])
            if causal and nq != nk:
                raise RuntimeError("torch's is_causal is top-left aligned; flashattn's bottom-right "
                                   "only matches it when Nq == Nk")
            backend = c.get("backend", "default")
            if backend != "default" and backend not in backends:
                raise RuntimeError(f"backend {backend} not available in torch {torch.__version__}")
            ctx = (lambda: sdpa_kernel(backends[backend])) if backend != "default" else contextlib.nullcontext
            set_bytes = (2 * b * nq * hq * d + 2 * b * nk * hkv * d) * dtype.itemsize
            sets = max(1, min(4, (128 << 20) // max(set_bytes, 1))) if device == "cuda" else 1
            extra = {"enable_gqa": True} if hq != hkv else {}

            def make(seq, heads):
                t = torch.randn(b, seq, heads, d, device=device, dtype=dtype)
                return t.transpose(1, 2).requires_grad_(bwd)  # [b, heads, seq, d] view of BSHD

            inputs = [(make(nq, hq), make(nk, hkv), make(nk, hkv)) for _ in range(sets)]
            # The backend context is entered once, outside the timed calls.
            with ctx():
                if not bwd:
                    def fwd(i):
                        q, k, v = inputs[i]
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)
                    with torch.no_grad():
                        ms = time_fn(fwd, device, reps, sets)
                else:
                    outs = []
                    for q, k, v in inputs:
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)
                        outs.append((o, torch.randn_like(o)))

                    def bwd_fn(i):
                        q, k, v = inputs[i]
                        o, do = outs[i]
                        return torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
                    ms = time_fn(bwd_fn, device, reps, sets)
                    del outs
            emit({"id": cid, "ms": ms, "reps": reps})
            del inputs
        except Exception as e:  # noqa: BLE001 - a refusal is a table entry, not a crash
            emit({"id": cid, "error": f"torch: {clean(e)}"})
        if device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
