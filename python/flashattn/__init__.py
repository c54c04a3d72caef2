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

from . import _C, _ops  # noqa: E402
from ._errors import CudaError, NotCompiledError, UnsupportedError  # noqa: E402

__version__ = _C.version()

_torch_api = None
if _WANT_TORCH:
    from . import _torch as _torch_api  # noqa: E402

    _Tensor = _torch_api.torch.Tensor

__all__ = [
    "flash_attn_func",
    "flash_attn_backward",
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
