"""The shared attention layer: the masked softmax against numpy, layout helpers against index
formulas, the fused path against the explicit one, and both relative-position schemes against
per-pair loops."""

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.layers import attention


def _normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _numpy_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_masked_softmax_against_numpy():
    """Plain, masked (filled), additive bias, and a mask multiplied after the softmax."""
    scores = _normal(10, (2, 3, 5)) * 3
    bias = _normal(11, (2, 3, 5))
    mask = np.tril(np.ones((3, 5), bool), 2)[None]  # [1, t, s]; every row keeps a key
    prob_mask = np.asarray(jax.random.uniform(jax.random.PRNGKey(12), (1, 3, 5)))
    plain = attention.masked_softmax(scores.astype(jnp.bfloat16))
    assert plain.dtype == jnp.float32
    np.testing.assert_allclose(plain, _numpy_softmax(scores.astype(jnp.bfloat16)), atol=1e-6)
    got = attention.masked_softmax(scores, mask=jnp.asarray(mask), bias=bias)
    want = _numpy_softmax(np.where(mask, np.asarray(scores) + np.asarray(bias), -np.inf))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[np.broadcast_to(~mask, got.shape)], 0.0)
    # SRU++'s additive mask: a large negative bias instead of a fill.
    additive = jnp.where(jnp.asarray(mask), 0.0, -10000.0)
    got = attention.masked_softmax(scores, bias=additive)
    np.testing.assert_allclose(got, _numpy_softmax(scores + np.asarray(additive)), atol=1e-6)
    # Adaptive-Span: p · m / (Σ p · m + eps) after a plain softmax.
    got = attention.masked_softmax(scores, prob_mask=jnp.asarray(prob_mask), renorm_eps=1e-8)
    p = _numpy_softmax(scores) * prob_mask
    np.testing.assert_allclose(got, p / (p.sum(-1, keepdims=True) + 1e-8), atol=1e-6)
    # A fully masked row is uniform with the finite fill (no NaN).
    none = attention.masked_softmax(scores, mask=jnp.zeros((1, 3, 5), bool))
    np.testing.assert_allclose(none, 0.2, atol=1e-7)


def test_memory_mask_and_append():
    mask = attention.memory_causal_mask(3, 4, jnp.array([0, 2]))
    assert mask.shape == (2, 3, 7)
    np.testing.assert_array_equal(mask[0, :, :4], False)
    np.testing.assert_array_equal(mask[1, :, :4], [[False, False, True, True]] * 3)
    np.testing.assert_array_equal(mask[1, :, 4:], np.tril(np.ones((3, 3), bool)))
    memory, count = attention.append_memory(
        jnp.zeros((2, 4, 1)), jnp.array([0, 3]), jnp.ones((2, 3, 1))
    )
    np.testing.assert_array_equal(memory[0, :, 0], [0, 1, 1, 1])
    np.testing.assert_array_equal(count, [3, 4])
    empty = jnp.zeros((2, 0, 1))
    assert attention.append_memory(empty, count, jnp.ones((2, 3, 1)))[0].shape == (2, 0, 1)


def test_sinusoid_is_sin_then_cos():
    pos = jnp.array([3.0, 0.0])
    pe = attention.sinusoid_positions(pos, 6)
    freq = 1 / 10000 ** (np.arange(0, 6, 2) / 6)
    np.testing.assert_allclose(pe[0], np.concatenate([np.sin(3 * freq), np.cos(3 * freq)]), 1e-6)
    np.testing.assert_allclose(pe[1], [0, 0, 0, 1, 1, 1])


def test_rel_shift_moves_distances_to_keys():
    t, s = 4, 7  # memory of 3
    x = _normal(0, (2, t, s))
    out = attention.rel_shift(x)
    for i in range(t):
        for j in range(s):
            if j <= s - t + i:  # causal pairs: column s-1-c is distance (s-t)+i-j
                c = s - 1 - ((s - t) + i - j)
                np.testing.assert_array_equal(out[:, i, j], x[:, i, c])


