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
