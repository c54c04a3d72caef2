"""flashattn from torch: eager forward, autograd (vs torch's own float64 autograd),
torch.compile(fullgraph=True) through the custom ops, and CUDA parity with
F.scaled_dot_product_attention. Skipped as a whole, with the reason in the
summary, where torch is not installed."""
import math

import pytest

torch = pytest.importorskip("torch", reason="torch not installed")
import torch.nn.functional as F  # noqa: E402

import flashattn  # noqa: E402
import reference as ref  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and flashattn.cuda_compiled()
_skip_no_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU or flashattn built without CUDA")
# A hung kernel must not hang the suite: with pytest-timeout installed, a CUDA test
# running past 120 s dumps the stacks and ends the run (the thread method works
# while Python is blocked inside a CUDA call; the signal method would not).
_gpu_timeout = pytest.mark.timeout(120, method="thread")


def cuda_only(fn):
    return _skip_no_cuda(_gpu_timeout(fn))
FLOOR = {torch.float32: 2e-5, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def torch_attention(q, k, v, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0):
    """Plain torch math (autograd-able) in the inputs' dtype: [b, s, h, d] layout."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    mask = torch.as_tensor(ref.visible(sq, sk, causal, window), device=q.device)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse


def rand_qkv(b, sq, sk, hq, hkv, d, dtype=torch.float32, device="cpu", requires_grad=False, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    mk = lambda s, h: torch.randn(b, s, h, d, generator=gen, device=device, dtype=dtype)  # noqa: E731
    return [x.requires_grad_(requires_grad) for x in (mk(sq, hq), mk(sk, hkv), mk(sk, hkv))]


def maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def within(name, got, ref64, lowprec, dtype):
    """The tolerance rule; lowprec may be a list (the bound uses the largest of their errors)."""
    lows = lowprec if isinstance(lowprec, (list, tuple)) else [lowprec]
    err, base = maxdiff(got, ref64), max(maxdiff(lp, ref64) for lp in lows)
    assert torch.isfinite(got).all(), f"{name}: non-finite"
    assert err <= 2 * base + FLOOR[dtype], f"{name}: err {err:.3g} > 2 * {base:.3g} + {FLOOR[dtype]:g}"


def call_or_skip(fn, *args, **kw):
    """Kernels land rung by rung: a config no compiled kernel handles is skipped
    with the library's message; wrong numbers still fail."""
    try:
        return fn(*args, **kw)
    except (flashattn.UnsupportedError, flashattn.NotCompiledError) as e:
        pytest.skip(f"unsupported: {e}")


# --- CPU --------------------------------------------------------------------------
OPTS = [dict(), dict(causal=True), dict(window_size=(9, 2)), dict(softcap=5.0, causal=True),
        dict(softmax_scale=0.2)]


@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("shape", [(2, 37, 53, 4, 2, 64), (1, 64, 31, 2, 2, 32)])
def test_cpu_forward_backward_vs_float64_autograd(opts, shape):
    q, k, v = rand_qkv(*shape, requires_grad=True)
    out, lse = flashattn.flash_attn_func(q, k, v, return_lse=True, **opts)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.requires_grad
    assert lse.dtype == torch.float32 and lse.shape == (shape[0], shape[3], shape[1]) and not lse.requires_grad
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)

    o_opts = dict(opts)
    window = o_opts.pop("window_size", (-1, -1))
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    o64, l64 = torch_attention(*x64, window=window, **o_opts)
    g64 = torch.autograd.grad(o64, x64, dout.double())
    o32, _ = torch_attention(q, k, v, window=window, **o_opts)
    g32 = torch.autograd.grad(o32, (q, k, v), dout)
    within("out", out.detach(), o64, o32.detach(), torch.float32)
    fin = torch.isfinite(l64)
    assert torch.equal(torch.isfinite(lse), fin) and maxdiff(lse[fin], l64[fin]) < 1e-4
    for name, g, r, lp in zip(("dq", "dk", "dv"), (dq, dk, dv), g64, g32):
        within(name, g, r, lp, torch.float32)


def test_cpu_no_grad_and_return_types():
    q, k, v = rand_qkv(1, 20, 20, 2, 2, 16)
    out = flashattn.flash_attn_func(q, k, v)
    assert isinstance(out, torch.Tensor) and not out.requires_grad and out.shape == q.shape
    with torch.no_grad():
        q.requires_grad_()
        assert not flashattn.flash_attn_func(q, k, v).requires_grad


