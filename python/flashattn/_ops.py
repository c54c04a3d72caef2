"""flash_attn_func and softmax for every array library except torch
(torch goes through flashattn/_torch.py, which adds autograd and torch.compile)."""
from __future__ import annotations

from . import _C
from ._arrays import Adapter, call_jax, library_of
from ._errors import raise_status

KERNELS = {"auto": 0, "reference": 1, "cpu_flash": 2, "naive": 3, "fa1": 4, "fa2": 5, "hopper": 6}
SOFTMAX_VARIANTS = {"naive": 0, "safe": 1, "online": 2}


def kernel_id(kernel: str) -> int:
    try:
        return KERNELS[kernel]
    except (KeyError, TypeError):
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}") from None


def check_rank4(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        shape = getattr(x, "shape", None)
        if shape is None:
            raise TypeError(f"{name} must be an array (torch, numpy, CuPy, ... anything with DLPack), "
                            f"got {type(x).__name__}")
        if len(shape) != 4:
            raise ValueError(f"{name} must have 4 dimensions [batch, seqlen, heads, head_dim], "
                             f"got shape {list(shape)}")


def window_pair(window_size):
    try:
        left, right = window_size
        return int(left), int(right)
    except (TypeError, ValueError):
        raise ValueError(f"window_size must be a pair (left, right), -1 = unbounded; got {window_size!r}") from None


def attention(q, k, v, softmax_scale, causal, window_size, softcap, return_lse, kernel):
    check_rank4(q, k, v)
    lib = library_of(q)
    if lib == "jax":
        import flashattn

        return call_jax(lambda q_, k_, v_: flashattn.flash_attn_func(q_, k_, v_, softmax_scale, causal, window_size,
                                                                     softcap, False, return_lse, kernel=kernel),
                        (q, k, v))
    left, right = window_pair(window_size)
    ad = Adapter(lib, q)
    b, sq, hq, _ = q.shape
    out = ad.empty((b, sq, hq, v.shape[3]), q)
    lse = ad.empty((b, hq, sq), q, float32=True) if return_lse else None
    r = _C.fwd(ad.export(q), ad.export(k), ad.export(v), ad.export(out), lse,
               0.0 if softmax_scale is None else float(softmax_scale), bool(causal), left, right, float(softcap),
               kernel_id(kernel), ad.stream(q), 0, ad.dtype_override)
    if r is not None:
        raise_status(r)
    return (out, lse) if return_lse else out


def attention_backward(dout, q, k, v, out, lse, softmax_scale, causal, window_size, softcap, deterministic, kernel):
    check_rank4(q, k, v)
    left, right = window_pair(window_size)
    ad = Adapter(library_of(q), q)
    dq, dk, dv = ad.empty(q.shape, q), ad.empty(k.shape, q), ad.empty(v.shape, q)
    e = ad.export
    r = _C.bwd(e(dout), e(q), e(k), e(v), e(out), lse, e(dq), e(dk), e(dv),
               0.0 if softmax_scale is None else float(softmax_scale), bool(causal), left, right, float(softcap),
               bool(deterministic), kernel_id(kernel), ad.stream(q), 0, ad.dtype_override)
    if r is not None:
        raise_status(r)
    return dq, dk, dv


def variant_id(variant: str) -> int:
    try:
        return SOFTMAX_VARIANTS[variant]
    except (KeyError, TypeError):
        raise ValueError(f"unknown softmax variant {variant!r}; choose naive, safe or online") from None


def check_softmax_dim(x, dim):
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"x must be an array, got {type(x).__name__}")
    nd = len(shape)
    if nd == 0:
        raise ValueError("softmax needs at least one dimension")
    if dim not in (-1, nd - 1):
        raise ValueError(f"flashattn.softmax works over the last dimension only (dim=-1 or {nd - 1}), got dim={dim}; "
                         "move that dimension last first")


def softmax(x, dim, variant):
    check_softmax_dim(x, dim)
    lib = library_of(x)
    if lib == "jax":
        import flashattn

        return call_jax(lambda x_: flashattn.softmax(x_, dim, variant), (x,))
    ad = Adapter(lib, x)
    y = ad.empty(tuple(x.shape), x)
    r = _C.softmax(ad.export(x), ad.export(y), variant_id(variant), ad.stream(x), 0, ad.dtype_override)
    if r is not None:
        raise_status(r)
    return y
