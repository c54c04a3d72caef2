"""float64 numpy oracle for the Python tests, and the tolerance rule of the C++ tests:

    err(kernel vs float64 reference) <= 2 * err(low-precision naive vs float64) + floor(dtype)

where the low-precision naive computation is the same math in float32 on the same
inputs, rounded to the input dtype (tests/common/test_util.h does the same in C++).
"""
import math

import numpy as np

FLOOR = {"float32": 2e-5, "float16": 2e-4, "bfloat16": 2e-3}


def dtype_name(x):
    return getattr(x.dtype, "name", str(x.dtype)).replace("torch.", "")


def visible(sq, sk, causal=False, window=(-1, -1)):
    """[sq, sk] bool mask: bottom-right aligned causal / sliding window (flash-attn >= 2.1)."""
    left, right = window
    if causal:
        right = 0
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    off = sk - sq
    m = np.ones((sq, sk), dtype=bool)
    if left >= 0:
        m &= j >= i + off - left
    if right >= 0:
        m &= j <= i + off + right
    return m


def _probs(q, k, scale, causal, window, softcap):
    b, sq, hq, d = q.shape
    g = hq // k.shape[2]
    k = np.repeat(k, g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    t = None
    if softcap > 0:
        t = np.tanh(s / softcap)
        s = softcap * t
    m = visible(sq, k.shape[1], causal, window)
    s = np.where(m, s, -np.inf)
    mx = s.max(-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0)
    p = np.exp(s - mx)
    l = p.sum(-1, keepdims=True)
    lse = np.where(l > 0, np.log(np.where(l > 0, l, 1)) + mx, -np.inf)[..., 0]
    p = p / np.where(l > 0, l, 1)
    return p, lse, t


def attention(q, k, v, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0, compute=np.float64):
    """-> out [b, sq, hq, d], lse [b, hq, sq] in `compute` precision."""
    q, k, v = (np.asarray(x).astype(compute) for x in (q, k, v))
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    p, lse, _ = _probs(q, k, compute(scale), causal, window, softcap)
    g = q.shape[2] // v.shape[2]
    out = np.einsum("bhqk,bkhd->bqhd", p, np.repeat(v, g, axis=2))
    return out, lse


def attention_backward(dout, q, k, v, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0,
                       compute=np.float64):
    """-> dq, dk, dv (dk, dv summed over each KV group) in `compute` precision."""
    dout, q, k, v = (np.asarray(x).astype(compute) for x in (dout, q, k, v))
    scale = compute(softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    kk, vv = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    p, _, t = _probs(q, k, scale, causal, window, softcap)
    out = np.einsum("bhqk,bkhd->bqhd", p, vv)
    dp = np.einsum("bqhd,bkhd->bhqk", dout, vv)
    delta = np.einsum("bqhd,bqhd->bhq", dout, out)[..., None]
    ds = p * (dp - delta)
    if t is not None:
        ds = ds * (1 - t * t)
    ds = ds * scale
    dq = np.einsum("bhqk,bkhd->bqhd", ds, kk)
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q).reshape(b, sk, hkv, g, d).sum(3)
    dv = np.einsum("bhqk,bqhd->bkhd", p, dout).reshape(b, sk, hkv, g, d).sum(3)
    return dq, dk, dv


def max_abs(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)))


def max_abs_lse(a, b):
    """Like max_abs, but -inf must meet -inf (fully masked rows)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ia, ib = np.isneginf(a), np.isneginf(b)
    if not np.array_equal(ia, ib) or np.isnan(a).any():
        return float("inf")
    return max_abs(a[~ia], b[~ib])


def assert_tolerance(name, got, ref64, lowprec, dtype):
    err, base = max_abs(got, ref64), max_abs(lowprec, ref64)
    bound = 2 * base + FLOOR[dtype]
    assert np.isfinite(np.asarray(got, dtype=np.float64)).all(), f"{name}: non-finite values"
    assert err <= bound, f"{name}: max abs err {err:.3g} > 2 * {base:.3g} + {FLOOR[dtype]:g} ({dtype})"


def round_to(x, dtype_name_):
    """Round float values to a numpy dtype by name (bfloat16 through ml_dtypes)."""
    if dtype_name_ == "bfloat16":
        import ml_dtypes

        return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float64)
    return np.asarray(x).astype(dtype_name_).astype(np.float64)
