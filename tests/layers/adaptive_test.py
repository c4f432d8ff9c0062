"""Adaptive input and softmax: a normalised distribution, NLL equal to the materialised
log-softmax and to a per-token numpy loop written from the equations, reversed cluster
logits, tying that really shares parameters, chunking, and cutoff edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.layers import adaptive

V, D = 23, 8
SRUPP = dict(d_embed=8, div_val=2, dropout_rate=0.1, init_scheme="xavier")  # tied, no scaling
ASPAN = dict(d_embed=8, div_val=2, scale_embed=True, init_scheme="torch")  # tied + cluster_proj


def _layer(cutoffs=(5, 11, 20), **kw):
    kw = {**SRUPP, **kw}
    return adaptive.AdaptiveIO(vocab_size=V, d_model=D, cutoffs=cutoffs, **kw)


def _init(layer, seed=0, scale=0.3):
    """Parameters with random perturbations everywhere (zero biases would hide bugs)."""
    h = jnp.zeros((1, 2, D))
    params = layer.init(jax.random.PRNGKey(seed), h, train=False, method=layer.log_probs)
    params = params["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves)


def _numpy_log_probs(params, h, bounds, tie_tables=True, tie_projs=True):
    """Per-token loop over the vocabulary: head softmax, then tail i at head column −i."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    k = len(bounds) - 1
    table = lambda i: p[f"table_{i}" if tie_tables else f"out_table_{i}"]
    proj = lambda i: p[f"proj_{i}" if tie_projs else f"out_proj_{i}"]

    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    out = np.zeros((*h.shape[:2], bounds[-1]))
    for bi in range(h.shape[0]):
        for ti in range(h.shape[1]):
            x = np.asarray(h[bi, ti], np.float64)
            w0, b0 = table(0), p["out_bias_0"]
            if k > 1:
                w0 = np.concatenate([w0, p["cluster_weight"]])
                b0 = np.concatenate([b0, p["cluster_bias"]])
            head = log_softmax(w0 @ (x @ proj(0)) + b0)
            n0, c = bounds[1], k - 1
            for w in range(bounds[-1]):
                i = max(j for j in range(k) if bounds[j] <= w)
                if i == 0:
                    out[bi, ti, w] = head[w]
                else:
                    tail = log_softmax(table(i) @ (x @ proj(i)) + p[f"out_bias_{i}"])
                    out[bi, ti, w] = head[n0 + c - i] + tail[w - bounds[i]]
    return out


@pytest.mark.parametrize("kind", ["srupp", "aspan", "untied"])
def test_nll_is_the_full_log_softmax_and_the_numpy_loop(kind):
    kw = {"srupp": SRUPP, "aspan": ASPAN, "untied": dict(tie_tables=False, tie_projs=False)}[kind]
    layer = _layer(**kw)
    params = _init(layer)
    h = jax.random.normal(jax.random.PRNGKey(3), (2, 5, D))
    targets = jnp.array([[0, 4, 5, 10, 11], [19, 20, 22, 3, 12]])  # every cluster edge
    apply = lambda m, *a: layer.apply({"params": params}, *a, train=False, method=m)
    logp = apply(layer.log_probs, h)
    assert logp.shape == (2, 5, V) and logp.dtype == jnp.float32
    np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)
    bounds = (0, 5, 11, 20, V)
    ref = _numpy_log_probs(
        params, np.asarray(h), bounds, kind != "untied", kind != "untied"
    )  # fmt: skip
    np.testing.assert_allclose(logp, ref, rtol=1e-5, atol=1e-5)
    nll = apply(layer.nll, h, targets)
    assert nll.shape == (2, 5) and nll.dtype == jnp.float32
    gathered = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(nll, gathered, rtol=1e-5, atol=1e-6)


def test_cluster_logits_are_reversed():
    """Head column −1 is tail cluster 1: raising it moves the mass onto cluster 1's words."""
    layer = _layer()
    params = _init(layer)
    params["cluster_weight"] = jnp.zeros_like(params["cluster_weight"])
    params["cluster_bias"] = jnp.array([0.0, 0.0, 30.0])  # the last cluster logit
    probs = jnp.exp(
        layer.apply(
            {"params": params}, jnp.ones((1, 1, D)), train=False, method=layer.log_probs
        )
    )[0, 0]  # fmt: skip
    assert float(probs[5:11].sum()) > 0.999  # cluster 1 = ids [5, 11)


