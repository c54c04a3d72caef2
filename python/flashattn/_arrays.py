"""Array-library glue: allocate outputs with the caller's own library, find its
current CUDA stream, and hand arrays to the C++ side through DLPack.

torch tensors are handled in flashattn/_torch.py; this module covers numpy,
CuPy and anything else that speaks DLPack and the array API.
"""
from __future__ import annotations

import sys

NO_OVERRIDE = -1
_BF16 = 2  # flashattn::DType::kBFloat16


def library_of(x) -> str:
    """'torch', 'numpy', 'cupy', 'jax' or 'other' from the array's type."""
    mod = type(x).__module__
    for name in ("torch", "numpy", "cupy"):
        if mod == name or mod.startswith(name + "."):
            return name
    if mod.startswith("jax"):
        return "jax"
    return "other"


def _is_numpy_bf16(x) -> bool:
    return getattr(x.dtype, "name", "") == "bfloat16"


class Adapter:
    """How one array library allocates, exports and names its stream."""

    def __init__(self, lib: str, like):
        self.lib = lib
        self.dtype_override = NO_OVERRIDE
        if lib == "numpy" and _is_numpy_bf16(like):
            # numpy has no bfloat16 in DLPack: pass ml_dtypes.bfloat16 arrays as
            # uint16 views and tell the C++ side what the bits are.
            self.dtype_override = _BF16

    def export(self, x):
        if self.dtype_override != NO_OVERRIDE and self.lib == "numpy":
            import numpy as np

            if _is_numpy_bf16(x):
                return x.view(np.uint16)
        return x

    def empty(self, shape, like, float32: bool = False):
        if self.lib == "numpy":
            import numpy as np

            return np.empty(shape, dtype=np.float32 if float32 else like.dtype)
        if self.lib == "cupy":
            import cupy

            with cupy.cuda.Device(like.device.id):
                return cupy.empty(shape, dtype=cupy.float32 if float32 else like.dtype)
        xp = _namespace(like)
        dtype = xp.float32 if float32 else like.dtype
        return xp.empty(shape, dtype=dtype, device=like.device)

    def stream(self, like) -> int:
        if self.lib == "cupy":
            import cupy

            with cupy.cuda.Device(like.device.id):
                return cupy.cuda.get_current_stream().ptr
        return 0  # the legacy default stream (CPU arrays ignore it)


def _namespace(x):
    if hasattr(x, "__array_namespace__"):
        return x.__array_namespace__()
    raise TypeError(
        f"flashattn does not know how to allocate an output like {type(x).__module__}.{type(x).__name__}: "
        "pass a torch tensor, a numpy or CuPy array, or an array-API array that speaks DLPack"
    )


def call_jax(fn, arrays):
    """JAX arrays are immutable, so flashattn cannot write into one: run fn on
    zero-copy views in a library that can allocate (numpy on the CPU; torch or
    CuPy on a GPU, through DLPack) and hand the results back to JAX."""
    import jax

    for a in arrays:
        a.block_until_ready()  # JAX dispatches asynchronously on its own streams
    platforms = {d.platform for a in arrays for d in a.devices()}
    if platforms == {"cpu"}:
        import numpy as np

        res = fn(*[np.asarray(a) for a in arrays])
        dev = next(iter(arrays[0].devices()))
        wrap = lambda r: jax.device_put(r, dev)  # noqa: E731  (jnp.asarray would use the default device)
    else:
        try:
            import torch as bridge

            sync = lambda: bridge.cuda.synchronize()  # noqa: E731
        except ImportError:
            try:
                import cupy as bridge

                sync = lambda: bridge.cuda.get_current_stream().synchronize()  # noqa: E731
            except ImportError:
                raise TypeError("flashattn: JAX arrays on a GPU need torch or CuPy installed "
                                "(JAX buffers are immutable; flashattn allocates through them)") from None
        res = fn(*[bridge.from_dlpack(a) for a in arrays])
        sync()
        wrap = jax.dlpack.from_dlpack
    if isinstance(res, tuple):
        return tuple(wrap(r) for r in res)
    return wrap(res)


def module_loaded(name: str) -> bool:
    return name in sys.modules
