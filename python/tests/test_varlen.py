"""flash_attn_varlen_func and flash_attn_with_kvcache: numpy on the CPU (runs in CI),
torch on the CPU (autograd through the reference backward) and torch on CUDA
(skipped without a GPU), all against a float64 NumPy reference computed here per
sequence (tests/reference.py's dense attention on each sequence's own rows).
Tolerance: the rule of the other Python tests (reference.py:assert_tolerance)."""
import importlib.util

import numpy as np
import pytest

import flashattn
import reference as ref

HAS_TORCH = importlib.util.find_spec("torch") is not None


# --- the per-sequence float64 reference ------------------------------------------
def ref_seq(q, k, v, compute, causal=False, window=(-1, -1), softcap=0.0, softmax_scale=None):
    """One sequence: q [lq, hq, d], k/v [lk, hkv, d] -> out [lq, hq, d], lse [hq, lq] in `compute`.
    No keys: out = 0, lse = -inf (what the library promises)."""
    lq, hq, d = q.shape
    if lq == 0 or k.shape[0] == 0:
        return np.zeros((lq, hq, v.shape[-1]), compute), np.full((hq, lq), -np.inf, compute)
    o, lse = ref.attention(q[None], k[None], v[None], softmax_scale, causal, window, softcap, compute=compute)
    return o[0], lse[0]


def ref_varlen(q, k, v, q_lens, k_lens, max_q, **opts):
    """Packed q [total_q, hq, d], k/v [total_k, hkv, d] -> (out64, lse64, out32, lse32) with lse
    [batch, hq, max_q] (NaN past each sequence's end: not compared)."""
    hq, b = q.shape[1], len(q_lens)
    res = []
    for compute in (np.float64, np.float32):
        out = np.zeros(q.shape[:2] + (v.shape[-1],), compute)
        lse = np.full((b, hq, max_q), np.nan, compute)
        cq = np.concatenate([[0], np.cumsum(q_lens)])
        ck = np.concatenate([[0], np.cumsum(k_lens)])
        for i in range(b):
            o, l_ = ref_seq(q[cq[i]:cq[i + 1]], k[ck[i]:ck[i + 1]], v[ck[i]:ck[i + 1]], compute, **opts)
            out[cq[i]:cq[i + 1]] = o
            lse[i, :, :q_lens[i]] = l_
        res += [out, lse]
    return res


def check_out_lse(out, lse, o64, l64, o32, l32, q_lens, dt):
    out = np.asarray(out, dtype=np.float64)
    ref.assert_tolerance("out", out, o64, ref.round_to(o32, dt), dt)
    for i, lq in enumerate(q_lens):
        got = np.asarray(lse[i, :, :lq], dtype=np.float64)
        err, base = ref.max_abs_lse(got, l64[i, :, :lq]), ref.max_abs_lse(l32[i, :, :lq], l64[i, :, :lq])
        assert err <= 2 * base + ref.FLOOR["float32"] * 10, f"lse of sequence {i}: err {err:.3g} (base {base:.3g})"


def cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def packed(rng, lens, h, d, dtype):
    return rng.standard_normal((int(sum(lens)), h, d)).astype(dtype)


def to_pages(rng, k, k_lens, page_size, extra_pages=3):
    """Scatter packed k rows [total_k, h, d] into a shuffled page pool; poison elsewhere.
    -> pool [num_pages, page_size, h, d], block_table [batch, max_blocks] int32 (entries past a
    sequence's used pages are -1: only the entries of used pages may be read)."""
    blocks = [(n + page_size - 1) // page_size for n in k_lens]
    max_blocks = max(1, max(blocks))
    num_pages = sum(blocks) + extra_pages
    perm = rng.permutation(num_pages).astype(np.int32)
    pool = np.full((num_pages, page_size) + k.shape[1:], 1e4, k.dtype)  # poison: a wrong page shows
    table = np.full((len(k_lens), max_blocks), -1, np.int32)
    nxt = 0
    for b in range(len(k_lens)):
        table[b, :blocks[b]] = perm[nxt:nxt + blocks[b]]
        nxt += blocks[b]
    scatter_pages(pool, table, k, k_lens)
    return pool, table


def scatter_pages(pool, table, x, k_lens):
    """Write packed rows x [total_k, h, d] into pool at the pages the block table gives (in place)."""
    page_size, start = pool.shape[1], 0
    for b, n in enumerate(k_lens):
        for t in range(n):
            pool[table[b, t // page_size], t % page_size] = x[start + t]
        start += n
    return pool


# --- varlen forward --------------------------------------------------------------
LENGTHS = [
    ([5, 0, 1, 17, 8], [9, 3, 1, 17, 0]),  # an empty query, an empty key range, single rows
    ([1], [1]),
    ([33, 64, 7], [40, 64, 130]),
]


@pytest.mark.parametrize("q_lens,k_lens", LENGTHS)
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(6, 2)), dict(softcap=3.0)])
@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 32), (6, 2, 64)])
def test_varlen_forward(rng, q_lens, k_lens, opts, hq, hkv, d):
    dtype = np.float32
    q, k, v = packed(rng, q_lens, hq, d, dtype), packed(rng, k_lens, hkv, d, dtype), packed(rng, k_lens, hkv, d, dtype)
    mq, mk = max(q_lens), max(k_lens)
    out, lse = flashattn.flash_attn_varlen_func(q, k, v, cu(q_lens), cu(k_lens), mq, mk, return_lse=True, **opts)
    assert type(out) is np.ndarray and out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (len(q_lens), hq, mq) and lse.dtype == np.float32
    window = opts.pop("window_size", (-1, -1))
    check_out_lse(out, lse, *ref_varlen(q, k, v, q_lens, k_lens, mq, window=window, **opts), q_lens, "float32")


@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_varlen_fp16_and_attn_probs(rng, kernel):
    q_lens, k_lens = [3, 12, 1], [7, 12, 20]
    q, k, v = (packed(rng, n, 4, 64, np.float16) for n in (q_lens, k_lens, k_lens))
    out, lse, probs = flashattn.flash_attn_varlen_func(q, k, v, cu(q_lens), cu(k_lens), 12, 20, causal=True,
                                                       return_attn_probs=True, kernel=kernel)
    assert probs is None and out.dtype == np.float16
    check_out_lse(out, lse, *ref_varlen(q, k, v, q_lens, k_lens, 12, causal=True), q_lens, "float16")


