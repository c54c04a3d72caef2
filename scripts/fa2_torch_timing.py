#!/usr/bin/env python3
"""torch SDPA (flash and cudnn backends) on the shapes of scripts/fa2_timing.cpp,
timed the same way: 10 back-to-back calls between CUDA events, median of 7.
Prints "torch-flash d=128 N=8192 causal=1 ms=... tflops=..." lines."""
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

dims = [int(sys.argv[1])] if len(sys.argv) > 1 else [64, 128]
print("torch", torch.__version__, "card:", torch.cuda.get_device_name(), flush=True)
for d in dims:
    for n in [1024, 2048, 4096, 8192, 16384]:
        for causal in (0, 1):
            b, h = 16384 // n, 2048 // d
            # [b, n, h, d] storage seen as [b, h, n, d], like flash-attn's layout
            q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                       for _ in range(3))
            flops = 4.0 * b * h * n * n * d / (2 if causal else 1)
            for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel(be), torch.no_grad():
                        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
                        for _ in range(5):
                            fn()
                        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        per_call = []
                        for _ in range(7):
                            e0.record()
                            for _ in range(10):
                                fn()
                            e1.record()
                            torch.cuda.synchronize()
                            per_call.append(e0.elapsed_time(e1) / 10)
                    ms = statistics.median(per_call)
                    print(f"torch-{name} d={d} N={n} causal={causal} ms={ms:.4f} tflops={flops / ms / 1e9:.1f}",
                          flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"torch-{name} d={d} N={n} causal={causal} error: {str(e)[:200]}", flush=True)
            del q, k, v
