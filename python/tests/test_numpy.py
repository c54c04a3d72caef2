"""flashattn from numpy on the CPU: forward/backward vs the float64 oracle, masks,
GQA, softcap, fp16 (bf16 with ml_dtypes), strided views, errors, softmax variants."""
import importlib.util

import numpy as np
import pytest

import flashattn
import reference as ref

CPU_KERNELS = ["auto", "reference", "cpu_flash"]


def qkv(rng, b, sq, sk, hq, hkv, d, dtype=np.float32):
    # Poison-free random normal inputs; fresh per test.
    mk = lambda s, h: rng.standard_normal((b, s, h, d)).astype(dtype)  # noqa: E731
    return mk(sq, hq), mk(sk, hkv), mk(sk, hkv)


def check_forward(q, k, v, kernel="auto", **opts):
    out, lse = flashattn.flash_attn_func(q, k, v, return_lse=True, kernel=kernel, **opts)
    dt = ref.dtype_name(q)
    window = opts.pop("window_size", (-1, -1))
    o64, l64 = ref.attention(q, k, v, window=window, **opts)
    o32, l32 = ref.attention(q, k, v, window=window, compute=np.float32, **opts)
    assert type(out) is np.ndarray and out.dtype == q.dtype and out.shape == q.shape[:3] + (v.shape[3],)
    assert lse.dtype == np.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    ref.assert_tolerance("out", out, o64, ref.round_to(o32, dt), dt)
    assert ref.max_abs_lse(lse, l64) <= 2 * ref.max_abs_lse(l32, l64) + ref.FLOOR["float32"] * 10, "lse"
    return out, lse


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("b,sq,sk,hq,hkv,d", [(1, 1, 1, 1, 1, 8), (2, 97, 113, 4, 4, 64), (2, 113, 97, 6, 2, 40),
                                              (1, 65, 65, 2, 1, 128)])
def test_forward_shapes(rng, kernel, b, sq, sk, hq, hkv, d):
    check_forward(*qkv(rng, b, sq, sk, hq, hkv, d), kernel=kernel)


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("opts", [dict(causal=True), dict(window_size=(16, 0)), dict(window_size=(5, 9)),
                                  dict(softcap=3.0), dict(causal=True, softcap=2.0, softmax_scale=0.3),
                                  dict(softmax_scale=0.05)])
@pytest.mark.parametrize("sq,sk", [(70, 70), (37, 91), (91, 37)])
def test_forward_masks(rng, kernel, opts, sq, sk):
    check_forward(*qkv(rng, 2, sq, sk, 4, 2, 64), kernel=kernel, **dict(opts))


def test_fully_masked_rows(rng):
    # seqlen_q > seqlen_k with causal: the first sq - sk query rows see no key.
    q, k, v = qkv(rng, 1, 40, 16, 2, 2, 32)
    out, lse = check_forward(q, k, v, causal=True)
    assert np.all(np.isneginf(lse[:, :, :24])) and np.all(out[:, :24] == 0)
    assert np.all(np.isfinite(lse[:, :, 24:]))


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_fp16(rng, kernel):
    check_forward(*qkv(rng, 2, 77, 130, 4, 1, 64, np.float16), kernel=kernel, causal=True)


@pytest.mark.skipif(importlib.util.find_spec("ml_dtypes") is None, reason="ml_dtypes not installed (numpy bf16)")
def test_bf16_ml_dtypes(rng):
    import ml_dtypes

    q, k, v = (x.astype(ml_dtypes.bfloat16) for x in qkv(rng, 1, 50, 60, 2, 2, 64))
    out = flashattn.flash_attn_func(q, k, v, causal=True)
    assert out.dtype == ml_dtypes.bfloat16
    o64, _ = ref.attention(q, k, v, causal=True)
    o32, _ = ref.attention(q, k, v, causal=True, compute=np.float32)
    ref.assert_tolerance("out", out, o64, ref.round_to(o32, "bfloat16"), "bfloat16")


