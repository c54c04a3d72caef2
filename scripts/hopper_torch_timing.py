"""torch SDPA (flash and cuDNN backends) on the shapes of scripts/hopper_timing.cpp,
same FLOP convention, median of 20 runs after warm-up (CUDA events)."""
import sys
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

quick = len(sys.argv) > 1 and sys.argv[1] == "quick"
print("card:", torch.cuda.get_device_name(0), "torch", torch.__version__, "cudnn", torch.backends.cudnn.version())
lens = [512, 8192] if quick else [512, 1024, 2048, 4096, 8192, 16384]
for d in (64, 128, 256):
    for n in lens:
        for causal in (0, 1):
            B, H = 16384 // n, 2048 // d
            q, k, v = (torch.randn(B, n, H, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
            flops = 4.0 * B * H * n * n * d / (2 if causal else 1)
            for name, be in (("torch-flash", SDPBackend.FLASH_ATTENTION), ("torch-cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel(be):
                        f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
                        for _ in range(3):
                            f()
                        ts = []
                        for _ in range(20):
                            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            e0.record(); f(); e1.record(); e1.synchronize()
                            ts.append(e0.elapsed_time(e1))
                    ts.sort()
                    med = ts[len(ts) // 2]
                    print(f"d={d:3d} N={n:5d} causal={causal} {name:11s}: {med:8.3f} ms {flops / med / 1e9:7.1f} TFLOPS")
                except Exception as ex:  # backend refused the shape
                    print(f"d={d:3d} N={n:5d} causal={causal} {name:11s}: {type(ex).__name__}: {str(ex)[:80]}")
