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


NEG_INF = -1e30  # a score no hypothesis reaches: log-probabilities are finite


def length_penalty(out_len, alpha):
    """C.6: (1 + L_out / 6)^α with L_out the tokens generated including EOS (GNMT's
    ((5 + |Y|) / 6)^α with |Y| = L_out + 1)."""
    return (1.0 + out_len / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "alpha", "spread"))
def beam_search(model, params, src, src_mask, *, beam_size=4, alpha=0.6, spread=3.0):
    """Beam search as the reference's `PenalizedBeamSearchDecoder` (specs/attention.md C.6).

    Every step extends each live hypothesis by the next token's log-probability (added to its
    raw score) and keeps the best `beam_size` (hypothesis, token) pairs per sentence. A kept
    pair ending in EOS at L_out >= min_len is a finished candidate, scored raw / penalty(L_out);
    the best finished one per sentence is kept. Then, before the next expansion, hypotheses
    ending in EOS (finished or too short), longer than max_len, or whose normalised score plus
    `spread` falls below the best finished score are dropped (they are not replaced). The loop
    ends when no sentence has a live hypothesis; a sentence with no finished hypothesis takes
    its best unfinished one at max_len. Returns tokens [b, 2 s + 3] (EOS after the end) and the
    normalised scores [b].
    """
    b, s = src.shape
    k = beam_size
    out_len = 2 * s + 3
    variables = {"params": params}
    enc, _ = model.apply(variables, src, src_mask, train=False, method="encode")
    enc = jnp.repeat(enc, k, axis=0)  # [b k, s, d]
    mask_k = jnp.repeat(src_mask, k, axis=0)
    min_len, max_len = length_limits(src_mask)

    def body(state):
        i, tokens, raw, best_tok, best_score, fallback_tok, fallback_score = state
        n = i + 1  # L_out after this step
        logits, _ = model.apply(
            variables, tokens.reshape(b * k, out_len), enc, mask_k, train=False, method="decode"
        )
        step = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
        logp = jax.nn.log_softmax(step.astype(jnp.float32), axis=-1).reshape(b, k, -1)
        v = logp.shape[-1]
        cand = (raw[:, :, None] + logp).reshape(b, k * v)
        cand = jnp.where(
            (raw[:, :, None] > NEG_INF / 2).repeat(v, 2).reshape(b, k * v), cand, NEG_INF
        )
        top, flat = jax.lax.top_k(cand, k)  # [b, k]
        parent, word = flat // v, (flat % v).astype(jnp.int32)
        tokens = jnp.take_along_axis(tokens, parent[:, :, None], axis=1)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, word, i, axis=2)
        alive = top > NEG_INF / 2
        norm = top / length_penalty(n.astype(jnp.float32), alpha)
        is_eos = word == EOS
        finished = alive & is_eos & (n >= min_len)[:, None]
        f_score = jnp.where(finished, norm, NEG_INF)
        j = jnp.argmax(f_score, axis=1)
        f_best = jnp.take_along_axis(f_score, j[:, None], 1)[:, 0]
        better = f_best > best_score
        f_tok = jnp.take_along_axis(tokens, j[:, None, None], 1)[:, 0]
        best_tok = jnp.where(better[:, None], f_tok, best_tok)
        best_score = jnp.where(better, f_best, best_score)
        # The best unfinished hypothesis at max_len, for sentences that never finish.
        at_max = alive & ~is_eos & (n == max_len)[:, None]
        u_score = jnp.where(at_max, norm, NEG_INF)
        ju = jnp.argmax(u_score, axis=1)
        u_best = jnp.take_along_axis(u_score, ju[:, None], 1)[:, 0]
        u_better = u_best > fallback_score
        u_tok = jnp.take_along_axis(tokens, ju[:, None, None], 1)[:, 0]
        fallback_tok = jnp.where(u_better[:, None], u_tok, fallback_tok)
        fallback_score = jnp.where(u_better, u_best, fallback_score)
        keep = alive & ~is_eos & (n < max_len)[:, None] & (norm + spread >= best_score[:, None])
        raw = jnp.where(keep, top, NEG_INF)
        return i + 1, tokens, raw, best_tok, best_score, fallback_tok, fallback_score

    def cond(state):
        i, _, raw = state[:3]
        return (i < out_len) & jnp.any(raw > NEG_INF / 2)

    raw0 = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)[None].repeat(b, 0)
    raw0 = jnp.where((jnp.sum(src_mask, -1) > 0)[:, None], raw0, NEG_INF)
    full = jnp.full((b, out_len), EOS, jnp.int32)
    none = jnp.full((b,), NEG_INF, jnp.float32)
    state = (0, jnp.full((b, k, out_len), EOS, jnp.int32), raw0, full, none, full, none)
    _, _, _, best_tok, best_score, fallback_tok, fallback_score = jax.lax.while_loop(
        cond, body, state
    )
    found = best_score > NEG_INF / 2
    return (
        jnp.where(found[:, None], best_tok, fallback_tok),
        jnp.where(found, best_score, fallback_score),
    )