def test_strided_views(rng):
    # q, k, v as slices of one packed [b, s, 3, h, d] tensor; plus batch/head-sliced views.
    packed = rng.standard_normal((3, 45, 3, 4, 64)).astype(np.float32)
    q, k, v = packed[:, :, 0], packed[:, :, 1], packed[:, :, 2]
    assert not q.flags.c_contiguous
    check_forward(q, k, v, causal=True)
    big = rng.standard_normal((4, 45, 6, 64)).astype(np.float32)
    check_forward(big[::2, :, 1:5], big[1::2, 3:, ::3], big[::2, 3:, 2:4])


def test_read_only_inputs(rng):
    q, k, v = qkv(rng, 1, 20, 20, 2, 2, 16)
    for x in (q, k, v):
        x.setflags(write=False)
    check_forward(q, k, v)


@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(7, 3), softcap=4.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_backward(rng, opts, dtype):
    q, k, v = qkv(rng, 2, 57, 71, 4, 2, 64, dtype)
    dout = rng.standard_normal(q.shape).astype(dtype)
    out, lse = flashattn.flash_attn_func(q, k, v, return_lse=True, **opts)
    grads = flashattn.flash_attn_backward(dout, q, k, v, out, lse, **opts)
    window = opts.pop("window_size", (-1, -1))
    g64 = ref.attention_backward(dout, q, k, v, window=window, **opts)
    g32 = ref.attention_backward(dout, q, k, v, window=window, compute=np.float32, **opts)
    dt = ref.dtype_name(q)
    for name, g, r64, r32, like in zip(("dq", "dk", "dv"), grads, g64, g32, (q, k, v)):
        assert g.shape == like.shape and g.dtype == like.dtype
        ref.assert_tolerance(name, g, r64, ref.round_to(r32, dt), dt)


