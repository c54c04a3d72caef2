"""torch integration: a fast eager path, a torch.autograd.Function for
.backward(), and the flashattn::fwd / flashattn::bwd custom ops (with fake
kernels and a registered autograd formula) that torch.compile(fullgraph=True)
traces without graph breaks.

Tensors still reach C++ through DLPack (torch._C._to_dlpack capsules, the
cheapest exporter; passing data_ptr()/shape/stride() instead measured no faster,
the Python-side queries cost what the capsules save); no libtorch symbol is linked.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _C, _ops
from ._errors import raise_status

try:
    _dlpack = torch._C._to_dlpack
except AttributeError:  # pragma: no cover - older torch
    from torch.utils.dlpack import to_dlpack as _dlpack

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream(t: torch.Tensor) -> int:
    """The caller's current CUDA stream on t's device (0 for CPU tensors)."""
    if not t.is_cuda:
        return 0
    if _raw_stream is not None:
        return _raw_stream(t.get_device())
    return torch.cuda.current_stream(t.device).cuda_stream


_Tensor = torch.Tensor
# Bound once: attribute lookups are a measurable part of the per-call overhead.
_is_compiling = torch.compiler.is_compiling
_is_grad_enabled = torch.is_grad_enabled
_empty_like = torch.empty_like
_fwd = _C.fwd
_float32 = torch.float32


def _check(q, k, v):
    if isinstance(k, _Tensor) and isinstance(v, _Tensor) and q.dim() == 4 and k.dim() == 4 and v.dim() == 4:
        return
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor like q, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions [batch, seqlen, heads, head_dim], "
                             f"got shape {list(x.shape)}")


def _out_shapes(q, v):
    b, sq, hq, _ = q.shape
    return (b, sq, hq, v.shape[3]), (b, hq, sq)


def _fwd_impl(q, k, v, softmax_scale, causal, window_left, window_right, softcap, kernel, need_lse):
    o_shape, lse_shape = _out_shapes(q, v)
    out = torch.empty(o_shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device) if need_lse else None
    r = _C.fwd(_dlpack(q), _dlpack(k), _dlpack(v), _dlpack(out), None if lse is None else _dlpack(lse),
               softmax_scale, causal, window_left, window_right, softcap, kernel, _stream(q), 0, -1)
    if r is not None:
        raise_status(r)
    return out, lse


def _usable_grad(dout: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Autograd may hand us expanded (stride-0) or odd-strided gradients; the
    kernels need the last dim contiguous and 16-byte aligned rows."""
    if dout is None:
        return torch.zeros_like(out)
    if dout.stride(-1) != 1 or any(s % 8 for s in dout.stride()[:-1]) or dout.data_ptr() % 16:
        dout = dout.contiguous()
    return dout


def _bwd_impl(dout, q, k, v, out, lse, softmax_scale, causal, window_left, window_right, softcap, deterministic,
              kernel):
    dout = _usable_grad(dout, out)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    r = _C.bwd(_dlpack(dout), _dlpack(q), _dlpack(k), _dlpack(v), _dlpack(out), _dlpack(lse), _dlpack(dq),
               _dlpack(dk), _dlpack(dv), softmax_scale, causal, window_left, window_right, softcap, deterministic,
               kernel, _stream(q), 0, -1)
    if r is not None:
        raise_status(r)
    return dq, dk, dv


# --- eager autograd ------------------------------------------------------------
class FlashAttnFunction(torch.autograd.Function):
    """out, lse = FlashAttnFunction.apply(q, k, v, scale, causal, wl, wr, softcap, deterministic, kernel).
    Saves q, k, v, out and lse; the backward is flashattn's (recomputes P from lse)."""

    @staticmethod
    def forward(ctx, q, k, v, softmax_scale, causal, window_left, window_right, softcap, deterministic, kernel):
        out, lse = _fwd_impl(q, k, v, softmax_scale, causal, window_left, window_right, softcap, kernel, True)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (softmax_scale, causal, window_left, window_right, softcap, deterministic, kernel)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _bwd_impl(dout, q, k, v, out, lse, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None, None


# --- custom ops for torch.compile ---------------------------------------------
@torch.library.custom_op("flashattn::fwd", mutates_args=())
def fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, causal: bool,
           window_left: int, window_right: int, softcap: float, deterministic: bool,
           kernel: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, softmax_scale, causal, window_left, window_right, softcap, kernel, True)


