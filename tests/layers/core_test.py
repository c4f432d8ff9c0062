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


def test_dropout_bits_statistics():
    """The hashed 16-bit draws (`random_bits16`): uniform overall and per position across keys,
    no correlation between neighbours, between the two keys of one split, or along a row."""
    n_keys, shape = 64, (32, 512)
    keys = jax.random.split(jax.random.PRNGKey(0), n_keys)
    u = np.stack([np.asarray(core.random_bits16(k, shape)) for k in keys]) / 65536.0 - 0.5
    assert u.min() >= -0.5 and u.max() < 0.5
    n = u.size
    assert abs(u.mean()) < 4 * np.sqrt(1 / 12 / n)  # mean of U(-½, ½) has variance 1/12n
    assert abs((u**2).mean() - 1 / 12) < 1e-3
    # Per position, over the 64 keys: the mean stays within 5 sigma everywhere.
    per_pos = u.mean(axis=0)
    assert np.abs(per_pos).max() < 5.5 * np.sqrt(1 / 12 / n_keys)

    def corr(a, b):
        a, b = a.ravel(), b.ravel()
        return float(np.corrcoef(a, b)[0, 1])

    # 5 sigma of a correlation estimated from m pairs is 5/√m.
    assert abs(corr(u[..., 1:], u[..., :-1])) < 5 / np.sqrt(u[..., 1:].size)  # neighbours
    assert abs(corr(u[:, 1:], u[:, :-1])) < 5 / np.sqrt(u[:, 1:].size)  # rows
    assert abs(corr(u[1:], u[:-1])) < 5 / np.sqrt(u[1:].size)  # successive keys
    # Keep masks at rate 0.1: rates per position over keys are binomial.
    keep = (u + 0.5) >= round(0.1 * 65536) / 65536
    assert abs(keep.mean() - 0.9) < 4 * np.sqrt(0.09 / n)


def test_dropout_mask_same_under_sharding():
    """The mask is a function of the global index: a batch-sharded jit gives the one-device
    mask."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    layer = core.Dropout(0.25)
    x = jnp.ones((8, 16, 12))
    rng = {"dropout": jax.random.PRNGKey(5)}
    f = jax.jit(lambda x: layer.apply({}, x, deterministic=False, rngs=rng))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(f(sharded), f(x))
