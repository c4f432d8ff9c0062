"""The synthetic associative-retrieval experiment of Schlag, Irie & Schmidhuber 2021 (§4: "the
delta rule ... retrieves after overwriting"), at a small scale and without training: the fast
weight layers of `layers/linear_attention.py` are written with key-value pairs and read with
the keys, and the error of what they return is measured.

Two settings, both with unit-norm keys, β = 1 for the delta rule, and a final query of every
key whose target is the value it was *last* given:

  capacity     `num_pairs` distinct random keys in ℝ^d, each written once. Up to d keys can be
               stored without interference only if they are orthogonal; random keys interfere
               in both rules, but the delta rule replaces what a key retrieves instead of adding
               to it, so the most recent pairs stay retrievable beyond d pairs.
  overwrite    `num_keys` <= d orthonormal keys, written `num_pairs` times in random order with
               a fresh value each time (the paper's memory with updates). The delta rule returns
               each key's last value exactly; the sum rule returns the sum of all its values.

`retrieval_error` returns the mean squared error per value dimension, relative to the
values' variance (1: no better than returning zeros).
"""

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.layers import linear_attention as la


def _write_and_query(rule, keys, values, queries):
    """keys [n, d], values [n, v], queries [q, d] -> retrieved [q, v] (one sequence, one head)."""
    n = keys.shape[0]
    k = keys[None, None]  # [1, 1, n, d]
    v = values[None, None]
    beta = jnp.ones((1, 1, n))
    if rule == "sum":
        _, w = la.sum_rule(k, k, v, impl="recurrent")
    else:
        _, w = la.delta_rule(k, k, v, beta, impl="recurrent")
    return jnp.einsum("qk,kv->qv", queries, w[0, 0])


def retrieval_error(rule, num_pairs, *, setting="capacity", key_dim=32, num_keys=None,
                    recent=None, seed=0):  # fmt: skip
    """Relative MSE of reading back the last value of each key.

    Args:
      rule: 'sum' or 'delta'.
      num_pairs: writes in the sequence.
      setting: 'capacity' (distinct random keys) or 'overwrite' (num_keys orthonormal keys
        rewritten; default key_dim // 2 keys).
      key_dim: d.
      recent: capacity only: score only the last `recent` pairs written (None: all).
      seed: the draw of keys, values and order.
    Returns:
      float, mean over queries and value dimensions of (retrieved - target)² / var(values).
    """
    rng = np.random.default_rng(seed)
    d = key_dim
    if setting == "capacity":
        keys = rng.normal(size=(num_pairs, d))
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        values = rng.normal(size=(num_pairs, d))
        queries, targets = keys, values
        if recent is not None:
            queries, targets = keys[-recent:], values[-recent:]
    elif setting == "overwrite":
        m = num_keys or d // 2
        basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:m]  # m orthonormal keys
        order = np.concatenate([np.arange(m), rng.integers(0, m, num_pairs - m)])
        keys = basis[order]
        values = rng.normal(size=(num_pairs, d))
        last = {int(key): i for i, key in enumerate(order)}
        queries = basis
        targets = values[[last[j] for j in range(m)]]
    else:
        raise ValueError(f"setting={setting!r}; known: capacity, overwrite")
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    got = jax.jit(_write_and_query, static_argnums=0)(rule, as32(keys), as32(values), as32(queries))
    return float(np.mean((np.asarray(got) - targets) ** 2))