def test_varlen_cpu_flash_refuses(rng):
    q = packed(rng, [4], 2, 16, np.float32)
    with pytest.raises(flashattn.UnsupportedError, match="cpu_flash"):
        flashattn.flash_attn_varlen_func(q, q[:, :1], q[:, :1], cu([4]), cu([4]), 4, 4, kernel="cpu_flash")


@pytest.mark.parametrize("page_size", [1, 16, 7])
def test_varlen_paged(rng, page_size):
    q_lens, k_lens = [2, 1, 9, 0], [16, 1, 35, 7]  # 16 and 35: a page boundary and a partial page
    q = packed(rng, q_lens, 4, 32, np.float32)
    k, v = packed(rng, k_lens, 2, 32, np.float32), packed(rng, k_lens, 2, 32, np.float32)
    kp, table = to_pages(rng, k, k_lens, page_size)
    vp = scatter_pages(np.full_like(kp, 1e4), table, v, k_lens)
    out, lse = flashattn.flash_attn_varlen_func(q, kp, vp, cu(q_lens), cu(k_lens), max(q_lens), max(k_lens),
                                                causal=True, block_table=table, return_lse=True)
    check_out_lse(out, lse, *ref_varlen(q, k, v, q_lens, k_lens, max(q_lens), causal=True), q_lens, "float32")


def test_varlen_seqused_k(rng):
    q_lens, k_lens, used = [3, 4], [10, 12], [6, 0]
    q, k, v = (packed(rng, n, 2, 16, np.float32) for n in (q_lens, k_lens, k_lens))
    out, lse = flashattn.flash_attn_varlen_func(q, k, v, cu(q_lens), cu(k_lens), 4, 12,
                                                seqused_k=np.array(used, np.int32), return_lse=True)
    ck = cu(k_lens)
    k_used = np.concatenate([k[ck[i]:ck[i] + u] for i, u in enumerate(used)])
    v_used = np.concatenate([v[ck[i]:ck[i] + u] for i, u in enumerate(used)])
    check_out_lse(out, lse, *ref_varlen(q, k_used, v_used, q_lens, used, 4), q_lens, "float32")