@fwd_op.register_fake
def _fwd_fake(q, k, v, softmax_scale, causal, window_left, window_right, softcap, deterministic, kernel):
    o_shape, lse_shape = _out_shapes(q, v)
    return q.new_empty(o_shape), q.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op("flashattn::bwd", mutates_args=())
def bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
           lse: torch.Tensor, softmax_scale: float, causal: bool, window_left: int, window_right: int,
           softcap: float, deterministic: bool, kernel: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(dout, q, k, v, out, lse, softmax_scale, causal, window_left, window_right, softcap,
                     deterministic, kernel)


@bwd_op.register_fake
def _bwd_fake(dout, q, k, v, out, lse, *args):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, softmax_scale, causal, window_left, window_right, softcap, deterministic, kernel = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (softmax_scale, causal, window_left, window_right, softcap, deterministic, kernel)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = bwd_op(dout, q, k, v, out, lse, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


fwd_op.register_autograd(_backward, setup_context=_setup_context)


def flash_attn_func(q, k, v, softmax_scale, causal, window_size, softcap, deterministic, return_lse, kernel):
    # Kept lean: this is the per-call overhead of every eager inference call.
    _check(q, k, v)
    try:
        window_left, window_right = window_size
        window_left, window_right = int(window_left), int(window_right)
    except (TypeError, ValueError):
        window_left, window_right = _ops.window_pair(window_size)  # raises the clear error
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    kid = 0 if kernel == "auto" else _ops.kernel_id(kernel)
    causal, softcap = bool(causal), float(softcap)
    if _is_compiling():
        out, lse = fwd_op(q, k, v, scale, causal, window_left, window_right, softcap, bool(deterministic), kid)
    elif _is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out, lse = FlashAttnFunction.apply(q, k, v, scale, causal, window_left, window_right, softcap,
                                           bool(deterministic), kid)
    else:
        out = _empty_like(q) if v.shape[3] == q.shape[3] else q.new_empty(q.shape[:3] + (v.shape[3],))
        lse = None
        if return_lse:  # allocated only when asked for (the kernels skip the LSE store without it)
            lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=_float32)
        r = _fwd(_dlpack(q), _dlpack(k), _dlpack(v), _dlpack(out), None if lse is None else _dlpack(lse), scale,
                 causal, window_left, window_right, softcap, kid, _stream(q), 0, -1)
        if r is not None:
            raise_status(r)
    return (out, lse) if return_lse else out


def softmax(x, dim, variant):
    _ops.check_softmax_dim(x, dim)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    r = _C.softmax(_dlpack(x.detach()), _dlpack(y), _ops.variant_id(variant), _stream(x), 0, -1)
    if r is not None:
        raise_status(r)
    return y


# --- varlen / KV cache (flashattn/_varlen.py has the shared logic) -------------
from . import _varlen  # noqa: E402


class _TorchBackend:
    dtype_override = -1

    @staticmethod
    def export(x):
        return None if x is None else _dlpack(x)

    @staticmethod
    def export_index(x):
        if not isinstance(x, _Tensor):
            raise TypeError(f"index arrays (cu_seqlens, cache_seqlens, block_table, ...) must be torch tensors like q, "
                            f"got {type(x).__name__}")
        return _dlpack(x.detach())

    @staticmethod
    def empty(shape, like, float32=False):
        return torch.empty(tuple(shape), dtype=_float32 if float32 else like.dtype, device=like.device)

    @staticmethod
    def stream(like):
        return _stream(like)

    @staticmethod
    def seqlens(cache_seqlens, batch, like):
        if isinstance(cache_seqlens, int):
            return torch.full((batch,), cache_seqlens, dtype=torch.int32, device=like.device)
        return cache_seqlens

    @staticmethod
    def add(lens, n):
        return (lens + n).to(torch.int32)

    @staticmethod
    def copy(x):
        return x.clone()

    @staticmethod
    def float32(x):
        return x.detach().to(torch.float32).contiguous()


