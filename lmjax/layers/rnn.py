"""Recurrent layers with every matmul hoisted out of the time loop.

Shape legend: b batch, t time, d input width, f 4 * hidden (the stacked LSTM gates).

`LSTM` follows PyTorch's `nn.LSTM` (one layer) exactly, so reference weights map one to one:
gates z = x W_ih + h W_hh + b, rows ordered [i, f, g, o]; c' = σ(f) c + σ(i) tanh(g);
h' = σ(o) tanh(c'). The input projection x W_ih runs over all timesteps as one matmul before
the scan (recurrentgemma's pattern); only h W_hh and the elementwise cell run inside
`lax.scan`, and the cell state accumulates in float32.
"""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.layers import core


class LSTMCarry(NamedTuple):
    """LSTM state, float32. h: [b, d]; c: [b, d]."""

    h: jax.Array
    c: jax.Array


def zeros_carry(batch_size, hidden_size):
    z = jnp.zeros((batch_size, hidden_size), jnp.float32)
    return LSTMCarry(z, z)


def _sum_of_two_uniform(bound):
    # PyTorch keeps two biases (b_ih, b_hh), each U(-bound, bound); only their sum matters, so we
    # store the sum and draw it from the same distribution.
    def init(key, shape, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return core.uniform(bound)(k1, shape, dtype) + core.uniform(bound)(k2, shape, dtype)

    return init


def _gates(w_hh, h, xw_t):
    """Gate activations [b, 4d] (σ(i), σ(f), tanh(g), σ(o)) from the precomputed xw_t [b, 4d]."""
    # No preferred_element_type: XLA:CPU has no bf16 x bf16 -> f32 dot; GPUs accumulate in f32.
    z = xw_t + jnp.dot(h.astype(w_hh.dtype), w_hh).astype(jnp.float32)
    # Both functions on every lane and a select, rather than split + concatenate: the same values
    # bit for bit, and XLA:CPU emits one loop instead of four slices and a copy (the forward
    # scan of a 256 x [8, 1024] layer 10.8 -> 6.3 ms on this CPU).
    d = z.shape[-1] // 4
    g_lane = jax.lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1) // d == 2
    return jnp.where(g_lane, jnp.tanh(z), jax.nn.sigmoid(z))


def lstm_step(w_hh, carry, xw_t):
    """One LSTM step (the reference loop). xw_t: [b, 4d] input projection + bias, float32."""
    h, c = carry
    i, f, g, o = jnp.split(_gates(w_hh, h, xw_t), 4, axis=-1)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return LSTMCarry(h, c), h


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm_recurrence(w_hh, xw, h0, c0, unroll=1):
    """The LSTM time loop. xw: [t, b, 4d] float32 (time-major). Returns (h [t, b, d], carry).

    The hand-written backward pass runs only the recurrent part of the gradient inside the
    reverse scan (dz_t -> dh_{t-1} = dz_t W_hhᵀ) and forms dW_hh = Σ_t h_{t-1}ᵀ dz_t as one
    matmul over all timesteps afterwards, as cuDNN and oneDNN do. Autodiff of the scan instead
    accumulates a rank-b update of W_hh's gradient at every step, which is most of the backward
    time at small batch on CPU.
    """
    step = lambda carry, xw_t: lstm_step(w_hh, carry, xw_t)
    carry, ys = jax.lax.scan(step, LSTMCarry(h0, c0), xw, unroll=unroll)
    return ys, carry


def _lstm_fwd(w_hh, xw, h0, c0, unroll):
    def step(carry, xw_t):
        h, c = carry
        acts = _gates(w_hh, h, xw_t)
        i, f, g, o = jnp.split(acts, 4, axis=-1)
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        return LSTMCarry(h_new, c_new), (h_new, c_new, acts)

    carry, (hs, cs, acts) = jax.lax.scan(step, LSTMCarry(h0, c0), xw, unroll=unroll)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)
    return (hs, carry), (w_hh, h_prev, c_prev, cs, acts)