def test_varlen_errors(rng):
    q = packed(rng, [4, 3], 2, 16, np.float32)
    k = packed(rng, [5, 5], 2, 16, np.float32)
    cq, ck = cu([4, 3]), cu([5, 5])
    f = flashattn.flash_attn_varlen_func
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32"):
        f(q, k, k, cq.astype(np.int64), ck, 4, 5)
    with pytest.raises(ValueError, match="cu_seqlens_k must both have batch \\+ 1|batch \\+ 1 entries"):
        f(q, k, k, cq, ck[:2], 4, 5)
    with pytest.raises(ValueError, match="cu_seqlens_q must be int32 \\[batch \\+ 1\\]"):
        f(q, k, k, cq[:1], ck[:1], 4, 5)
    with pytest.raises(ValueError, match="non-decreasing"):
        f(q, k, k, np.array([0, 4, 3], np.int32), ck, 4, 5)
    with pytest.raises(ValueError, match="has only 7 rows"):
        f(q, k, k, np.array([0, 4, 8], np.int32), ck, 4, 5)
    with pytest.raises(ValueError, match="maximum"):
        f(q, k, k, cq, ck, 3, 5)  # max_seqlen_q too small
    with pytest.raises(ValueError, match="dropout_p"):
        f(q, k, k, cq, ck, 4, 5, dropout_p=0.1)
    with pytest.raises(ValueError, match="alibi_slopes"):
        f(q, k, k, cq, ck, 4, 5, alibi_slopes=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="page pools"):
        f(q, k, k, cq, ck, 4, 5, block_table=np.zeros((2, 1), np.int32))
    with pytest.raises(ValueError, match="packed \\[total_q"):
        f(q[None], k, k, cq, ck, 4, 5)
    with pytest.raises(ValueError, match="need block_table"):
        f(q, k[None], k[None], cq, ck, 4, 5)
    with pytest.raises(TypeError, match="must be an array"):
        f(q, k, k, [0, 4, 7], ck, 4, 5)
    pool = rng.standard_normal((3, 4, 2, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="out of range"):
        f(q, pool, pool, cq, cu([4, 4]), 4, 4, block_table=np.array([[0], [3]], np.int32))
    with pytest.raises(TypeError, match="block_table must be int32"):
        f(q, pool, pool, cq, cu([4, 4]), 4, 4, block_table=np.array([[0], [1]], np.int64))


# --- KV cache ---------------------------------------------------------------------
def rope(x, cos, sin, pos, interleaved):
    """x [n, h, d] rows at positions pos [n]; cos/sin [max_pos, rd/2] -> rotated copy (float64)."""
    x = np.asarray(x, np.float64).copy()
    half = cos.shape[1]
    c, s = np.asarray(cos, np.float64)[pos][:, None, :], np.asarray(sin, np.float64)[pos][:, None, :]
    i1 = np.arange(0, 2 * half, 2) if interleaved else np.arange(half)
    i2 = i1 + 1 if interleaved else i1 + half
    x1, x2 = x[..., i1].copy(), x[..., i2].copy()
    x[..., i1] = x1 * c - x2 * s
    x[..., i2] = x1 * s + x2 * c
    return x


def rope_tables(max_pos, rd):
    inv = 1.0 / (10000 ** (np.arange(0, rd, 2) / rd))
    ang = np.arange(max_pos)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def make_cache(rng, lens, capacity, h, d, dtype, page_size=None, extra_pages=2):
    """Dense [b, capacity, h, d] cache, or (page_size given) a shuffled page pool + block table.
    -> (k_cache, v_cache, block_table or None, gather(cache, b, n) -> first n rows of sequence b)."""
    b = len(lens)
    if page_size is None:
        kc = rng.standard_normal((b, capacity, h, d)).astype(dtype)
        vc = rng.standard_normal((b, capacity, h, d)).astype(dtype)
        return kc, vc, None, lambda c, i, n: c[i, :n]
    blocks = (capacity + page_size - 1) // page_size
    num_pages = b * blocks + extra_pages
    table = rng.permutation(num_pages)[:b * blocks].reshape(b, blocks).astype(np.int32)
    kc = rng.standard_normal((num_pages, page_size, h, d)).astype(dtype)
    vc = rng.standard_normal((num_pages, page_size, h, d)).astype(dtype)

    def gather(c, i, n):
        rows = [c[table[i, t // page_size], t % page_size] for t in range(n)]
        return np.stack(rows) if rows else np.zeros((0, h, d), c.dtype)

    return kc, vc, table, gather


def ref_kvcache(q, kc, vc, gather, lens, **opts):
    b, sq, hq, _ = q.shape
    res = []
    for compute in (np.float64, np.float32):
        out = np.zeros(q.shape, compute)
        lse = np.zeros((b, hq, sq), compute)
        for i in range(b):
            out[i], lse[i] = ref_seq(q[i], gather(kc, i, lens[i]), gather(vc, i, lens[i]), compute, **opts)
        res += [out, lse]
    return res


@pytest.mark.parametrize("page_size", [None, 1, 16, 7])
@pytest.mark.parametrize("sq,causal", [(1, False), (3, True)])
def test_kvcache_paged(rng, page_size, sq, causal):
    ps = page_size or 16
    lens = [ps, 2 * ps, 0 if sq == 1 else 3, 2 * ps + 1, 5]  # at page boundaries, empty, partial pages
    capacity = 3 * ps + 4
    hq, hkv, d = 8, 2, 64
    q = rng.standard_normal((len(lens), sq, hq, d)).astype(np.float32)
    kc, vc, table, gather = make_cache(rng, lens, capacity, hkv, d, np.float32, page_size)
    out, lse = flashattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=np.array(lens, np.int32),
                                                 block_table=table, causal=causal, return_softmax_lse=True)
    assert out.shape == q.shape and lse.shape == (len(lens), hq, sq)
    o64, l64, o32, l32 = ref_kvcache(q, kc, vc, gather, lens, causal=causal)
    ref.assert_tolerance("out", out, o64, ref.round_to(o32, "float32"), "float32")
    err, base = ref.max_abs_lse(lse, l64), ref.max_abs_lse(l32, l64)
    assert err <= 2 * base + ref.FLOOR["float32"] * 10, "lse"


def test_kvcache_int_seqlens_and_full_cache(rng):
    q = rng.standard_normal((2, 1, 4, 32)).astype(np.float32)
    kc, vc, _, gather = make_cache(rng, [9, 9], 9, 4, 32, np.float32)
    o64, _, o32, _ = ref_kvcache(q, kc, vc, gather, [6, 6])
    out = flashattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=6)
    ref.assert_tolerance("out", out, o64, ref.round_to(o32, "float32"), "float32")
    o64, _, o32, _ = ref_kvcache(q, kc, vc, gather, [9, 9])
    out = flashattn.flash_attn_with_kvcache(q, kc, vc)  # no cache_seqlens: the whole cache
    ref.assert_tolerance("out", out, o64, ref.round_to(o32, "float32"), "float32")


@pytest.mark.parametrize("page_size", [None, 1, 16, 5])
@pytest.mark.parametrize("rotary", [None, "interleaved", "halves"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kvcache_append(rng, page_size, rotary, dtype):
    ps = page_size or 16
    lens = [0, ps, ps - 1, 2 * ps]  # appends that start at / cross page boundaries
    sn, hq, hkv, d = 2, 4, 2, 64
    capacity = 2 * ps + sn + 3
    kc, vc, table, gather = make_cache(rng, lens, capacity, hkv, d, dtype, page_size)
    kc0, vc0 = kc.copy(), vc.copy()
    q = rng.standard_normal((len(lens), sn, hq, d)).astype(dtype)
    kn = rng.standard_normal((len(lens), sn, hkv, d)).astype(dtype)
    vn = rng.standard_normal((len(lens), sn, hkv, d)).astype(dtype)
    q_in = q.copy()
    cos = sin = None
    interleaved = rotary == "interleaved"
    if rotary:
        cos, sin = rope_tables(capacity + 1, 32)  # rotary_dim 32 < head_dim: the rest passes through
    seqlens = np.array(lens, np.int32)
    out, lse = flashattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cos, sin, cache_seqlens=seqlens,
                                                 block_table=table, causal=True, rotary_interleaved=interleaved,
                                                 return_softmax_lse=True)
    assert np.array_equal(q, q_in), "q must not be modified"
    assert np.array_equal(seqlens, lens), "cache_seqlens must not be modified"
    dt = ref.dtype_name(q)
    # Expected new cache rows and rotated q: float64, and the float32 path rounded to the dtype.
    new_lens = [n + sn for n in lens]
    for i, n in enumerate(lens):
        pos = np.arange(n, n + sn)
        kexp = rope(kn[i], cos, sin, pos, interleaved) if rotary else kn[i].astype(np.float64)
        got_k = gather(kc, i, n + sn)
        ref.assert_tolerance(f"k_cache[{i}]", got_k[n:], kexp, ref.round_to(kexp.astype(np.float32), dt), dt)
        assert np.array_equal(got_k[:n], gather(kc0, i, n)), "rows before cache_seqlens must stay"
        assert np.array_equal(gather(vc, i, n + sn)[n:], vn[i]), "v rows are copied as they are"
    # Rows past the appended ones are untouched.
    if page_size is None:
        for i, n in enumerate(lens):
            assert np.array_equal(kc[i, n + sn:], kc0[i, n + sn:]) and np.array_equal(vc[i, n + sn:], vc0[i, n + sn:])
    # Attention: rotated q over the (rounded, as stored) cache.
    qr = np.stack([rope(q[i], cos, sin, np.arange(n, n + sn), interleaved) if rotary else q[i].astype(np.float64)
                   for i, n in enumerate(lens)])
    qr_low = ref.round_to(qr.astype(np.float32), dt)  # what the kernel attends with
    o64, l64, _, _ = ref_kvcache(qr, kc.astype(np.float64), vc.astype(np.float64), gather, new_lens, causal=True)
    _, _, o32, _ = ref_kvcache(qr_low.astype(dtype), kc, vc, gather, new_lens, causal=True)
    ref.assert_tolerance("out", out, o64, ref.round_to(o32, dt), dt)


def test_kvcache_errors(rng):
    q = rng.standard_normal((2, 1, 4, 32)).astype(np.float32)
    kc, vc, _, _ = make_cache(rng, [4, 4], 8, 2, 32, np.float32)
    kn = rng.standard_normal((2, 1, 2, 32)).astype(np.float32)
    f = flashattn.flash_attn_with_kvcache
    lens = np.array([3, 7], np.int32)
    with pytest.raises(ValueError, match="cache_batch_idx"):
        f(q, kc, vc, cache_seqlens=lens, cache_batch_idx=np.arange(2, dtype=np.int32))
    with pytest.raises(ValueError, match="cache_leftpad"):
        f(q, kc, vc, cache_seqlens=lens, cache_leftpad=lens)
    with pytest.raises(ValueError, match="alibi_slopes"):
        f(q, kc, vc, cache_seqlens=lens, alibi_slopes=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="cache too small"):
        f(q, kc, vc, kn, kn, cache_seqlens=np.array([3, 8], np.int32))
    with pytest.raises(ValueError, match="seqused_k"):
        f(q, kc, vc, cache_seqlens=np.array([3, 9], np.int32))
    with pytest.raises(TypeError, match="cache_seqlens must be int32"):
        f(q, kc, vc, kn, kn, cache_seqlens=lens.astype(np.int64))
    with pytest.raises(ValueError, match="given together"):
        f(q, kc, vc, kn, None, cache_seqlens=lens)
    with pytest.raises(ValueError, match="pass k and v"):
        f(q, kc, vc, cache_seqlens=lens, rotary_cos=np.ones((9, 8), np.float32), rotary_sin=np.ones((9, 8), np.float32))
    with pytest.raises(ValueError, match="page pools"):
        f(q, kc[0], vc[0], cache_seqlens=lens, block_table=np.zeros((2, 1), np.int32))
    with pytest.raises(ValueError, match="needs cache_seqlens"):
        f(q, kc, vc, kn, kn)
    cos, sin = rope_tables(16, 16)
    q3 = rng.standard_normal((2, 3, 4, 32)).astype(np.float32)
    k3 = rng.standard_normal((2, 3, 2, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="causal=True"):
        f(q3, kc, vc, k3, k3, cos, sin, cache_seqlens=np.array([1, 2], np.int32))
    with pytest.raises(ValueError, match="rotary"):
        f(q, kc, vc, k3, k3, cos, sin, cache_seqlens=np.array([1, 2], np.int32), causal=True)
    with pytest.raises(ValueError, match="rotary tables"):
        f(q, kc, vc, kn, kn, cos[:4], sin[:4], cache_seqlens=lens)
    pool = rng.standard_normal((3, 4, 2, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="out of range"):
        f(q, pool, pool, kn, kn, cache_seqlens=np.array([3, 4], np.int32), block_table=np.array([[0, 1], [2, 3]],
                                                                                                 np.int32))


# --- torch: CPU autograd, CUDA parity ------------------------------------------------
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")


def _cuda_ok():
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available() and flashattn.cuda_compiled()


cuda_only = pytest.mark.skipif(not _cuda_ok(), reason="no CUDA GPU, torch or flashattn built without CUDA")


@needs_torch
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(4, 1), softcap=2.0)])
def test_torch_cpu_varlen_autograd(rng, opts):
    import torch

    q_lens, k_lens = [4, 0, 1, 9], [6, 3, 1, 9]
    q, k, v = (packed(rng, n, h, 32, np.float32) for n, h in ((q_lens, 4), (k_lens, 2), (k_lens, 2)))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    out, lse = flashattn.flash_attn_varlen_func(tq, tk, tv, torch.tensor(cu(q_lens)), torch.tensor(cu(k_lens)), 9, 9,
                                                return_lse=True, **opts)
    assert out.requires_grad and not lse.requires_grad
    out.backward(torch.tensor(dout))
    check_varlen_torch(out, lse, (tq.grad, tk.grad, tv.grad), q, k, v, dout, q_lens, k_lens, 9, opts)


def check_varlen_torch(out, lse, grads, q, k, v, dout, q_lens, k_lens, max_q, opts):
    """out / lse / (dq, dk, dv) of packed float32 varlen attention (torch, CPU) against the per-sequence
    float64 reference (rows of empty sequences: zero gradients)."""
    opts = dict(opts)
    window = opts.pop("window_size", (-1, -1))
    o64, l64, o32, l32 = ref_varlen(q, k, v, q_lens, k_lens, max_q, window=window, **opts)
    check_out_lse(out.detach().numpy(), lse.numpy(), o64, l64, o32, l32, q_lens, "float32")
    dq, dk, dv = grads
    cq, ck = cu(q_lens), cu(k_lens)
    for i in range(len(q_lens)):
        sq_, sk_ = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        if cq[i + 1] == cq[i] or ck[i + 1] == ck[i]:
            assert not dq[sq_].any() and (ck[i + 1] == ck[i] or not dk[sk_].any())
            continue
        args = (dout[None, sq_], q[None, sq_], k[None, sk_], v[None, sk_])
        g64 = ref.attention_backward(*args, window=window, **opts)
        g32 = ref.attention_backward(*args, window=window, compute=np.float32, **opts)
        for name, g, r64, r32 in zip(("dq", "dk", "dv"), (dq[sq_], dk[sk_], dv[sk_]), g64, g32):
            ref.assert_tolerance(f"{name}[{i}]", g.numpy(), r64[0], r32[0], "float32")


@needs_torch
def test_torch_cpu_varlen_paged_autograd(rng):
    """Gradients land in the page pools: dk/dv of a used row equal the per-sequence reference,
    rows of unused pages get 0."""
    import torch

    q_lens, k_lens, page_size = [3, 5], [7, 12], 5
    q, k, v = (packed(rng, n, h, 16, np.float32) for n, h in ((q_lens, 4), (k_lens, 2), (k_lens, 2)))
    kp, table = to_pages(rng, k, k_lens, page_size)
    vp = scatter_pages(np.zeros_like(kp), table, v, k_lens)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, kp, vp))
    out = flashattn.flash_attn_varlen_func(tq, tk, tv, torch.tensor(cu(q_lens)), torch.tensor(cu(k_lens)), 5, 12,
                                           causal=True, block_table=torch.tensor(table))
    out.backward(torch.tensor(dout))
    cq, ck = cu(q_lens), cu(k_lens)
    used = np.zeros(kp.shape[:2], bool)
    for i in range(len(q_lens)):
        sq_, sk_ = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        args = (dout[None, sq_], q[None, sq_], k[None, sk_], v[None, sk_])
        g64 = ref.attention_backward(*args, causal=True)
        g32 = ref.attention_backward(*args, causal=True, compute=np.float32)
        rows = [(table[i, t // page_size], t % page_size) for t in range(k_lens[i])]
        for r in rows:
            used[r] = True
        got_dk = np.stack([tk.grad[r].numpy() for r in rows])
        got_dv = np.stack([tv.grad[r].numpy() for r in rows])
        for name, g, r64, r32 in (("dq", tq.grad[sq_].numpy(), g64[0][0], g32[0][0]),
                                  ("dk", got_dk, g64[1][0], g32[1][0]), ("dv", got_dv, g64[2][0], g32[2][0])):
            ref.assert_tolerance(f"{name}[{i}]", g, r64, r32, "float32")
    assert not tk.grad.numpy()[~used].any() and not tv.grad.numpy()[~used].any()


@needs_torch
def test_torch_cpu_kvcache(rng):
    import torch

    lens = [16, 3]
    kc, vc, table, gather = make_cache(rng, lens, 32, 2, 32, np.float32, 16)
    q = rng.standard_normal((2, 1, 4, 32)).astype(np.float32)
    kn = rng.standard_normal((2, 1, 2, 32)).astype(np.float32)
    cos, sin = rope_tables(40, 32)
    tkc, tvc = torch.tensor(kc), torch.tensor(vc)
    out = flashattn.flash_attn_with_kvcache(torch.tensor(q), tkc, tvc, torch.tensor(kn), torch.tensor(kn),
                                            torch.tensor(cos), torch.tensor(sin), torch.tensor(lens, dtype=torch.int32),
                                            block_table=torch.tensor(table), rotary_interleaved=False)
    kc_np, vc_np = tkc.numpy(), tvc.numpy()
    qr = np.stack([rope(q[i], cos, sin, np.array([n]), False) for i, n in enumerate(lens)])
    o64, _, o32, _ = ref_kvcache(qr, kc_np, vc_np, gather, [n + 1 for n in lens])
    ref.assert_tolerance("out", out.numpy(), o64, o32, "float32")
    with pytest.raises(ValueError, match="inference only"):
        flashattn.flash_attn_with_kvcache(torch.tensor(q, requires_grad=True), tkc, tvc, cache_seqlens=3)


# --- torch.compile(fullgraph=True): the flashattn::varlen_fwd / varlen_bwd / kvcache_fwd custom ops ----
def _compile_recording(fn, graphs):
    """torch.compile(fn, fullgraph=True) with inductor, keeping each Dynamo graph's code (to see the ops)."""
    import torch
    from torch._inductor.compile_fx import compile_fx

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return compile_fx(gm, example_inputs)

    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)


@needs_torch
@pytest.mark.parametrize("paged", [False, True])
def test_torch_compile_varlen_cpu(rng, paged):
    """Forward + backward of a compiled function: equal to eager, and (packed) to the float64 reference.
    The paged variant also passes seqused_k: both Optional[Tensor] arguments reach the op in the graph."""
    import torch

    q_lens, k_lens = [4, 0, 1, 9], [6, 3, 1, 9]
    q, k, v = (packed(rng, n, h, 32, np.float32) for n, h in ((q_lens, 4), (k_lens, 2), (k_lens, 2)))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    block_table = seqused = None
    if paged:
        k, table = to_pages(rng, k, k_lens, 4)
        v = scatter_pages(np.zeros_like(k), table, v, k_lens)
        block_table, seqused = torch.tensor(table), torch.tensor([5, 3, 0, 9], dtype=torch.int32)
    opts = dict(causal=True) if paged else dict(window_size=(4, 1), softcap=2.0)

    def attn(q_, k_, v_, cq, ck, bt, su):
        out, lse = flashattn.flash_attn_varlen_func(q_, k_, v_, cq, ck, 9, 9, block_table=bt, seqused_k=su,
                                                    return_lse=True, **opts)
        return out, lse

    graphs = []
    compiled = _compile_recording(attn, graphs)
    cq, ck = torch.tensor(cu(q_lens)), torch.tensor(cu(k_lens))
    results = []
    for fn in (attn, compiled):
        tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
        out, lse = fn(tq, tk, tv, cq, ck, block_table, seqused)
        assert out.requires_grad and not lse.requires_grad
        out.backward(torch.tensor(dout))
        results.append((out.detach(), lse, tq.grad, tk.grad, tv.grad))
    assert len(graphs) == 1 and "flashattn.varlen_fwd" in graphs[0], graphs
    for name, e, c in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert torch.equal(e, c), f"{name}: compiled differs from eager by {(e - c).abs().max().item():.3g}"
    if not paged:
        out, lse, dq, dk, dv = results[1]
        check_varlen_torch(out, lse, (dq, dk, dv), q, k, v, dout, q_lens, k_lens, 9, opts)


@needs_torch
@pytest.mark.parametrize("page_size,rotary,int_seqlens", [(None, False, False), (5, True, False),
                                                          (None, False, True)])
def test_torch_compile_kvcache_append(rng, page_size, rotary, int_seqlens):
    """A compiled decode step (append + attend, twice): caches mutated exactly like eager, out/lse equal,
    q and cache_seqlens untouched."""
    import torch

    lens = [4, 4, 4] if int_seqlens else [0, 5, 9]
    sn, hq, hkv, d, capacity = 2, 4, 2, 32, 16
    kc, vc, table, gather = make_cache(rng, lens, capacity, hkv, d, np.float32, page_size)
    bt = None if table is None else torch.tensor(table)
    cos = sin = None
    if rotary:
        c_, s_ = rope_tables(capacity + 1, 16)
        cos, sin = torch.tensor(c_), torch.tensor(s_)

    def step(q_, kc_, vc_, kn_, vn_, seqlens):
        return flashattn.flash_attn_with_kvcache(q_, kc_, vc_, kn_, vn_, cos, sin, cache_seqlens=seqlens,
                                                 block_table=bt, causal=True, rotary_interleaved=False,
                                                 return_softmax_lse=True)

    graphs = []
    compiled = _compile_recording(step, graphs)
    caches = {fn: (torch.tensor(kc), torch.tensor(vc)) for fn in (step, compiled)}
    pos = list(lens)
    for _ in range(2):  # two decode steps: the compiled function runs again on mutated caches
        q = torch.tensor(rng.standard_normal((len(lens), sn, hq, d)).astype(np.float32))
        kn, vn = (torch.tensor(rng.standard_normal((len(lens), sn, hkv, d)).astype(np.float32)) for _ in range(2))
        q_in = q.clone()
        seqlens = pos[0] if int_seqlens else torch.tensor(pos, dtype=torch.int32)
        res = {}
        with torch.no_grad():
            for fn in (step, compiled):
                res[fn] = fn(q, *caches[fn], kn, vn, seqlens)
        assert torch.equal(q, q_in), "q must not be modified"
        if not int_seqlens:
            assert seqlens.tolist() == pos, "cache_seqlens must not be modified"
        for name, e, c in zip(("k_cache", "v_cache", "out", "lse"), caches[step] + res[step],
                              caches[compiled] + res[compiled]):
            assert torch.equal(e, c), f"{name}: compiled differs from eager by {(e - c).abs().max().item():.3g}"
        vcn = caches[compiled][1].numpy()
        for i, n in enumerate(pos):
            assert np.array_equal(gather(vcn, i, n + sn)[n:], vn[i].numpy()), f"v rows of sequence {i} not appended"
        pos = [n + sn for n in pos]
        # Against the reference (no rotary: q and k are used as given).
        if not rotary:
            kcn = caches[compiled][0].numpy()
            o64, _, o32, _ = ref_kvcache(q.numpy(), kcn, vcn, gather, pos, causal=True)
            ref.assert_tolerance("out", res[compiled][0].numpy(), o64, o32, "float32")
    # One graph (an int cache_seqlens that changes: one recompile with it symbolic), no kernel of its own.
    assert 1 <= len(graphs) <= (2 if int_seqlens else 1), graphs
    assert all("flashattn.kvcache_fwd" in g and "aten" not in g for g in graphs), graphs


@needs_torch
def test_torch_opcheck_varlen_kvcache(rng):
    """torch.library.opcheck (schema incl. the declared cache mutation, fake kernels, autograd registration,
    AOT dispatch) on small CPU cases of the three ops."""
    import torch

    t = lambda x, **kw: torch.tensor(x, **kw)  # noqa: E731
    q_lens, k_lens = [3, 0, 5], [4, 2, 6]
    q = t(packed(rng, q_lens, 4, 16, np.float32), requires_grad=True)
    k, v = (t(packed(rng, k_lens, 2, 16, np.float32), requires_grad=True) for _ in range(2))
    cq, ck = t(cu(q_lens)), t(cu(k_lens))
    fwd, bwd, kv = torch.ops.flashattn.varlen_fwd.default, torch.ops.flashattn.varlen_bwd.default, \
        torch.ops.flashattn.kvcache_fwd.default
    torch.library.opcheck(fwd, (q, k, v, cq, ck, 5, 6, 0.0, True, -1, -1, 0.0, None, None, False, 0))
    kp, table = to_pages(rng, packed(rng, k_lens, 2, 16, np.float32), k_lens, 3)
    kp, vp = t(kp, requires_grad=True), t(kp * 0.5, requires_grad=True)
    paged = (cq, ck, 5, 6, 0.3, False, 2, -1, 1.5, t(table), t(np.array([4, 1, 6], np.int32)), False, 0)
    torch.library.opcheck(fwd, (q, kp, vp) + paged)
    out, lse = fwd(q, kp, vp, *paged)
    dout = t(rng.standard_normal(out.shape).astype(np.float32))
    torch.library.opcheck(bwd, (dout, q.detach(), kp.detach(), vp.detach(), out.detach(), lse) + paged)
    kc, vc = (t(rng.standard_normal((2, 8, 2, 16)).astype(np.float32)) for _ in range(2))
    qd = t(rng.standard_normal((2, 2, 4, 16)).astype(np.float32))
    kn, vn = (t(rng.standard_normal((2, 2, 2, 16)).astype(np.float32)) for _ in range(2))
    cos, sin = (t(x) for x in rope_tables(12, 8))
    lens = t(np.array([3, 5], np.int32))
    for args in [(kn, vn, None, None, lens, -1, None, 0.0, True, -1, -1, 0.0, True, 0),
                 (kn, vn, cos, sin, lens, -1, None, 0.0, True, -1, -1, 0.0, False, 0),
                 (kn, vn, None, None, None, 4, None, 0.0, False, 3, 0, 0.0, False, 0),  # int cache_seqlens
                 (None, None, None, None, None, -1, None, 0.0, False, -1, -1, 0.0, False, 0)]:  # whole cache
        torch.library.opcheck(kv, (qd, kc, vc) + args)


@needs_torch
def test_torch_compile_errors_keep_messages(rng):
    """Without fullgraph, Dynamo falls back to eager at a raise, so the library's own exceptions come out
    of a compiled function unchanged (with fullgraph=True torch wraps them: an Unsupported naming them)."""
    import torch

    q, k = (torch.tensor(packed(rng, [3, 5], h, 16, np.float32)) for h in (4, 2))
    cq, ck = torch.tensor(cu([3, 5])), torch.tensor(cu([3, 5]))
    torch._dynamo.reset()
    f = torch.compile(lambda q_, k_, **kw: flashattn.flash_attn_varlen_func(q_, k_, k_, cq, ck, 5, 5, **kw))
    with pytest.raises(ValueError, match="dropout_p"):
        f(q, k, dropout_p=0.1)
    with pytest.raises(ValueError, match="block_table"):
        f(q, k, block_table=torch.zeros((2, 1), dtype=torch.int32))
    torch._dynamo.reset()
    g = torch.compile(lambda q_, k_: flashattn.flash_attn_with_kvcache(q_, k_, k_, k_[:, :1], None, cache_seqlens=1))
    with pytest.raises(ValueError, match="given together"):
        g(q[None], k[None])


@cuda_only
@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(16, 0))])
def test_cuda_varlen(rng, dtype_name, opts):
    import torch

    if dtype_name == "bfloat16":
        pytest.importorskip("ml_dtypes")
    dt = getattr(torch, dtype_name)
    q_lens, k_lens = [1, 0, 130, 64, 7], [200, 5, 130, 0, 300]
    mk = lambda lens, h: torch.randn(int(sum(lens)), h, 128, dtype=dt)  # noqa: E731
    q, k, v = mk(q_lens, 8), mk(k_lens, 2), mk(k_lens, 2)
    cq, ck = torch.tensor(cu(q_lens), device="cuda"), torch.tensor(cu(k_lens), device="cuda")
    out, lse = flashattn.flash_attn_varlen_func(q.cuda(), k.cuda(), v.cuda(), cq, ck, 130, 300, return_lse=True,
                                                **opts)
    torch.cuda.synchronize()
    window = opts.pop("window_size", (-1, -1))
    qn, kn, vn = (x.float().numpy() for x in (q, k, v))
    check_out_lse(out.float().cpu().numpy(), lse.cpu().numpy(),
                  *ref_varlen(qn, kn, vn, q_lens, k_lens, 130, window=window, **opts), q_lens, dtype_name)


