"""flashattn: exact attention (FlashAttention) in C++ and CUDA, for any array
library that speaks DLPack: torch (CPU and CUDA, with autograd and
torch.compile), numpy (CPU), CuPy (CUDA) and JAX (CPU).

    import flashattn
    out = flashattn.flash_attn_func(q, k, v, causal=True)   # [batch, seqlen, heads, head_dim]

No libtorch is linked: the extension takes tensors through DLPack, so one build
works with every torch version.
"""
from __future__ import annotations

import importlib.util
import os

# torch, if installed, is imported here so that the flashattn:: custom ops exist
# before torch.compile traces a model (set FLASHATTN_NO_TORCH=1 to skip). And it is
# imported BEFORE the extension: torch loads its own CUDA runtime and OpenMP
# runtime by full path (nvidia/cu13/lib/libcudart.so.13, torch/lib/libgomp.so.1),
# and the extension's libcudart.so.13 / libgomp.so.1 then resolve to those. The
# other order puts two CUDA runtimes in the process (the toolkit's, found through
# the extension's RUNPATH, and torch's), each with its own state and exit-time
# teardown.
_WANT_TORCH = os.environ.get("FLASHATTN_NO_TORCH", "") in ("", "0") and importlib.util.find_spec("torch") is not None
if _WANT_TORCH:
    importlib.import_module("torch")

from . import _C, _ops, _varlen  # noqa: E402
from ._errors import CudaError, NotCompiledError, UnsupportedError  # noqa: E402

__version__ = _C.version()

_torch_api = None
if _WANT_TORCH:
    from . import _torch as _torch_api  # noqa: E402

    _Tensor = _torch_api.torch.Tensor

__all__ = [
    "flash_attn_func",
    "flash_attn_backward",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "softmax",
    "cuda_compiled",
    "cuda_device_count",
    "UnsupportedError",
    "NotCompiledError",
    "CudaError",
    "KERNELS",
]

KERNELS = tuple(_ops.KERNELS)


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    deterministic=False, return_lse=False, *, kernel="auto"):
    """Exact attention, flash-attn's interface: out = softmax(mask(softcap(scale * q k^T))) v.

    q: [batch, seqlen_q, heads_q, head_dim]; k, v: [batch, seqlen_k, heads_kv, head_dim]
    (heads_q a multiple of heads_kv: GQA/MQA). float32, float16 or bfloat16; any batch/row/head
    strides, the last dimension contiguous. torch tensors (CPU, CUDA), numpy arrays (CPU; bfloat16
    through ml_dtypes), CuPy arrays (CUDA), JAX arrays (CPU) or any DLPack array with the array API.

    softmax_scale: None = 1/sqrt(head_dim). causal / window_size=(left, right): masks aligned to
    the bottom-right corner (flash-attn >= 2.1), -1 = unbounded. softcap > 0: Gemma-2 soft-capping.
    deterministic: bit-identical backward. return_lse: also return the log-sum-exp
    [batch, heads_q, seqlen_q] float32 (not differentiable). kernel: "auto" or one rung of the
    ladder ("reference", "cpu_flash", "naive", "fa1", "fa2", "hopper").

    Returns out [batch, seqlen_q, heads_q, head_dim] of the inputs' array type, on their device,
    computed on the caller's current CUDA stream. With torch, out supports .backward() and
    torch.compile(fullgraph=True). Bad input raises ValueError / TypeError (UnsupportedError, a
    ValueError, for a valid request no compiled kernel handles).
    """
    if _torch_api is not None and isinstance(q, _Tensor):
        return _torch_api.flash_attn_func(q, k, v, softmax_scale, causal, window_size, softcap, deterministic,
                                          return_lse, kernel)
    return _ops.attention(q, k, v, softmax_scale, causal, window_size, softcap, return_lse, kernel)


