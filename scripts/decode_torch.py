"""torch reference for the decode KV-read bandwidth (issue 8), same shapes as
scripts/decode_timing.cpp: F.scaled_dot_product_attention on q [B, Hq, 1, D],
k/v [B, Hkv, N, D] (enable_gqa=True), bf16, D = 128, per SDPA backend.
Bandwidth = bytes of K and V (B * N * Hkv * D * 2 * 2) / time; median of 9 samples of 20 calls."""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, reps=20, samples=9):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return sorted(times)[len(times) // 2]


def main():
    print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name())
    D = 128
    for B, Hq, Hkv, N in [(1, 32, 8, 32768), (1, 64, 8, 131072), (64, 32, 8, 2048)]:
        q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, N, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, Hkv, N, D, device="cuda", dtype=torch.bfloat16)
        nbytes = 2.0 * B * N * Hkv * D * 2
        for name, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                              ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
            for gqa in ("enable_gqa", "expanded"):
                try:
                    if gqa == "enable_gqa":
                        fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                    else:
                        ke = k.repeat_interleave(Hq // Hkv, dim=1)
                        ve = v.repeat_interleave(Hq // Hkv, dim=1)
                        fn = lambda: F.scaled_dot_product_attention(q, ke, ve)
                    with sdpa_kernel(backend):
                        ms = median_ms(fn)
                    print(f"torch {name} {gqa} B={B} Hq={Hq} Hkv={Hkv} N={N} ms={ms:.4f} "
                          f"kv_bandwidth={nbytes / ms / 1e6:.1f} GB/s")
                    break
                except Exception as e:  # backend refuses this input
                    print(f"torch {name} {gqa} B={B} Hq={Hq} Hkv={Hkv} N={N}: unavailable ({str(e).splitlines()[0][:100]})")
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