def _lstm_bwd(unroll, res, cotangents):
    w_hh, h_prev, c_prev, cs, acts = res
    dys, (dh_last, dc_last) = cotangents
    w_t = w_hh.T
    # Everything that does not depend on the cotangents is formed for all t at once, outside the
    # sequential loop, as large fused elementwise ops: with d_act the derivative of each gate's
    # nonlinearity (σ(1-σ), or 1-tanh² for g), dz = e ⊙ [dc, dc, dc, dh] per gate block with
    # e = [g d_i, c_prev d_f, i d_g, tanh(c) d_o]; dc = dc_next + dh ⊙ o (1 - tanh²(c)). The loop
    # keeps a select, three multiply-adds and the matmul. On this CPU (2026-12-07, alternated):
    # the layer's forward + backward at t 256, [8, 1024] gates 26.3-29.0 -> 23.2-26.1 ms, the
    # sha_rnn:cpu step 298-318 -> 285-290 ms. With it, scan unroll 2 is slower (~300 ms).
    i, f, g, o = jnp.split(acts, 4, axis=-1)
    tc = jnp.tanh(cs)
    e = jnp.concatenate(
        [g * (i * (1 - i)), c_prev * (f * (1 - f)), i * (1 - g * g), tc * (o * (1 - o))], axis=-1
    )  # [t, b, 4d]
    o_dc = o * (1 - tc * tc)  # ∂h/∂c through h = o tanh(c)
    d = h_prev.shape[-1]
    o_lane = jax.lax.broadcasted_iota(jnp.int32, acts.shape[1:], acts.ndim - 2) // d == 3

    def step(carry, xs):
        dh_next, dc_next = carry
        dy, e_t, o_dc_t, f_t = xs
        dh = dy + dh_next
        dc = dc_next + dh * o_dc_t
        up = jnp.where(o_lane, jnp.tile(dh, (1, 4)), jnp.tile(dc, (1, 4)))
        dz = e_t * up  # [b, 4d] gradient of the gate pre-activations
        dh_prev = jnp.dot(dz.astype(w_t.dtype), w_t).astype(jnp.float32)
        return (dh_prev, dc * f_t), dz

    (dh0, dc0), dz = jax.lax.scan(
        step,
        (dh_last, dc_last),
        (dys.astype(jnp.float32), e, o_dc, f),
        reverse=True,
        unroll=unroll,
    )
    dw_hh = jnp.einsum("tbd,tbf->df", h_prev.astype(w_hh.dtype), dz.astype(w_hh.dtype))
    return dw_hh.astype(w_hh.dtype), dz, dh0, dc0


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)


class LSTM(nn.Module):
    """One LSTM layer over a whole window, PyTorch-default init U(±1/√hidden).

    Attributes:
      hidden_size: state width d.
      dtype: compute dtype of the matmuls; the state and gates stay float32.
      unroll: `lax.scan` unroll factor.
      time_major: x and y are [t, b, ...] (the scan's layout: no transposes around it).
    """

    hidden_size: int
    dtype: jnp.dtype = jnp.float32
    unroll: int = 1
    time_major: bool = False

    @nn.compact
    def __call__(self, x, carry):
        """x: [b, t, d_in] ([t, b, d_in] if time_major); carry: LSTMCarry of [b, d].

        Returns (y [b, t, d] ([t, b, d] if time_major) in dtype, carry)."""
        b, d_in = x.shape[0 if not self.time_major else 1], x.shape[2]
        d = self.hidden_size
        assert carry.h.shape == (b, d), (carry.h.shape, (b, d))
        bound = 1.0 / d**0.5
        w_ih = self.param("w_ih", core.uniform(bound), (d_in, 4 * d))
        w_hh = self.param("w_hh", core.uniform(bound), (d, 4 * d))
        bias = self.param("bias", _sum_of_two_uniform(bound), (4 * d,))
        spec = "tbd,df->tbf" if self.time_major else "btd,df->tbf"
        xw = jnp.einsum(spec, x.astype(self.dtype), w_ih.astype(self.dtype))
        xw = (
            xw.astype(jnp.float32) + bias[None, None, :]
        )  # [t, b, 4d] float32, time-major for the scan
        ys, carry = lstm_recurrence(w_hh.astype(self.dtype), xw, carry.h, carry.c, self.unroll)
        ys = ys if self.time_major else jnp.swapaxes(ys, 0, 1)
        return ys.astype(self.dtype), carry