# --- errors: a clear ValueError / TypeError, never a crash ----------------------
def test_errors(rng):
    q, k, v = qkv(rng, 2, 16, 16, 4, 2, 64)
    with pytest.raises(ValueError, match="4 dimensions"):
        flashattn.flash_attn_func(q[0], k, v)
    with pytest.raises(TypeError, match="dtype"):
        flashattn.flash_attn_func(q, k.astype(np.float16), v)
    with pytest.raises(TypeError, match="dtype"):
        flashattn.flash_attn_func(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    with pytest.raises(TypeError, match="dtype"):
        flashattn.flash_attn_func(q.astype(np.int32), k.astype(np.int32), v.astype(np.int32))
    with pytest.raises(ValueError, match="contiguous"):
        flashattn.flash_attn_func(q[..., ::2], k[..., ::2], v[..., ::2])
    with pytest.raises(flashattn.UnsupportedError, match="head_dim 12"):
        flashattn.flash_attn_func(q[..., :12], k[..., :12], v[..., :12])
    big = rng.standard_normal((1, 4, 1, 264)).astype(np.float32)
    with pytest.raises(ValueError, match="head_dim 264"):
        flashattn.flash_attn_func(big, big, big)
    with pytest.raises(ValueError, match="multiple of heads_kv"):
        flashattn.flash_attn_func(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="share seqlen_k"):
        flashattn.flash_attn_func(q, k, v[:, :8])
    with pytest.raises(ValueError, match="batch"):
        flashattn.flash_attn_func(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="head_dim mismatch"):
        flashattn.flash_attn_func(q, k[..., :32], v)
    with pytest.raises(ValueError, match="strides must be >= 0"):
        flashattn.flash_attn_func(q[:, ::-1], k, v)
    with pytest.raises(ValueError, match="window"):
        flashattn.flash_attn_func(q, k, v, window_size=(-2, 0))
    with pytest.raises(ValueError, match="window_size must be a pair"):
        flashattn.flash_attn_func(q, k, v, window_size=3)
    with pytest.raises(ValueError, match="softcap"):
        flashattn.flash_attn_func(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match="softmax_scale"):
        flashattn.flash_attn_func(q, k, v, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="unknown kernel"):
        flashattn.flash_attn_func(q, k, v, kernel="fa9")
    with pytest.raises(ValueError, match="runs on CUDA"):
        flashattn.flash_attn_func(q, k, v, kernel="fa2")
    with pytest.raises(TypeError, match="must be an array"):
        flashattn.flash_attn_func(q.tolist(), k, v)
    empty = np.zeros((2, 0, 4, 64), np.float32)
    with pytest.raises(ValueError, match="seqlen_q"):
        flashattn.flash_attn_func(empty, k, v)


def test_error_types_are_value_errors():
    assert issubclass(flashattn.UnsupportedError, ValueError)
    assert issubclass(flashattn.NotCompiledError, RuntimeError)
    assert issubclass(flashattn.CudaError, RuntimeError)


def test_backward_errors(rng):
    q, k, v = qkv(rng, 1, 8, 8, 2, 2, 16)
    out, lse = flashattn.flash_attn_func(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="lse"):
        flashattn.flash_attn_backward(q, q, k, v, out, lse[:, :1])
    with pytest.raises(TypeError, match="lse must be float32"):
        flashattn.flash_attn_backward(q, q, k, v, out, lse.astype(np.float16))
    with pytest.raises(ValueError, match="dout"):
        flashattn.flash_attn_backward(q[:, :4], q, k, v, out, lse)


# --- softmax ----------------------------------------------------------------------
def softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("variant", ["naive", "safe", "online"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1000), (3, 5, 33), (257,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_softmax(rng, variant, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype) * 3
    y = flashattn.softmax(x, variant=variant)
    assert type(y) is np.ndarray and y.dtype == x.dtype and y.shape == x.shape
    r64 = softmax64(x)
    r32 = softmax64(x.astype(np.float32)).astype(np.float32)
    dt = ref.dtype_name(x)
    ref.assert_tolerance("softmax", y, r64, ref.round_to(r32, dt), dt)


def test_softmax_strided_and_large(rng):
    wide = rng.standard_normal((6, 300)).astype(np.float32) * 1000  # exp overflows without the max
    x = wide[:, 10:250]  # row stride 300 != cols 240
    for variant in ("safe", "online"):
        y = flashattn.softmax(x, variant=variant)
        assert np.isfinite(y).all() and ref.max_abs(y, softmax64(x)) < 1e-5
    naive = flashattn.softmax(x, variant="naive")
    assert not np.isfinite(naive).all(), "naive softmax should overflow on inputs ~1000 (that is its lesson)"
    z = rng.standard_normal((4, 6, 8)).astype(np.float32)[:, ::2]  # foldable: rows stride 16
    assert ref.max_abs(flashattn.softmax(z), softmax64(z)) < 1e-6
    y = flashattn.softmax(z, dim=2)
    assert ref.max_abs(y, softmax64(z)) < 1e-6


def test_softmax_errors(rng):
    x = rng.standard_normal((4, 6, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="last dimension"):
        flashattn.softmax(x, dim=0)
    with pytest.raises(ValueError, match="last dimension"):
        flashattn.softmax(x, dim=1)
    with pytest.raises(ValueError, match="unknown softmax variant"):
        flashattn.softmax(x, variant="fast")
    with pytest.raises(ValueError, match="contiguous"):
        flashattn.softmax(x[..., ::2])
    with pytest.raises(ValueError, match="folded"):
        flashattn.softmax(x[:, :3])
    with pytest.raises(TypeError, match="dtype"):
        flashattn.softmax(x.astype(np.float64))
    with pytest.raises(ValueError, match="at least one dimension"):
        flashattn.softmax(np.float32(1.0) * np.ones((), np.float32))


def test_build_facts():
    assert flashattn.__version__
    assert isinstance(flashattn.cuda_compiled(), bool)
    assert flashattn.cuda_device_count() >= 0