def flash_attn_backward(dout, q, k, v, out, lse, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, deterministic=False, *, kernel="auto"):
    """The backward pass as a plain function (for numpy / CuPy; torch users call .backward()).
    out and lse come from flash_attn_func(..., return_lse=True) with the same options.
    Returns (dq, dk, dv) like q, k, v (dk/dv summed over the query heads of a KV group)."""
    if _torch_api is not None and isinstance(q, _Tensor):
        _torch_api._check(q, k, v)
        left, right = _ops.window_pair(window_size)
        return _torch_api._bwd_impl(dout, q, k, v, out, lse, 0.0 if softmax_scale is None else float(softmax_scale),
                                    bool(causal), left, right, float(softcap), bool(deterministic),
                                    _ops.kernel_id(kernel))
    return _ops.attention_backward(dout, q, k, v, out, lse, softmax_scale, causal, window_size, softcap,
                                   deterministic, kernel)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *, seqused_k=None,
                           return_lse=False, kernel="auto"):
    """Attention over a packed batch of sequences of different lengths (flash-attn's varlen interface).

    q: [total_q, heads_q, head_dim]; k, v: [total_k, heads_kv, head_dim], or page pools
    [num_pages, page_size, heads_kv, head_dim] (any page_size >= 1) with block_table [batch, max_blocks]
    int32 (key j of sequence b is row j % page_size of page block_table[b, j // page_size]).
    cu_seqlens_q, cu_seqlens_k: int32 [batch + 1] prefix sums (0 first), on the device of q: sequence b owns
    rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q (and of out). max_seqlen_q/k: the longest lengths.
    seqused_k: optional int32 [batch], the keys actually used per sequence. Masks (causal, window) are
    bottom-right aligned per sequence; a sequence with no keys gets out = 0 (lse = -inf).

    dropout_p must be 0 and alibi_slopes None (not supported: ValueError). Returns out [total_q, heads_q,
    head_dim]; with return_lse=True (out, lse); with return_attn_probs=True (out, lse, None) like flash-attn
    (no probabilities are returned). lse is float32 [batch, heads_q, max_seqlen_q] (the dense layout, not
    flash-attn's packed [heads_q, total_q]): lse[b, h, i] belongs to query row cu_seqlens_q[b] + i; rows past a
    sequence's length are -inf.

    torch tensors (CPU or CUDA, current stream) or numpy arrays (CPU). Autograd: CPU torch tensors
    (the float64-accumulating reference backward) and CUDA ones (the FA2 backward reads cu_seqlens /
    seqused_k; with a block_table, inputs that require grad raise a ValueError on CUDA). On the CPU, kernel
    "auto" runs the exact reference path (cpu_flash does not take varlen inputs). With torch it runs through
    the custom ops flashattn::varlen_fwd / varlen_bwd, so torch.compile(fullgraph=True) traces it; on an
    sm_90 GPU the Hopper kernel runs the forward (FA2 elsewhere, and FA2 runs the CUDA backward).
    """
    _varlen.check_unsupported(dropout_p, alibi_slopes)
    _varlen.check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table)
    want_lse = bool(return_lse or return_attn_probs)
    if _torch_api is not None and isinstance(q, _Tensor):
        out, lse = _torch_api.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                     max_seqlen_k, softmax_scale, causal, window_size, softcap,
                                                     deterministic, block_table, seqused_k, want_lse, kernel)
    else:
        left, right = _ops.window_pair(window_size)
        out, lse = _varlen.varlen_forward(_varlen.NumpyBackend(q), q, k, v, cu_seqlens_q, cu_seqlens_k,
                                          max_seqlen_q, max_seqlen_k,
                                          0.0 if softmax_scale is None else float(softmax_scale), bool(causal),
                                          left, right, float(softcap), block_table, seqused_k,
                                          _ops.kernel_id(kernel), want_lse)
    if return_attn_probs:
        return out, lse, None
    return (out, lse) if return_lse else out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Decoding / chunked prefill against a KV cache (flash-attn's interface). Inference only.

    q: [batch, seqlen_q, heads_q, head_dim]. k_cache, v_cache: [batch, seqlen_cache, heads_kv, head_dim], or
    page pools [num_pages, page_size, heads_kv, head_dim] (any page_size >= 1) with block_table
    [batch, max_blocks] int32. cache_seqlens: int32 [batch] (or a Python int): keys already in the cache
    (None: the whole cache is valid).
    k, v (optional): [batch, seqlen_new, heads_kv, head_dim], written IN PLACE into the caches at
    cache_seqlens (cache_seqlens itself is not changed), after rotary embedding of k if rotary_cos /
    rotary_sin [max_position, rotary_dim / 2] are given (interleaved GPT-J pairs if rotary_interleaved,
    else GPT-NeoX halves); q is then rotated too (a copy: the caller's q is not modified), row t at position
    cache_seqlens + t (needs seqlen_q == seqlen_new, and causal or a window when seqlen_q > 1).
    Attention then covers the first cache_seqlens + seqlen_new keys of each sequence; causal / window masks
    are bottom-right aligned to that length. num_splits: 0 = heuristic, n = force n KV splits (CUDA).

    cache_batch_idx, cache_leftpad and alibi_slopes are not supported (ValueError). Returns out
    [batch, seqlen_q, heads_q, head_dim], or (out, lse [batch, heads_q, seqlen_q] float32) with
    return_softmax_lse. torch tensors (CPU or CUDA, current stream) or numpy arrays (CPU).
    """
    _varlen.check_unsupported(0.0, alibi_slopes, cache_batch_idx, cache_leftpad)
    if _torch_api is not None and isinstance(q, _Tensor):
        return _torch_api.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                                                  block_table, softmax_scale, causal, window_size, softcap,
                                                  rotary_interleaved, num_splits, return_softmax_lse)
    return _varlen.kvcache_forward(_varlen.NumpyBackend(q), q, k_cache, v_cache, k, v, rotary_cos, rotary_sin,
                                   cache_seqlens, block_table, softmax_scale, causal, window_size, softcap,
                                   rotary_interleaved, num_splits, return_softmax_lse)


def softmax(x, dim=-1, variant="online"):
    """Row softmax over the last dimension (dim=-1 only) with one of the library's kernels:
    "naive" (exp/sum: overflows for large inputs, kept to show why), "safe" (max, then sum)
    or "online" (one pass, running max and rescaled sum). Forward only (no autograd).
    Returns an array of x's type, dtype and device."""
    if _torch_api is not None and isinstance(x, _Tensor):
        return _torch_api.softmax(x, dim, variant)
    return _ops.softmax(x, dim, variant)


def cuda_compiled() -> bool:
    """Was this build compiled with the CUDA backend."""
    return _C.cuda_compiled()


def cuda_device_count() -> int:
    """CUDA devices the library sees (0 in a CPU-only build)."""
    return _C.cuda_device_count()
