"""Recurrent layers with every matmul hoisted out of the time loop.

Shape legend: b batch, t time, d input width, f 4 * hidden (the stacked LSTM gates).

`LSTM` follows PyTorch's `nn.LSTM` (one layer) exactly, so reference weights map one to one:
gates z = x W_ih + h W_hh + b, rows ordered [i, f, g, o]; c' = σ(f) c + σ(i) tanh(g);
h' = σ(o) tanh(c'). The input projection x W_ih runs over all timesteps as one matmul before
the scan (recurrentgemma's pattern); only h W_hh and the elementwise cell run inside
`lax.scan`, and the cell state accumulates in float32.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class LSTMCarry(NamedTuple):
    """LSTM state, float32. h: [b, d]; c: [b, d]."""

    h: jax.Array
    c: jax.Array


def zeros_carry(batch_size, hidden_size):
    z = jnp.zeros((batch_size, hidden_size), jnp.float32)
    return LSTMCarry(z, z)


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _sum_of_two_uniform(bound):
    # PyTorch keeps two biases (b_ih, b_hh), each U(-bound, bound); only their sum matters, so we
    # store the sum and draw it from the same distribution.
    def init(key, shape, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return _uniform(bound)(k1, shape, dtype) + _uniform(bound)(k2, shape, dtype)

    return init


def lstm_step(w_hh, carry, xw_t):
    """One LSTM step. xw_t: [b, 4d] precomputed input projection (+ bias), float32."""
    h, c = carry
    # No preferred_element_type: XLA:CPU has no bf16 x bf16 -> f32 dot; GPUs accumulate in f32.
    z = xw_t + jnp.dot(h.astype(w_hh.dtype), w_hh).astype(jnp.float32)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMCarry(h, c), h


class LSTM(nn.Module):
    """One LSTM layer over a whole window, PyTorch-default init U(±1/√hidden).

    Attributes:
      hidden_size: state width d.
      dtype: compute dtype of the matmuls; the state and gates stay float32.
      unroll: `lax.scan` unroll factor.
    """

    hidden_size: int
    dtype: jnp.dtype = jnp.float32
    unroll: int = 1

    @nn.compact
    def __call__(self, x, carry):
        """x: [b, t, d_in]; carry: LSTMCarry of [b, d]. Returns (y [b, t, d] dtype, carry)."""
        b, _, d_in = x.shape
        d = self.hidden_size
        assert carry.h.shape == (b, d), (carry.h.shape, (b, d))
        bound = 1.0 / d**0.5
        w_ih = self.param("w_ih", _uniform(bound), (d_in, 4 * d))
        w_hh = self.param("w_hh", _uniform(bound), (d, 4 * d))
        bias = self.param("bias", _sum_of_two_uniform(bound), (4 * d,))
        xw = jnp.einsum("btd,df->tbf", x.astype(self.dtype), w_ih.astype(self.dtype))
        xw = (
            xw.astype(jnp.float32) + bias[None, None, :]
        )  # [t, b, 4d] float32, time-major for the scan
        step = lambda c, xw_t: lstm_step(w_hh.astype(self.dtype), c, xw_t)
        carry, ys = jax.lax.scan(step, carry, xw, unroll=self.unroll)
        return jnp.swapaxes(ys, 0, 1).astype(self.dtype), carry
