"""Decoding for the translation models: greedy search as one compiled loop.

Lengths follow the Story of Heads reference's decoder (specs/attention.md C.6): with inp_len the
source length including its EOS, a translation is at least ⌊inp_len / 4⌋ - 1 tokens before its
EOS may be chosen and at most 2 inp_len + 3 tokens (EOS included) long.

Both searches run the encoder once, compute every decoder layer's dec-enc keys and values once
(`init_cache`), then one `lax.while_loop` over output positions in which each iteration runs
the decoder on one position per hypothesis (`decode_step`), writing its self-attention keys
and values into a per-layer cache (C.6's "K/V caches per decoder layer"). A step costs
O(position) attention instead of a full decoder pass over the output so far. `greedy` stops
when every row has emitted EOS or reached its maximum length.

Beam size 1 is greedy search except for one rule of C.6: the beam search drops a hypothesis
that emits EOS before min_len (it is neither finished nor kept), while `greedy` masks EOS
until min_len, as a greedy decoder must to produce anything. Where min_len does not bind
(short sources, or EOS not the argmax before it) the two give the same tokens (tested).
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
    cache = model.apply(variables, enc, out_len, method="init_cache")
    min_len, max_len = length_limits(src_mask)

    def body(state):
        i, prev, cache, out, done = state
        step, cache = model.apply(variables, prev, i, cache, src_mask, method="decode_step")
        eos = (jnp.arange(step.shape[-1]) == EOS)[None]
        step = jnp.where((i < min_len)[:, None] & eos, -jnp.inf, step)
        token = jnp.where(done, EOS, jnp.argmax(step, axis=-1).astype(jnp.int32))
        out = jax.lax.dynamic_update_index_in_dim(out, token, i, axis=1)
        done = done | (token == EOS) | (i + 1 >= max_len)
        return i + 1, token, cache, out, done

    def cond(state):
        i, done = state[0], state[-1]
        return (i < out_len) & ~jnp.all(done)

    out = jnp.full((b, out_len), EOS, jnp.int32)
    state = (0, jnp.zeros((b,), jnp.int32), cache, out, jnp.sum(src_mask, -1) == 0)
    out = jax.lax.while_loop(cond, body, state)[3]
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
    cache = model.apply(variables, enc, out_len, method="init_cache")
    min_len, max_len = length_limits(src_mask)

    def reorder(x, parent):  # [b k, ...] rows follow their parents [b, k]
        x = x.reshape(b, k, *x.shape[1:])
        idx = parent.reshape(b, k, *([1] * (x.ndim - 2)))
        return jnp.take_along_axis(x, idx, axis=1).reshape(b * k, *x.shape[2:])

    def body(state):
        i, tokens, cache, raw, best_tok, best_score, fallback_tok, fallback_score = state
        n = i + 1  # L_out after this step
        prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(i - 1, 0), 2, keepdims=False)
        step, cache = model.apply(
            variables, prev.reshape(b * k), i, cache, mask_k, method="decode_step"
        )
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
        cache = {
            "memory": cache["memory"],  # the same for every hypothesis of a sentence
            "self": jax.tree.map(lambda x: reorder(x, parent), cache["self"]),
        }
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
        return i + 1, tokens, cache, raw, best_tok, best_score, fallback_tok, fallback_score

    def cond(state):
        i, raw = state[0], state[3]
        return (i < out_len) & jnp.any(raw > NEG_INF / 2)

    raw0 = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)[None].repeat(b, 0)
    raw0 = jnp.where((jnp.sum(src_mask, -1) > 0)[:, None], raw0, NEG_INF)
    full = jnp.full((b, out_len), EOS, jnp.int32)
    none = jnp.full((b,), NEG_INF, jnp.float32)
    tokens = jnp.full((b, k, out_len), EOS, jnp.int32)
    state = (0, tokens, cache, raw0, full, none, full, none)
    best_tok, best_score, fallback_tok, fallback_score = jax.lax.while_loop(cond, body, state)[4:]
    found = best_score > NEG_INF / 2
    return (
        jnp.where(found[:, None], best_tok, fallback_tok),
        jnp.where(found, best_score, fallback_score),
    )
