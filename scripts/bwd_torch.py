"""Reference timings of the attention backward in torch (SDPA flash and cuDNN):
bf16, 16k tokens per batch, hidden 2048; times only out.backward(dout)."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "cudnn", torch.backends.cudnn.version())
for n, d, causal in [(8192, 128, False), (8192, 128, True), (8192, 64, False), (8192, 64, True),
                     (2048, 128, False), (2048, 128, True), (2048, 64, False), (2048, 64, True)]:
    b, h = 16384 // n, 2048 // d
    q, k, v, do = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for q_ in (q, k, v):
        q_.requires_grad_(True)
    flops = 2.5 * 4 * b * h * n * n * d / (2 if causal else 1)
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                times = []
                for i in range(13):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    out.backward(do, retain_graph=True)
                    e1.record()
                    torch.cuda.synchronize()
                    if i >= 3:
                        times.append(e0.elapsed_time(e1))
                    q.grad = k.grad = v.grad = None
            ms = sorted(times)[len(times) // 2]
            print(f"torch-{name} B={b} H={h} N={n} d={d} causal={int(causal)}: {ms:.3f} ms  {flops / ms / 1e9:.1f} TFLOPS")
        except Exception as e:  # noqa: BLE001
            print(f"torch-{name} N={n} d={d} causal={int(causal)}: failed: {e}")
