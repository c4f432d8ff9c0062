"""layers/core.py: the 16-bit-mask Dropout (exact rate, inverted scaling, determinism) and the
uniform initializers."""

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.layers import core


def test_dropout_rate_scale_and_determinism():
    layer = core.Dropout(0.1)
    x = jnp.ones((64, 257))  # odd size: one 16-bit half is unused
    rng = {"dropout": jax.random.PRNGKey(0)}
    y = layer.apply({}, x, deterministic=False, rngs=rng)
    kept = np.asarray(y) != 0
    keep = 1 - round(0.1 * 65536) / 65536
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / keep, rtol=1e-6)
    assert abs(kept.mean() - keep) < 0.01
    np.testing.assert_array_equal(y, layer.apply({}, x, deterministic=False, rngs=rng))
    assert not np.array_equal(
        y, layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    )
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
    # The mean is preserved: E[y] = x.
    big = layer.apply({}, jnp.ones((1000, 1000)), deterministic=False, rngs=rng)
    assert abs(float(big.mean()) - 1.0) < 3e-3


def test_uniform_and_torch_linear_init():
    """The one jax.random.uniform(key, shape, dtype, -bound, bound) draw, and U(±1/√fan_in)."""
    key = jax.random.PRNGKey(3)
    w = core.uniform(0.7)(key, (64, 33))
    np.testing.assert_array_equal(w, jax.random.uniform(key, (64, 33), jnp.float32, -0.7, 0.7))
    assert w.dtype == jnp.float32 and np.abs(w).max() <= 0.7 and np.abs(w).max() > 0.69
    assert core.uniform(0.7)(key, (4,), jnp.bfloat16).dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        core.torch_linear_init(16)(key, (64, 33)), core.uniform(0.25)(key, (64, 33))
    )
