# torch baselines for scripts/ladder_timing.cpp: torch.softmax (GB/s, bytes read
# + written once) and SDPA (TFLOPS, 4 B H N^2 D, halved when causal) on the same shapes.
import torch
import torch.nn.functional as F


def time_ms(f, reps):
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(9):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / reps)
    ts.sort()
    return ts[len(ts) // 2]


dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
print("device", torch.cuda.get_device_name())
for name, rows, cols in [("float32", 32768, 4096), ("bfloat16", 32768, 4096), ("float16", 65536, 1024),
                         ("float32", 4096, 16384), ("bfloat16", 4096, 32768), ("float32", 64, 1 << 20),
                         ("float32", 131072, 512), ("float32", 2048, 65536)]:
    x = torch.randn(rows, cols, device="cuda", dtype=dt[name])
    ms = time_ms(lambda: torch.softmax(x, dim=-1), 10)
    print(f"torch_softmax dtype={name} rows={rows} cols={cols} us={ms * 1e3:.1f} "
          f"GBs={2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9:.0f}")
    del x

for name, b, h, n, d, causal in [("float16", 4, 16, 2048, 64, False), ("float16", 4, 16, 2048, 128, False),
                                 ("float16", 4, 16, 2048, 128, True), ("bfloat16", 1, 16, 4096, 128, False),
                                 ("float32", 4, 16, 2048, 64, False), ("float16", 2, 8, 2048, 256, False)]:
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dt[name]) for _ in range(3))
    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), 3)
    fl = 4 * b * h * n * n * d / (2 if causal else 1)
    print(f"torch_sdpa dtype={name} b={b} h={h} n={n} d={d} causal={int(causal)} ms={ms:.3f} "
          f"tflops={fl / (ms * 1e-3) / 1e12:.2f}")