def _torch_seq_attention(q, k, v, causal=False, window=(-1, -1), softcap=0.0):
    """One sequence q [lq, hq, d], k/v [lk, hkv, d] in q's dtype and device (naive: the float64 reference in
    float64, the low-precision baseline of the tolerance rule in fp16/bf16); bottom-right masks."""
    import torch

    lq, lk, g = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = torch.einsum("ihd,jhd->hij", q, k) * q.shape[-1] ** -0.5
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(lq, device=q.device)[:, None]
    j = torch.arange(lk, device=q.device)[None, :]
    left, right = window
    right = 0 if causal else right
    visible = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if right >= 0:
        visible &= j <= i + lk - lq + right
    if left >= 0:
        visible &= j >= i + lk - lq - left
    p = torch.nan_to_num(torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1))  # no key: P = 0
    return torch.einsum("hij,jhd->ihd", p, v)


@cuda_only
@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(16, 0)), dict(softcap=5.0)])
def test_cuda_varlen_backward(dtype_name, opts):
    """Autograd through flash_attn_varlen_func on CUDA (the fa2 varlen backward) against float64 per sequence;
    sequences without keys (or without queries) get exactly zero gradients."""
    import torch

    dt = getattr(torch, dtype_name)
    q_lens, k_lens = [1, 0, 130, 64, 7], [200, 5, 130, 0, 300]
    gen = torch.Generator().manual_seed(11)
    mk = lambda lens, h: torch.randn(int(sum(lens)), h, 64, generator=gen).to(dt).cuda()  # noqa: E731
    q, k, v = mk(q_lens, 4), mk(k_lens, 2), mk(k_lens, 2)
    dout = mk(q_lens, 4)
    cq, ck = (torch.tensor(cu(x), device="cuda") for x in (q_lens, k_lens))
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flashattn.flash_attn_varlen_func(*xs, cq, ck, 130, 300, **opts)
    dq, dk, dv = torch.autograd.grad(out, xs, dout)
    seq_opts = dict(causal=opts.get("causal", False), window=opts.get("window_size", (-1, -1)),
                    softcap=opts.get("softcap", 0.0))
    bq, bk = cu(q_lens).tolist(), cu(k_lens).tolist()
    for b in range(len(q_lens)):
        rq, rk = slice(bq[b], bq[b + 1]), slice(bk[b], bk[b + 1])
        if q_lens[b] == 0 or k_lens[b] == 0:
            assert not dq[rq].any() and not dk[rk].any() and not dv[rk].any(), f"sequence {b}: nonzero grads"
            continue
        grads = {}
        for name, cast in (("64", torch.float64), ("low", dt)):
            x = [t[r].detach().to(cast).requires_grad_() for t, r in zip((q, k, v), (rq, rk, rk))]
            grads[name] = torch.autograd.grad(_torch_seq_attention(*x, **seq_opts), x, dout[rq].to(cast))
        for i, (name, got) in enumerate((("dq", dq[rq]), ("dk", dk[rk]), ("dv", dv[rk]))):
            ref.assert_tolerance(f"{name}[{b}]", got.double().cpu().numpy(), grads["64"][i].cpu().numpy(),
                                 grads["low"][i].double().cpu().numpy(), dtype_name)


