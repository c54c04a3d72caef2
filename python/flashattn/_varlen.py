"""flash_attn_varlen_func and flash_attn_with_kvcache (docs/07-inference.md).

The argument handling is shared by every array library through a small backend
object (how to allocate, export through DLPack and find the stream): numpy here,
torch in flashattn/_torch.py. The C++ side (python/src/flashattn_ext.cpp:
fwd_varlen, bwd_varlen, append_kv) describes the arrays in FwdParams /
KvAppendParams; flashattn::validate does the checks of their contents.
"""
from __future__ import annotations

from . import _C, _ops
from ._arrays import Adapter, library_of
from ._errors import raise_status


def check_unsupported(dropout_p=0.0, alibi_slopes=None, cache_batch_idx=None, cache_leftpad=None):
    if dropout_p:
        raise ValueError(f"dropout_p={dropout_p!r} is not supported: flashattn computes exact attention without "
                         "dropout (pass dropout_p=0.0)")
    if alibi_slopes is not None:
        raise ValueError("alibi_slopes is not supported by flashattn (pass None)")
    if cache_batch_idx is not None:
        raise ValueError("cache_batch_idx is not supported by flashattn: pass caches whose first dimension is the "
                         "batch of q (or a paged cache with block_table)")
    if cache_leftpad is not None:
        raise ValueError("cache_leftpad is not supported by flashattn (pass None)")


def _shape(name, x):
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an array (torch, numpy, ...), got {type(x).__name__}")
    return tuple(shape)


def check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table):
    """Rank checks with flash-attn's layouts, before anything reaches C++."""
    qs, ks, vs = _shape("q", q), _shape("k", k), _shape("v", v)
    if len(qs) != 3:
        raise ValueError(f"q must be packed [total_q, heads_q, head_dim] (3 dimensions), got shape {list(qs)}")
    if block_table is not None:
        if len(ks) != 4 or len(vs) != 4:
            raise ValueError("with block_table, k and v must be page pools [num_pages, page_size, heads_kv, "
                             f"head_dim] (4 dimensions), got k {list(ks)}, v {list(vs)}")
    elif len(ks) != 3 or len(vs) != 3:
        raise ValueError(f"k and v must be packed [total_k, heads_kv, head_dim] (3 dimensions; 4-D page pools "
                         f"need block_table), got k {list(ks)}, v {list(vs)}")
    for name, c in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        cs = _shape(name, c)
        if len(cs) != 1 or cs[0] < 2:
            raise ValueError(f"{name} must be int32 [batch + 1] (prefix sums starting at 0), got shape {list(cs)}")
    if _shape("cu_seqlens_k", cu_seqlens_k)[0] != _shape("cu_seqlens_q", cu_seqlens_q)[0]:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must both have batch + 1 entries, got "
                         f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}")


def check_kvcache_args(q, k_cache, v_cache, k, v, block_table, rotary_cos, rotary_sin):
    qs, kcs, vcs = _shape("q", q), _shape("k_cache", k_cache), _shape("v_cache", v_cache)
    if len(qs) != 4:
        raise ValueError(f"q must be [batch, seqlen_q, heads_q, head_dim], got shape {list(qs)}")
    what = ("page pools [num_pages, page_size, heads_kv, head_dim] (block_table is given)" if block_table is not None
            else "[batch, seqlen_cache, heads_kv, head_dim]")
    if len(kcs) != 4 or len(vcs) != 4:
        raise ValueError(f"k_cache and v_cache must be {what}, got {list(kcs)} and {list(vcs)}")
    if (k is None) != (v is None):
        raise ValueError("k and v (the new keys/values to append) must be given together")
    if k is not None:
        ks, vs = _shape("k", k), _shape("v", v)
        if len(ks) != 4 or len(vs) != 4:
            raise ValueError(f"k and v must be [batch, seqlen_new, heads_kv, head_dim], got {list(ks)}, {list(vs)}")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None and k is None:
        raise ValueError("rotary_cos / rotary_sin are applied to the new k (and q) only: pass k and v too")


def rotary_q_rows_ok(q, k, causal, window_size):
    """flash-attn rotates q row t at position cache_seqlens + t when causal / local, else every row at
    cache_seqlens. The fused append rotates q row t at cache_seqlens + t, so it needs q rows to match the
    new k rows, and (for seqlen_q > 1) a causal or local mask."""
    sq, sn = q.shape[1], k.shape[1]
    if sq != sn:
        raise ValueError(f"rotary embedding with seqlen_q ({sq}) != seqlen_new ({sn}) is not supported: q row t is "
                         "rotated at position cache_seqlens + t like the new key row t")
    local = tuple(window_size) != (-1, -1)
    if sq > 1 and not (causal or local):
        raise ValueError("rotary embedding with seqlen_q > 1 needs causal=True or a window (flash-attn then rotates "
                         "q row t at cache_seqlens + t); the non-causal variant (every q row at cache_seqlens) is "
                         "not supported")


