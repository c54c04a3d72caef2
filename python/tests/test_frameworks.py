"""CuPy (CUDA) and JAX (CPU) through DLPack; each skipped, with the reason, where not installed."""
import importlib.util

import numpy as np
import pytest

import flashattn
import reference as ref

HAS_CUPY = importlib.util.find_spec("cupy") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None


@pytest.mark.skipif(not HAS_CUPY, reason="cupy not installed")
def test_cupy_forward_on_current_stream():
    import cupy

    if cupy.cuda.runtime.getDeviceCount() == 0 or not flashattn.cuda_compiled():
        pytest.skip("no CUDA GPU or flashattn built without CUDA")
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 70, 2, 64)).astype(np.float16) for _ in range(3))
    with cupy.cuda.Stream(non_blocking=True) as s:
        try:
            out = flashattn.flash_attn_func(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), causal=True)
        except flashattn.UnsupportedError as e:
            pytest.skip(f"unsupported: {e}")
        s.synchronize()
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float16
    o64, _ = ref.attention(q, k, v, causal=True)
    o32, _ = ref.attention(q, k, v, causal=True, compute=np.float32)
    ref.assert_tolerance("cupy out", cupy.asnumpy(out), o64, ref.round_to(o32, "float16"), "float16")


@pytest.mark.skipif(not HAS_JAX, reason="jax not installed")
def test_jax_cpu_forward():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 33, 2, 32)).astype(np.float32) for _ in range(3))
    out = flashattn.flash_attn_func(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    assert type(out).__module__.startswith("jax")
    o64, _ = ref.attention(q, k, v)
    assert ref.max_abs(np.asarray(out), o64) < 1e-4