@cuda_only
@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("page_size", [1, 16, 7])
def test_cuda_varlen_paged_decode(rng, page_size):
    """Decode-shaped varlen (1-2 query rows per sequence) over a page pool: the split-KV decode kernel."""
    import torch

    q_lens, k_lens = [1, 2, 0, 1], [16 * 7, 1, 9, 500]
    q = packed(rng, q_lens, 16, 128, np.float16)
    k, v = packed(rng, k_lens, 4, 128, np.float16), packed(rng, k_lens, 4, 128, np.float16)
    kp, table = to_pages(rng, k, k_lens, page_size)
    vp = scatter_pages(np.zeros_like(kp), table, v, k_lens)
    kp[kp == 1e4] = 0  # the poison does not fit fp16 comfortably; unused rows are not read anyway
    c = lambda x: torch.tensor(x, device="cuda")  # noqa: E731
    out, lse = flashattn.flash_attn_varlen_func(c(q), c(kp), c(vp), c(cu(q_lens)), c(cu(k_lens)), 2, 500,
                                                causal=True, block_table=c(table), return_lse=True)
    torch.cuda.synchronize()
    check_out_lse(out.float().cpu().numpy(), lse.cpu().numpy(), *ref_varlen(q, k, v, q_lens, k_lens, 2, causal=True),
                  q_lens, "float16")