def _needs_grad(what, block_table, *tensors):
    """Whether autograd must see the call. On CUDA the backward reads cu_seqlens / seqused_k (the fa2
    backward) but not a page table: a paged CUDA call that needs gradients is refused before the forward."""
    if not _is_grad_enabled():
        return False
    needs = any(isinstance(t, _Tensor) and t.requires_grad for t in tensors)
    if needs and block_table is not None and any(isinstance(t, _Tensor) and t.is_cuda for t in tensors):
        raise ValueError(f"{what}: the paged (block_table) backward is not available on CUDA (forward only); "
                         "run under torch.no_grad() / torch.inference_mode() or detach the inputs")
    return needs


def _check_index(*named):
    """Index arrays must be torch tensors like q (the custom ops take Optional[Tensor])."""
    for name, x in named:
        if x is not None and not isinstance(x, _Tensor):
            raise TypeError(f"index arrays (cu_seqlens, cache_seqlens, block_table, ...) must be torch tensors like "
                            f"q, got {type(x).__name__} for {name}")


# --- varlen custom ops (torch.compile; the eager autograd path uses them too) -----
@torch.library.custom_op("flashattn::varlen_fwd", mutates_args=())
def varlen_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                  cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
                  causal: bool, window_left: int, window_right: int, softcap: float,
                  block_table: Optional[torch.Tensor], seqused_k: Optional[torch.Tensor], deterministic: bool,
                  kernel: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """out [total_q, heads_q, head_dim_v] like q, lse float32 [batch, heads_q, max_seqlen_q] (always computed:
    the backward needs it)."""
    return _varlen.varlen_forward(_TorchBackend, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  softmax_scale, causal, window_left, window_right, softcap, block_table, seqused_k,
                                  kernel, True)


