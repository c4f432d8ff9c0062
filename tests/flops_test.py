"""The jaxpr FLOP count: every scan body times its length (where XLA's cost analysis counts a
loop body once), the backward's matmuls, a custom VJP's backward, the costlier cond branch."""

import jax
import jax.numpy as jnp

from lmjax import flops
from lmjax.layers import rnn

B, D, T = 8, 32, 50


def _recurrence(w, xs):
    def body(h, x):
        h = jnp.tanh(h @ w + x)
        return h, h

    return jax.lax.scan(body, jnp.zeros((B, D)), xs)[1].sum()


def test_scan_counts_every_step_where_xla_counts_one():
    w, xs = jnp.ones((D, D)), jnp.ones((T, B, D))
    one_step = 2 * B * D * D
    assert flops.step_flops(_recurrence, w, xs) == (T * one_step, [])
    xla = jax.jit(_recurrence).lower(w, xs).compile().cost_analysis()["flops"]
    assert xla < 2 * one_step  # why lmjax.flops exists


def test_backward_adds_two_matmuls_per_forward_matmul():
    w, xs = jnp.ones((D, D)), jnp.ones((T, B, D))
    grad_w, _ = flops.step_flops(jax.grad(_recurrence), w, xs)
    # d/dh (h @ w) and d/dw: two more [B,D]x[D,D]-sized products a step
    assert grad_w == 3 * T * 2 * B * D * D


def test_batched_dot_and_cond_and_while():
    a, b = jnp.ones((4, 3, 5)), jnp.ones((4, 5, 7))
    assert (
        flops.step_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b)[0]
        == 2 * 4 * 3 * 7 * 5
    )

    def branchy(p, x):
        return jax.lax.cond(p, lambda x: x @ x @ x, lambda x: x @ x, x)

    x = jnp.ones((6, 6))
    assert flops.step_flops(branchy, True, x)[0] == 2 * (2 * 6 * 6 * 6)

    def looped(x):
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ c[0], c[1] + 1), (x, 0))[0]

    total, loops = flops.step_flops(looped, x)
    assert total == 2 * 6**3 and len(loops) == 1  # counted once, and said


def test_custom_vjp_backward_is_counted():
    """The LSTM's custom VJP (its own backward scan, then dW_hh as one matmul over all steps)
    is in the gradient's jaxpr: forward T matmuls, backward T for dh plus one as large as T."""
    w_hh, xw = jnp.ones((D, 4 * D)), jnp.ones((T, B, 4 * D))
    h0 = c0 = jnp.zeros((B, D))
    loss = lambda w: rnn.lstm_recurrence(w, xw, h0, c0)[0].sum()
    recurrent = T * 2 * B * D * 4 * D
    assert flops.step_flops(loss, w_hh)[0] == recurrent
    assert flops.step_flops(jax.grad(loss), w_hh)[0] == 3 * recurrent