@cuda_only
@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("page_size", [None, 1, 16, 7, 256])
@pytest.mark.parametrize("rotary", [None, "interleaved", "halves"])
def test_cuda_kvcache(rng, page_size, rotary):
    import torch

    ps = page_size or 64
    lens = [ps, 2 * ps - 1, 0, 1000]
    capacity = 1040
    hq, hkv, d = 32, 8, 128
    kc, vc, table, gather = make_cache(rng, lens, capacity, hkv, d, np.float16, page_size)
    q = rng.standard_normal((len(lens), 1, hq, d)).astype(np.float16)
    kn = rng.standard_normal((len(lens), 1, hkv, d)).astype(np.float16)
    vn = rng.standard_normal((len(lens), 1, hkv, d)).astype(np.float16)
    cos = sin = None
    if rotary:
        cos, sin = rope_tables(capacity + 1, 64)
    c = lambda x: None if x is None else torch.tensor(x, device="cuda")  # noqa: E731
    tkc, tvc = c(kc), c(vc)
    out, lse = flashattn.flash_attn_with_kvcache(c(q), tkc, tvc, c(kn), c(vn), c(cos), c(sin),
                                                 c(np.array(lens, np.int32)), block_table=c(table),
                                                 rotary_interleaved=rotary == "interleaved", return_softmax_lse=True)
    torch.cuda.synchronize()
    kc2, vc2 = tkc.cpu().numpy(), tvc.cpu().numpy()
    new_lens = [n + 1 for n in lens]
    for i, n in enumerate(lens):
        kexp = rope(kn[i], cos, sin, np.array([n]), rotary == "interleaved") if rotary else kn[i].astype(np.float64)
        ref.assert_tolerance(f"k_cache[{i}]", gather(kc2, i, n + 1)[n:], kexp,
                             ref.round_to(kexp.astype(np.float32), "float16"), "float16")
    qr = np.stack([rope(q[i], cos, sin, np.array([n]), rotary == "interleaved") if rotary else q[i].astype(np.float64)
                   for i, n in enumerate(lens)])
    o64, l64, _, _ = ref_kvcache(qr, kc2.astype(np.float64), vc2.astype(np.float64), gather, new_lens)
    _, _, o32, l32 = ref_kvcache(ref.round_to(qr.astype(np.float32), "float16").astype(np.float16), kc2, vc2, gather,
                                 new_lens)
    ref.assert_tolerance("out", out.float().cpu().numpy(), o64, ref.round_to(o32, "float16"), "float16")
    err, base = ref.max_abs_lse(lse.cpu().numpy(), l64), ref.max_abs_lse(l32, l64)
    assert err <= 2 * base + ref.FLOOR["float32"] * 10, "lse"