def test_cpu_strided_views_and_grad_flow():
    qkv = torch.randn(2, 33, 3, 4, 64, requires_grad=True)
    q, k, v = qkv.unbind(2)
    out = flashattn.flash_attn_func(q, k, v, causal=True)
    ref_out, _ = torch_attention(q.double(), k.double(), v.double(), causal=True)
    assert maxdiff(out, ref_out) < 1e-5
    out.sum().backward()  # expanded (stride-0) gradient
    g = qkv.grad.clone()
    qkv.grad = None
    ref_out.float().sum().backward()
    assert maxdiff(g, qkv.grad) < 1e-4


def test_cpu_fp16_bf16():
    for dt in (torch.float16, torch.bfloat16):
        q, k, v = rand_qkv(2, 45, 60, 4, 1, 64, dtype=dt)
        out = flashattn.flash_attn_func(q, k, v, causal=True)
        assert out.dtype == dt
        o64, _ = torch_attention(q.double(), k.double(), v.double(), causal=True)
        olp, _ = torch_attention(q.float(), k.float(), v.float(), causal=True)
        within(str(dt), out, o64, olp.to(dt), dt)


def test_cpu_softmax():
    x = torch.randn(5, 77) * 4
    for variant in ("naive", "safe", "online"):
        y = flashattn.softmax(x, variant=variant)
        assert maxdiff(y, torch.softmax(x.double(), -1)) < 1e-6
    with pytest.raises(ValueError, match="last dimension"):
        flashattn.softmax(x, dim=0)


def test_cpu_errors():
    q, k, v = rand_qkv(1, 8, 8, 2, 2, 64)
    with pytest.raises(TypeError, match="dtype"):
        flashattn.flash_attn_func(q, k.half(), v)
    with pytest.raises(TypeError, match="dtype"):
        flashattn.flash_attn_func(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="contiguous"):
        flashattn.flash_attn_func(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
    with pytest.raises(ValueError, match="4 dimensions"):
        flashattn.flash_attn_func(q[0], k, v)
    with pytest.raises(flashattn.UnsupportedError):
        flashattn.flash_attn_func(q[..., :20], k[..., :20], v[..., :20])
    with pytest.raises(TypeError, match="torch.Tensor"):
        flashattn.flash_attn_func(q, k.numpy(), v)


def test_compile_fullgraph_cpu():
    torch._dynamo.reset()

    def block(q, k, v):
        return flashattn.flash_attn_func(q * 1.0, k, v, causal=True).sum(dim=-1)

    q, k, v = rand_qkv(2, 24, 24, 4, 2, 32, requires_grad=True)
    eager = block(q, k, v)
    ge = torch.autograd.grad(eager.sum(), (q, k, v))
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(q, k, v)
    gc = torch.autograd.grad(out.sum(), (q, k, v))
    assert maxdiff(out, eager) < 1e-5
    for a, b in zip(gc, ge):
        assert maxdiff(a, b) < 1e-5


def test_opcheck():
    q, k, v = rand_qkv(1, 16, 16, 2, 2, 32, requires_grad=True)
    torch.library.opcheck(torch.ops.flashattn.fwd.default, (q, k, v, 0.0, True, -1, -1, 0.0, False, 0))


# --- CUDA ---------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk,hq,hkv", [(128, 128, 4, 4), (97, 97, 6, 2), (1025, 1025, 2, 1), (113, 257, 4, 4)])
def test_cuda_vs_sdpa(dtype, d, causal, sq, sk, hq, hkv):
    if causal and sq != sk:
        pytest.skip("SDPA's causal mask is top-left aligned; compared against our float64 math elsewhere")
    q, k, v = rand_qkv(2, sq, sk, hq, hkv, d, dtype=dtype, device="cuda", seed=sq + d)
    out, lse = call_or_skip(flashattn.flash_attn_func, q, k, v, causal=causal, return_lse=True)
    torch.cuda.synchronize()
    sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=causal, enable_gqa=hq != hkv).transpose(1, 2)
    o64, l64 = torch_attention(q.double(), k.double(), v.double(), causal=causal)
    naive, _ = torch_attention(q, k, v, causal=causal)
    within("out vs fp64 (bound: SDPA's / naive low-precision error)", out, o64, [sdpa, naive], dtype)
    assert maxdiff(lse, l64) < 1e-3