class NumpyBackend:
    """numpy (and, on the CPU, other DLPack arrays with the array API)."""

    def __init__(self, like):
        self.ad = Adapter(library_of(like), like)
        self.dtype_override = self.ad.dtype_override

    def export(self, x):
        return None if x is None else self.ad.export(x)

    def export_index(self, x):
        return x

    def empty(self, shape, like, float32=False):
        return self.ad.empty(tuple(shape), like, float32)

    def stream(self, like):
        return self.ad.stream(like)

    def seqlens(self, cache_seqlens, batch, like):
        import numpy as np

        if isinstance(cache_seqlens, (int, np.integer)):
            return np.full((batch,), int(cache_seqlens), dtype=np.int32)
        return cache_seqlens

    def add(self, lens, n):
        import numpy as np

        return (np.asarray(lens) + np.int32(n)).astype(np.int32)

    def copy(self, x):
        return x.copy()

    def float32(self, x):
        import numpy as np

        return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def varlen_forward(be, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                   window_left, window_right, softcap, block_table, seqused_k, kernel, need_lse, num_threads=0):
    batch = cu_seqlens_q.shape[0] - 1
    hq = q.shape[1]
    out = be.empty((q.shape[0], hq, v.shape[-1]), q)
    lse = be.empty((batch, hq, int(max_seqlen_q)), q, float32=True) if need_lse else None
    ix = be.export_index
    r = _C.fwd_varlen(be.export(q), be.export(k), be.export(v), be.export(out), be.export(lse), ix(cu_seqlens_q),
                      ix(cu_seqlens_k), None if seqused_k is None else ix(seqused_k),
                      None if block_table is None else ix(block_table), int(max_seqlen_q), int(max_seqlen_k),
                      softmax_scale, causal, window_left, window_right, softcap, 0, kernel, be.stream(q), num_threads,
                      be.dtype_override)
    if r is not None:
        raise_status(r)
    return out, lse


def varlen_backward(be, dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    softmax_scale, causal, window_left, window_right, softcap, block_table, seqused_k, deterministic,
                    kernel):
    dq, dk, dv = be.empty(q.shape, q), be.empty(k.shape, q), be.empty(v.shape, q)
    e, ix = be.export, be.export_index
    r = _C.bwd_varlen(e(dout), e(q), e(k), e(v), e(out), e(lse), e(dq), e(dk), e(dv), ix(cu_seqlens_q),
                      ix(cu_seqlens_k), None if seqused_k is None else ix(seqused_k),
                      None if block_table is None else ix(block_table), int(max_seqlen_q), int(max_seqlen_k),
                      softmax_scale, causal, window_left, window_right, softcap, deterministic, kernel, be.stream(q),
                      0, be.dtype_override)
    if r is not None:
        raise_status(r)
    return dq, dk, dv


def kvcache_prepare(be, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, block_table, causal,
                    window_size):
    """The checks of flash_attn_with_kvcache that need no data (run before tracing reaches C++).
    -> (window_left, window_right, cache lengths as an int32 array [batch] or None = the whole cache)."""
    check_kvcache_args(q, k_cache, v_cache, k, v, block_table, rotary_cos, rotary_sin)
    left, right = _ops.window_pair(window_size)
    if cache_seqlens is None:
        if k is not None:
            raise ValueError("appending k/v needs cache_seqlens (where the new rows go)")
        lens = None  # every key of the cache is valid
    else:
        lens = be.seqlens(cache_seqlens, q.shape[0], q)
    if rotary_cos is not None:
        rotary_q_rows_ok(q, k, causal, (left, right))
    return left, right, lens


def kvcache_run(be, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, lens, block_table, softmax_scale, causal,
                window_left, window_right, softcap, rotary_interleaved, num_splits, return_lse):
    """After kvcache_prepare: append (k, v) in place at lens (rotary on the new keys and a copy of q), then
    attend q over lens + seqlen_new keys of each sequence. -> (out, lse or None)."""
    if k is not None:
        qr = None
        cos = sin = None
        if rotary_cos is not None:
            cos, sin = be.float32(rotary_cos), be.float32(rotary_sin)
            q = be.copy(q)  # rotated in place by the append; the caller's q stays as it was
            qr = be.export(q)
        ix = be.export_index
        r = _C.append_kv(be.export(k), be.export(v), be.export(k_cache), be.export(v_cache), ix(lens),
                         None if block_table is None else ix(block_table), cos, sin, bool(rotary_interleaved), qr,
                         be.stream(q), be.dtype_override)
        if r is not None:
            raise_status(r)
        lens = be.add(lens, k.shape[1])
    b, sq, hq, _ = q.shape
    out = be.empty((b, sq, hq, v_cache.shape[-1]), q)
    lse = be.empty((b, hq, sq), q, float32=True) if return_lse else None
    ix = be.export_index
    r = _C.fwd_varlen(be.export(q), be.export(k_cache), be.export(v_cache), be.export(out), be.export(lse), None,
                      None, None if lens is None else ix(lens), None if block_table is None else ix(block_table), 0, 0,
                      0.0 if softmax_scale is None else float(softmax_scale), bool(causal), window_left, window_right,
                      float(softcap), int(num_splits), 0, be.stream(q), 0, be.dtype_override)
    if r is not None:
        raise_status(r)
    return out, lse


def kvcache_forward(be, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, block_table,
                    softmax_scale, causal, window_size, softcap, rotary_interleaved, num_splits, return_lse):
    """Append (k, v) in place at cache_seqlens (rotary on the new keys and a copy of q), then attend q over
    cache_seqlens + seqlen_new keys of each sequence."""
    left, right, lens = kvcache_prepare(be, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                                        block_table, causal, window_size)
    out, lse = kvcache_run(be, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, lens, block_table, softmax_scale,
                           causal, left, right, softcap, rotary_interleaved, num_splits, return_lse)
    return (out, lse) if return_lse else out
