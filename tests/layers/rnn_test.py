"""The hoisted-projection LSTM equals a plain per-step loop of PyTorch's LSTM equations."""

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.layers import rnn


def _reference_lstm(params, x, h, c):
    """numpy float64 PyTorch-convention LSTM, one step at a time."""
    w_ih, w_hh, b = (np.asarray(params[k], np.float64) for k in ("w_ih", "w_hh", "bias"))
    sig = lambda z: 1 / (1 + np.exp(-z))
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w_ih + h @ w_hh + b
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys, 1), h, c


def test_lstm_matches_reference_loop():
    b, t, d = 3, 7, 8
    x = jax.random.normal(jax.random.PRNGKey(0), (b, t, 5))
    h0 = jax.random.normal(jax.random.PRNGKey(1), (b, d))
    c0 = jax.random.normal(jax.random.PRNGKey(2), (b, d))
    layer = rnn.LSTM(d)
    params = layer.init(jax.random.PRNGKey(3), x, rnn.LSTMCarry(h0, c0))["params"]
    y, carry = layer.apply({"params": params}, x, rnn.LSTMCarry(h0, c0))
    ry, rh, rc = _reference_lstm(params, np.asarray(x, np.float64), np.asarray(h0), np.asarray(c0))
    np.testing.assert_allclose(y, ry, atol=1e-5)
    np.testing.assert_allclose(carry.h, rh, atol=1e-5)
    np.testing.assert_allclose(carry.c, rc, atol=1e-5)


def test_lstm_init_is_pytorch_default():
    d = 64
    layer = rnn.LSTM(d)
    x = jnp.zeros((1, 1, d))
    params = layer.init(jax.random.PRNGKey(0), x, rnn.zeros_carry(1, d))["params"]
    bound = 1 / np.sqrt(d)
    assert np.abs(params["w_ih"]).max() <= bound and np.abs(params["w_hh"]).max() <= bound
    assert np.abs(params["w_hh"]).max() > 0.9 * bound  # uniform over the whole range
    # The stored bias is b_ih + b_hh: the sum of two U(-bound, bound), variance 2 bound^2 / 3.
    np.testing.assert_allclose(np.var(params["bias"]), 2 * bound**2 / 3, rtol=0.15)


def test_lstm_custom_gradient_equals_autodiff_of_the_loop():
    """The hand-written backward pass equals autodiff through the plain scan, for every input
    including the initial state and a cotangent on the final state."""
    t, b, d = 6, 3, 4
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    w_hh = 0.5 * jax.random.normal(keys[0], (d, 4 * d))
    xw = jax.random.normal(keys[1], (t, b, 4 * d))
    h0, c0 = (jax.random.normal(k, (b, d)) for k in keys[2:4])
    proj_y, proj_c = (
        jax.random.normal(k, s) for k, s in zip(keys[4:], [(t, b, d), (b, d)], strict=True)
    )

    def plain(w_hh, xw, h0, c0):
        step = lambda carry, x: rnn.lstm_step(w_hh, carry, x)
        carry, ys = jax.lax.scan(step, rnn.LSTMCarry(h0, c0), xw)
        return ys, carry

    def loss(fn):
        def f(*args):
            ys, carry = fn(*args)
            return jnp.sum(ys * proj_y) + jnp.sum(carry.c * proj_c) + jnp.sum(carry.h)

        return f

    args = (w_hh, xw, h0, c0)
    want = jax.grad(loss(plain), argnums=(0, 1, 2, 3))(*args)
    got = jax.grad(loss(rnn.lstm_recurrence), argnums=(0, 1, 2, 3))(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