@cuda_only
@pytest.mark.parametrize("opts", [dict(window_size=(32, 8)), dict(softcap=10.0, causal=True), dict(causal=True)])
@pytest.mark.parametrize("sq,sk", [(200, 333), (333, 200)])
def test_cuda_masks_vs_float64(opts, sq, sk):
    dtype = torch.bfloat16
    q, k, v = rand_qkv(1, sq, sk, 4, 2, 64, dtype=dtype, device="cuda", seed=sq)
    out, lse = call_or_skip(flashattn.flash_attn_func, q, k, v, return_lse=True, **opts)
    o_opts = dict(opts)
    window = o_opts.pop("window_size", (-1, -1))
    o64, l64 = torch_attention(q.double(), k.double(), v.double(), window=window, **o_opts)
    olp, _ = torch_attention(q, k, v, window=window, **o_opts)
    within("out", out, o64, olp, dtype)
    fin = torch.isfinite(l64)
    assert torch.equal(torch.isfinite(lse), fin) and maxdiff(lse[fin], l64[fin]) < 1e-3


@cuda_only
@pytest.mark.parametrize("kernel", ["auto", "naive", "fa1", "fa2", "hopper"])
def test_cuda_kernels(kernel):
    q, k, v = rand_qkv(2, 300, 300, 4, 4, 64, dtype=torch.float16, device="cuda", seed=7)
    out = call_or_skip(flashattn.flash_attn_func, q, k, v, causal=True, kernel=kernel)
    o64, _ = torch_attention(q.double(), k.double(), v.double(), causal=True)
    olp, _ = torch_attention(q, k, v, causal=True)
    within(kernel, out, o64, olp, torch.float16)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_backward_vs_float64(dtype, causal):
    q, k, v = rand_qkv(2, 257, 257, 4, 2, 64, dtype=dtype, device="cuda", requires_grad=True, seed=3)
    out = call_or_skip(flashattn.flash_attn_func, q, k, v, causal=causal)
    dout = torch.randn_like(out)
    grads = call_or_skip(torch.autograd.grad, out, (q, k, v), dout)
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    o64, _ = torch_attention(*x64, causal=causal)
    g64 = torch.autograd.grad(o64, x64, dout.double())
    xs = [t.detach().requires_grad_() for t in (q, k, v)]
    sd = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in xs), is_causal=causal,
                                        enable_gqa=True).transpose(1, 2)
    gs = torch.autograd.grad(sd, xs, dout)
    xn = [t.detach().requires_grad_() for t in (q, k, v)]
    gn = torch.autograd.grad(torch_attention(*xn, causal=causal)[0], xn, dout)
    for name, g, r, s, n in zip(("dq", "dk", "dv"), grads, g64, gs, gn):
        within(name + " (bound: SDPA's / naive low-precision error)", g, r, [s, n], dtype)


@cuda_only
def test_cuda_stream_and_strides():
    qkv = torch.randn(2, 129, 3, 4, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = call_or_skip(flashattn.flash_attn_func, q, k, v, causal=True)
    side.synchronize()
    o64, _ = torch_attention(q.double(), k.double(), v.double(), causal=True)
    olp, _ = torch_attention(q, k, v, causal=True)
    within("strided, side stream", out, o64, olp, torch.bfloat16)


@cuda_only
def test_cuda_errors():
    q, k, v = rand_qkv(1, 16, 16, 2, 2, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="device"):
        flashattn.flash_attn_func(q, k.cpu(), v)
    with pytest.raises(ValueError, match="runs on the CPU"):
        flashattn.flash_attn_func(q, k, v, kernel="cpu_flash")
    odd = torch.randn(1, 16, 2, 72, device="cuda", dtype=torch.float16)[..., :68]
    with pytest.raises(ValueError):
        flashattn.flash_attn_func(odd, odd, odd)


@cuda_only
def test_cuda_compile_fullgraph():
    torch._dynamo.reset()
    q, k, v = rand_qkv(2, 256, 256, 4, 4, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    call_or_skip(flashattn.flash_attn_func, q.detach(), k.detach(), v.detach())
    f = lambda q, k, v: flashattn.flash_attn_func(q, k, v, causal=True)  # noqa: E731
    eager = f(q, k, v)
    ge = call_or_skip(torch.autograd.grad, eager.float().square().sum(), (q, k, v))
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(q, k, v)
    gc = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    assert torch.equal(out, eager)
    for a, b in zip(gc, ge):
        assert maxdiff(a, b) < 1e-2


@cuda_only
def test_cuda_softmax():
    x = torch.randn(33, 1000, device="cuda") * 5
    for variant in ("safe", "online"):
        y = call_or_skip(flashattn.softmax, x, variant=variant)
        assert maxdiff(y, torch.softmax(x.double(), -1)) < 1e-5