def test_chunked_nll_and_grads_equal_unchunked():
    whole, chunked = _layer(), _layer(max_chunk_logits=2 * 3 * 9)  # chunks of 3 of t = 7
    params = _init(whole)
    h = jax.random.normal(jax.random.PRNGKey(4), (2, 7, D))
    targets = jax.random.randint(jax.random.PRNGKey(5), (2, 7), 0, V)

    def loss(layer):
        def f(params, h):
            return layer.apply({"params": params}, h, targets, train=False, method=layer.nll).sum()

        return jax.value_and_grad(f, argnums=(0, 1))(params, h)

    (l1, g1), (l2, g2) = loss(whole), loss(chunked)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(np.isfinite(x).all() and np.abs(x).max() > 0 for x in jax.tree.leaves(g1))


def test_embedding_matches_the_tables_and_projections():
    layer = _layer(**ASPAN)
    params = _init(layer)
    tokens = jnp.array([[0, 4, 5, 10, 11, 19, 20, 22]])
    x = layer.apply({"params": params}, tokens, train=False, method=layer.embed)
    bounds = (0, 5, 11, 20, V)
    for j, w in enumerate(np.asarray(tokens[0])):
        i = max(k for k in range(4) if bounds[k] <= w)
        row = np.asarray(params[f"table_{i}"])[w - bounds[i]]
        expected = np.sqrt(D) * np.asarray(params[f"proj_{i}"]) @ row
        np.testing.assert_allclose(x[0, j], expected, rtol=1e-5, atol=1e-5)


def test_tying_shares_parameters():
    tied, untied = _layer(), _layer(tie_tables=False, tie_projs=False)
    p_tied, p_untied = _init(tied), _init(untied)
    widths, sizes = (8, 4, 2, 1), (5, 6, 9, 3)
    shared = sum(n * e + D * e for n, e in zip(sizes, widths, strict=True))
    own = V + 3 * widths[0] + 3  # output biases, cluster weight and bias
    count = lambda p: sum(x.size for x in jax.tree.leaves(p))
    assert count(p_tied) == shared + own and count(p_untied) == 2 * shared + own
    assert not any(k.startswith("out_table") or k.startswith("out_proj") for k in p_tied)
    # The softmax's gradient reaches the input tables and projections: one tensor each.
    h = jax.random.normal(jax.random.PRNGKey(6), (1, 4, D))
    targets = jnp.array([[1, 7, 15, 21]])
    grads = jax.grad(
        lambda p: tied.apply({"params": p}, h, targets, train=False, method=tied.nll).sum()
    )(p_tied)
    for i in range(4):
        assert np.abs(grads[f"table_{i}"]).max() > 0 and np.abs(grads[f"proj_{i}"]).max() > 0
    # ... and changing an input table changes the softmax.
    bump = jax.random.normal(jax.random.PRNGKey(8), p_tied["table_2"].shape)
    moved = dict(p_tied, table_2=p_tied["table_2"] + bump)
    lp = lambda p: tied.apply({"params": p}, h, train=False, method=tied.log_probs)
    assert np.abs(lp(moved)[..., 11:20] - lp(p_tied)[..., 11:20]).max() > 1e-3


def test_cutoff_edge_cases():
    h = jax.random.normal(jax.random.PRNGKey(7), (1, 3, D))
    # No cutoffs: one projected softmax; a last cluster of one word; a first cluster of one.
    for cutoffs in ((), (V - 1,), (1, 2)):
        layer = _layer(cutoffs=cutoffs)
        params = _init(layer)
        logp = layer.apply({"params": params}, h, train=False, method=layer.log_probs)
        np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)
        targets = jnp.array([[0, V - 1, min(1, V - 1)]])
        nll = layer.apply({"params": params}, h, targets, train=False, method=layer.nll)
        expected = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-6)
        assert ("cluster_weight" in params) == bool(cutoffs)
    for bad in ((0, 5), (5, 5), (5, V), (11, 5)):
        with pytest.raises(ValueError, match="increase strictly"):
            _init(_layer(cutoffs=bad))
    with pytest.raises(ValueError, match="cluster width 0"):
        _init(_layer(d_embed=4, div_val=4))


def test_dropout_inside_only_in_training():
    layer = _layer()
    params = _init(layer)
    tokens = jnp.array([[1, 7, 15, 21]])
    run = lambda train, seed: layer.apply(
        {"params": params},
        tokens,
        train=train,
        method=layer.embed,
        rngs={"dropout": jax.random.PRNGKey(seed)},
    )
    np.testing.assert_array_equal(run(False, 0), run(False, 1))
    assert np.abs(run(True, 0) - run(False, 0)).max() > 1e-4
    np.testing.assert_array_equal(run(True, 0), run(True, 0))
