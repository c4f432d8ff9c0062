"""Decoding for the translation models: greedy search as one compiled loop.

Lengths follow the Story of Heads reference's decoder (specs/attention.md C.6): with inp_len the
source length including its EOS, a translation is at least ⌊inp_len / 4⌋ - 1 tokens before its
EOS may be chosen and at most 2 inp_len + 3 tokens (EOS included) long.

`greedy` runs the encoder once, then a `lax.while_loop` over output positions; each iteration
reruns the (causal) decoder over the whole output buffer and takes position i's argmax, so it
needs no cache and equals teacher forcing on its own output by construction. It stops when
every row has emitted EOS or reached its maximum length.
"""

import functools

import jax
import jax.numpy as jnp

from lmjax.data.translation import EOS


def length_limits(src_mask):
    """(min_len, max_len) per row [b] int32 from the source mask (C.6)."""
    inp_len = jnp.sum(src_mask, axis=-1).astype(jnp.int32)
    return inp_len // 4 - 1, 2 * inp_len + 3


@functools.partial(jax.jit, static_argnames=("model",))
def greedy(model, params, src, src_mask):
    """Greedy translations [b, 2 s + 3] int32 (EOS after the end) of src, src_mask [b, s]."""
    b, s = src.shape
    out_len = 2 * s + 3
    variables = {"params": params}
    enc, _ = model.apply(variables, src, src_mask, train=False, method="encode")
    min_len, max_len = length_limits(src_mask)

    def body(state):
        i, out, done = state
        logits, _ = model.apply(variables, out, enc, src_mask, train=False, method="decode")
        step = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)  # [b, v]
        eos = (jnp.arange(step.shape[-1]) == EOS)[None]
        step = jnp.where((i < min_len)[:, None] & eos, -jnp.inf, step)
        token = jnp.where(done, EOS, jnp.argmax(step, axis=-1).astype(jnp.int32))
        out = jax.lax.dynamic_update_index_in_dim(out, token, i, axis=1)
        done = done | (token == EOS) | (i + 1 >= max_len)
        return i + 1, out, done

    def cond(state):
        i, _, done = state
        return (i < out_len) & ~jnp.all(done)

    out = jnp.full((b, out_len), EOS, jnp.int32)
    _, out, _ = jax.lax.while_loop(cond, body, (0, out, jnp.sum(src_mask, -1) == 0))
    return out