def test_unskew_and_skew_place_the_band():
    t, w = 3, 5
    x = _normal(1, (2, t, w + t))
    band = attention.unskew(x)
    for i in range(t):
        np.testing.assert_array_equal(band[:, i], x[:, i, i : i + w])
    full = attention.skew(band)
    for i in range(t):
        expected = np.zeros((2, w + t))
        expected[:, i : i + w] = band[:, i]
        np.testing.assert_array_equal(full[:, i], expected)


def _reference_attention(q, k, v, bias, mask):
    """Per (b, h, i): softmax over the allowed keys in float64."""
    q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
    b, t, h, d = q.shape
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                s = k[bi, :, hi] @ q[bi, i, hi] / np.sqrt(d) + bias[bi, hi, i]
                s = np.where(mask[bi, 0, i], s, -np.inf)
                p = np.exp(s - s.max())
                out[bi, i, hi] = (p / p.sum()) @ v[bi, :, hi]
    return out


def test_relative_attention_fused_equals_explicit_and_loop():
    b, t, s, h, d = 2, 3, 5, 2, 4
    q, k, v = _normal(2, (b, t, h, d)), _normal(3, (b, s, h, d)), _normal(4, (b, s, h, d))
    bias = _normal(5, (b, h, t, s))
    mask = attention.memory_causal_mask(t, s - t, jnp.array([2, 1]))[:, None]
    fused = jax.jit(lambda *a: attention.relative_attention(*a, fused=True))(q, k, v, bias, mask)
    explicit = attention.relative_attention(q, k, v, bias, mask, fused=False)
    np.testing.assert_allclose(fused, explicit, atol=1e-6)
    np.testing.assert_allclose(explicit, _reference_attention(q, k, v, bias, mask), atol=1e-5)
    grads = [
        jax.grad(lambda q, f=f: attention.relative_attention(q, k, v, bias, mask, fused=f).sum())(q)
        for f in (True, False)
    ]
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-5)


def test_window_attention_matches_per_distance_loop():
    """Adaptive-Span's score: q_t·k_{t-d} + q_t·p_d for d = 1..w, then Σ_d a_d v_{t-d}."""
    b, t, w, h, d = 2, 3, 4, 2, 5
    q, k, v = _normal(6, (b, t, h, d)), _normal(7, (b, w + t, h, d)), _normal(8, (b, w + t, h, d))
    pe = _normal(9, (d, w))
    scores = attention.window_scores(q, k, pe)
    probs = jax.nn.softmax(scores, axis=-1)
    out = attention.window_output(probs, v)
    for dist in range(1, w + 1):
        c = w - dist
        for i in range(t):
            j = w + i - dist  # key position of the token `dist` before query i
            expect = jnp.einsum("bhk,bhk->bh", q[:, i], k[:, j]) + jnp.einsum(
                "bhk,k->bh", q[:, i], pe[:, c]
            )
            np.testing.assert_allclose(scores[:, :, i, c], expect, atol=1e-5)
    expect = np.zeros((b, t, h, d))
    for i in range(t):
        for c in range(w):
            expect[:, i] += probs[:, :, i, c, None] * v[:, i + c]
    np.testing.assert_allclose(out, expect, atol=1e-5)


def test_kv_cache_keeps_the_last_positions():
    cache = attention.zeros_kv_cache(1, 3, 1, 2)
    k_new = jnp.arange(4.0).reshape(1, 2, 1, 2)
    k, v, nxt = attention.extend_kv_cache(cache, k_new, -k_new)
    assert k.shape == (1, 5, 1, 2)
    np.testing.assert_array_equal(nxt.k[0, :, 0], [[0, 0], [0, 1], [2, 3]])
    np.testing.assert_array_equal(nxt.v, -nxt.k)