@varlen_fwd_op.register_fake
def _varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args):
    out = q.new_empty((q.shape[0], q.shape[1], v.shape[-1]))
    lse = q.new_empty((cu_seqlens_q.shape[0] - 1, q.shape[1], max_seqlen_q), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("flashattn::varlen_bwd", mutates_args=())
def varlen_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
                  max_seqlen_k: int, softmax_scale: float, causal: bool, window_left: int, window_right: int,
                  softcap: float, block_table: Optional[torch.Tensor], seqused_k: Optional[torch.Tensor],
                  deterministic: bool, kernel: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv like q, k, v (page pools: dk/dv of rows no sequence uses are 0). On CUDA: the fa2 backward
    (cu_seqlens / seqused_k); a block_table there is refused (flashattn.UnsupportedError)."""
    return _varlen.varlen_backward(_TorchBackend, _usable_grad(dout, out), q, k, v, out, lse, cu_seqlens_q,
                                   cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left,
                                   window_right, softcap, block_table, seqused_k, deterministic, kernel)


@varlen_bwd_op.register_fake
def _varlen_bwd_fake(dout, q, k, v, *args):
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape)


def _varlen_setup_context(ctx, inputs, output):
    (q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, wl, wr, softcap, block_table, seqused_k, deterministic,
     kernel) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, block_table, seqused_k)
    ctx.args = (max_q, max_k, scale, causal, wl, wr, softcap)
    ctx.extra = (deterministic, kernel)
    ctx.mark_non_differentiable(lse)


def _varlen_backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k, block_table, seqused_k = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = varlen_bwd_op(dout, q, k, v, out, lse, cu_q, cu_k, *ctx.args, block_table, seqused_k, *ctx.extra)
    return (dq, dk, dv) + (None,) * 13


varlen_fwd_op.register_autograd(_varlen_backward, setup_context=_varlen_setup_context)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                           window_size, softcap, deterministic, block_table, seqused_k, need_lse, kernel):
    for name, x in (("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(x, _Tensor):
            raise TypeError(f"{name} must be a torch.Tensor like q, got {type(x).__name__}")
    left, right = _ops.window_pair(window_size)
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    kid = _ops.kernel_id(kernel)
    if _needs_grad("flash_attn_varlen_func", block_table, q, k, v) or _is_compiling():
        # Through the custom op: autograd (CPU) and torch.compile(fullgraph=True).
        _check_index(("block_table", block_table), ("seqused_k", seqused_k))
        out, lse = varlen_fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), scale,
                                 bool(causal), left, right, float(softcap), block_table, seqused_k,
                                 bool(deterministic), kid)
        return out, (lse if need_lse else None)
    return _varlen.varlen_forward(_TorchBackend, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  scale, bool(causal), left, right, float(softcap), block_table, seqused_k, kid,
                                  need_lse)


# --- KV cache custom op (forward only, like flash-attn) ---------------------------
class _TraceBackend(_TorchBackend):
    """For kvcache_prepare under torch.compile: an int cache_seqlens stays an int (see kvcache_fwd_op)."""

    @staticmethod
    def seqlens(cache_seqlens, batch, like):
        return cache_seqlens


@torch.library.custom_op("flashattn::kvcache_fwd", mutates_args=("k_cache", "v_cache"))
def kvcache_fwd_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k: Optional[torch.Tensor],
                   v: Optional[torch.Tensor], rotary_cos: Optional[torch.Tensor], rotary_sin: Optional[torch.Tensor],
                   cache_seqlens: Optional[torch.Tensor], cache_seqlen: int, block_table: Optional[torch.Tensor],
                   softmax_scale: float, causal: bool, window_left: int, window_right: int, softcap: float,
                   rotary_interleaved: bool, num_splits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Appends k/v (when given) into k_cache/v_cache in place at cache_seqlens (which is not changed), then
    attends. cache_seqlen >= 0 (with cache_seqlens None): every sequence holds that many keys (the Python int
    of flash_attn_with_kvcache; made a tensor here, not in the graph). Neither: the whole cache.
    -> out [batch, seqlen_q, heads_q, head_dim_v] like q, lse float32 [batch, heads_q, seqlen_q]."""
    if cache_seqlens is None and cache_seqlen >= 0:
        cache_seqlens = _TorchBackend.seqlens(cache_seqlen, q.shape[0], q)
    return _varlen.kvcache_run(_TorchBackend, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                               block_table, softmax_scale, causal, window_left, window_right, softcap,
                               rotary_interleaved, num_splits, True)


@kvcache_fwd_op.register_fake
def _kvcache_fwd_fake(q, k_cache, v_cache, *args):
    b, sq, hq, _ = q.shape
    return q.new_empty((b, sq, hq, v_cache.shape[-1])), q.new_empty((b, hq, sq), dtype=torch.float32)


def flash_attn_with_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, block_table,
                            softmax_scale, causal, window_size, softcap, rotary_interleaved, num_splits, return_lse):
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v), ("rotary_cos", rotary_cos),
                    ("rotary_sin", rotary_sin)):
        if x is not None and not isinstance(x, _Tensor):
            raise TypeError(f"{name} must be a torch.Tensor like q, got {type(x).__name__}")
    if _is_grad_enabled() and any(isinstance(t, _Tensor) and t.requires_grad for t in (q, k_cache, v_cache, k, v)):
        raise ValueError("flash_attn_with_kvcache is inference only (no backward, as in flash-attn): run under "
                         "torch.no_grad() / torch.inference_mode() or detach the inputs")
    if not _is_compiling():
        return _varlen.kvcache_forward(_TorchBackend, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin,
                                       cache_seqlens, block_table, softmax_scale, causal, window_size, softcap,
                                       rotary_interleaved, num_splits, return_lse)
    # torch.compile: the same checks, then the custom op (which declares the in-place append).
    _check_index(("block_table", block_table))
    if not isinstance(cache_seqlens, (int, torch.SymInt)):
        _check_index(("cache_seqlens", cache_seqlens))
    left, right, lens = _varlen.kvcache_prepare(_TraceBackend, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin,
                                                cache_seqlens, block_table, causal, window_size)
    const_len = -1
    if isinstance(lens, (int, torch.SymInt)):
        if lens >= 0:  # the op makes the tensor at run time (no kernel in the graph)
            const_len, lens = lens, None
        else:  # C++ gives the message
            lens = _TorchBackend.seqlens(lens, q.shape[0], q)
    out, lse = kvcache_fwd_op(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, lens, const_len, block_table,
                              0.0 if softmax_scale is None else float(softmax_scale), bool(causal), left, right,
                              float(softcap), bool(rotary_interleaved), int(num_splits))
    return (out, lse) if return_lse else out