@cuda_only
@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("num_splits", [1, 4])
def test_cuda_kvcache_num_splits(rng, num_splits):
    import torch

    lens = [4000]
    kc, vc, _, gather = make_cache(rng, lens, 4096, 8, 128, np.float16)
    q = rng.standard_normal((1, 1, 32, 128)).astype(np.float16)
    c = lambda x: torch.tensor(x, device="cuda")  # noqa: E731
    out = flashattn.flash_attn_with_kvcache(c(q), c(kc), c(vc), cache_seqlens=4000, num_splits=num_splits)
    torch.cuda.synchronize()
    o64, _, o32, _ = ref_kvcache(q, kc, vc, gather, lens)
    ref.assert_tolerance("out", out.float().cpu().numpy(), o64, ref.round_to(o32, "float16"), "float16")


@cuda_only
@pytest.mark.timeout(120, method="thread")
def test_cuda_compile_varlen_kvcache(rng):
    """torch.compile(fullgraph=True) on CUDA: varlen prefill and a decode step with an append (paged cache,
    rotary) match eager; the caches are mutated exactly like eager; compiled varlen gradients on CUDA match eager."""
    import torch

    c = lambda x: None if x is None else torch.tensor(x, device="cuda")  # noqa: E731
    q_lens, k_lens = [1, 0, 130, 64], [200, 5, 130, 300]
    q = c(packed(rng, q_lens, 8, 128, np.float16))
    k, v = c(packed(rng, k_lens, 2, 128, np.float16)), c(packed(rng, k_lens, 2, 128, np.float16))
    cq, ck = c(cu(q_lens)), c(cu(k_lens))

    def prefill(q_, k_, v_):
        return flashattn.flash_attn_varlen_func(q_, k_, v_, cq, ck, 130, 300, causal=True, return_lse=True)

    torch._dynamo.reset()
    with torch.no_grad():
        eo, el = prefill(q, k, v)
        co, cl = torch.compile(prefill, fullgraph=True)(q, k, v)
    torch.cuda.synchronize()
    assert (eo.float() - co.float()).abs().max().item() <= 1e-3
    for i, n in enumerate(q_lens):
        torch.testing.assert_close(cl[i, :, :n], el[i, :, :n], rtol=0, atol=1e-4)

    lens = [64, 127, 0, 1000]
    kc, vc, table, gather = make_cache(rng, lens, 1040, 8, 128, np.float16, 16)
    cos, sin = (c(x) for x in rope_tables(1041, 64))
    bt, seqlens = c(table), c(np.array(lens, np.int32))

    def decode(q_, kc_, vc_, kn_, vn_):
        return flashattn.flash_attn_with_kvcache(q_, kc_, vc_, kn_, vn_, cos, sin, seqlens, block_table=bt,
                                                 rotary_interleaved=False)

    qd, kn, vn = (c(rng.standard_normal((4, 1, h, 128)).astype(np.float16)) for h in (32, 8, 8))
    ce, cc = (c(kc), c(vc)), (c(kc), c(vc))
    torch._dynamo.reset()
    with torch.no_grad():
        eo = decode(qd, *ce, kn, vn)
        co = torch.compile(decode, fullgraph=True)(qd, *cc, kn, vn)
    torch.cuda.synchronize()
    assert torch.equal(ce[0], cc[0]) and torch.equal(ce[1], cc[1]), "caches must be mutated exactly like eager"
    assert not torch.equal(ce[0], c(kc)), "the append must reach the caller's cache"
    assert (eo.float() - co.float()).abs().max().item() <= 1e-3
    torch._dynamo.reset()
    dout = torch.randn_like(q)
    grads = []
    for fn in (prefill, torch.compile(prefill)):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        grads.append(torch.autograd.grad(fn(*xs)[0], xs, dout))
    for name, e, c_ in zip(("dq", "dk", "dv"), *grads):  # atomics: the dq sum order may differ
        assert torch.isfinite(c_).all(), name
        torch.testing.assert_close(c_.float(), e.float(), rtol=0, atol=2e-2, msg=name)
