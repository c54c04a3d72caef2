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
@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_jax_forward(platform):
    import jax

    try:
        dev = jax.devices(platform)[0]
    except RuntimeError:
        pytest.skip(f"jax has no {platform} device")
    if platform == "gpu" and not flashattn.cuda_compiled():
        pytest.skip("flashattn built without CUDA")
    rng = np.random.default_rng(0)
    dt = np.float32 if platform == "cpu" else np.float16
    q, k, v = (rng.standard_normal((1, 33, 2, 64)).astype(dt) for _ in range(3))
    jq, jk, jv = (jax.device_put(x, dev) for x in (q, k, v))
    try:
        out = flashattn.flash_attn_func(jq, jk, jv, causal=True)
    except flashattn.UnsupportedError as e:
        pytest.skip(f"unsupported: {e}")
    assert isinstance(out, jax.Array) and out.dtype == dt
    assert {d.platform for d in out.devices()} == {dev.platform}
    o64, _ = ref.attention(q, k, v, causal=True)
    o32, _ = ref.attention(q, k, v, causal=True, compute=np.float32)
    name = ref.dtype_name(q)
    ref.assert_tolerance("jax out", np.asarray(out), o64, ref.round_to(o32, name), name)
    y = flashattn.softmax(jq[0, 0])
    assert ref.max_abs(np.asarray(y, dtype=np.float64), np.exp(q[0, 0] - np.log(np.exp(q[0, 0].astype(np.float64)).sum(-1, keepdims=True)))) < 1e-2
