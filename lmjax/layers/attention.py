"""Causal attention over [memory | current segment], shared by every family.

Shape legend: b batch, t query time (the segment), s key time (memory + segment), m memory
slots, w window (distances 1..w before each query), h heads, k head_dim, d d_model.

`masked_softmax` is the one attention core every family's explicit path calls, each with its
own mask semantics; it returns float32 probabilities, and the family applies its dropout after:

* SHA-RNN (`_SingleHeadAttention`) and Transformer-XL (`relative_attention` below): `mask`, with
  `fill` = finfo(float32).min where it is False (the references' -inf, kept finite so a row
  with no allowed key gives a uniform row, not NaN); Transformer-XL adds its position scores
  as `bias`.
* SRU++ (`_Attention`): `bias` = 0 or -10000 (the reference's additive mask, not -inf), no
  `mask`.
* Adaptive-Span (`_SeqAttention`): a plain softmax, then `prob_mask` (the soft span mask
  m_z, multiplied after the softmax) and renormalised, p·m / (Σ p·m + `renorm_eps` = 1e-8).

Two relative-position schemes live here, both as layout helpers plus one attention function:

* Transformer-XL (Dai et al. 2019, arXiv 1901.02860, §3.3; kimiyoung/transformer-xl
  `RelPartialLearnableMultiHeadAttn`, attn_type 0 in specs/attention.md B.2):
      score(i, j) = (q_i + u)·k_j + (q_i + v)·W_r R(i - j)
  with R the sinusoid of `sinusoid_positions` over descending positions s-1 .. 0, and
  `rel_shift` moving the "query x position" matrix to "query x key". `relative_attention` adds
  the scores, masks, and runs a float32 softmax, through `jax.nn.dot_product_attention` (the
  position term passed as its bias) or the explicit form (`masked_softmax`) kept as the
  reference.
* Adaptive-Span (Sukhbaatar et al. 2019, arXiv 1905.07799; facebookresearch/adaptive-span
  `SeqAttention`): a query attends to exactly the w keys before it (distances 1..w, itself
  excluded), with one learned embedding per distance added as q·p_d. `window_scores` gathers
  that band out of q·kᵀ over [cache (w) | segment (t)] (the reference's "unskew") and adds the
  position term; `window_output` multiplies band probabilities by the values (its "skew").
  The family applies its own mask between the two.

The memory helpers (`memory_causal_mask`, `append_memory`) keep shapes static under jit: a
fixed buffer of m slots, filled from the right, with a per-row count of the valid ones.

Generation: both families carry layer inputs (their references recompute keys and values
from them, and the gradient of a segment reaches W_k and W_v through the memory). For decoding,
`KVCache` holds the projected keys and values instead, so a new token costs one projection.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

_FLOAT32_MIN = float(jnp.finfo(jnp.float32).min)


def masked_softmax(
    scores, *, mask=None, bias=None, fill=_FLOAT32_MIN, prob_mask=None, renorm_eps=0.0
):
    """softmax(scores + bias) over the last axis, in float32, with a mask before or after it.

    In order: z = float32(scores) + float32(bias); z = fill where `mask` is False; p = softmax(z);
    then with `prob_mask`, p = p · prob_mask / (Σ p · prob_mask + renorm_eps).

    Args:
      scores: [..., t, s] float, already scaled.
      mask: None, or bool broadcastable to scores (same rank), True where a key is allowed.
      bias: None, or float broadcastable to scores (same rank), added before the mask.
      fill: the score a masked-out key gets (finfo(float32).min: probability 0 unless the whole
        row is masked, where it is uniform).
      prob_mask: None, or float broadcastable to scores (same rank), multiplied after the
        softmax, then the row is renormalised.
      renorm_eps: added to the renormalising sum (Adaptive-Span's 1e-8).
    Returns:
      [..., t, s] float32 probabilities.
    """
    z = scores.astype(jnp.float32)
    if bias is not None:
        z = z + bias.astype(jnp.float32)
    if mask is not None:
        z = jnp.where(mask, z, fill)
    probs = jax.nn.softmax(z, axis=-1)
    if prob_mask is not None:
        probs = probs * prob_mask
        probs = probs / (probs.sum(-1, keepdims=True) + renorm_eps)
    return probs


def memory_causal_mask(t, mem_len, mem_count):
    """Which keys each query may see when keys are [memory (m) | current segment (t)].

    Memory slots are filled from the right: with `mem_count[b]` valid entries, slots
    [m - mem_count, m) hold the most recent states and the rest are empty. A query sees every
    valid memory slot and, within the segment, itself and earlier positions.

    Args:
      t: query length.
      mem_len: memory slots m.
      mem_count: [b] int, valid memory entries per row (0 at the start of a stream).
    Returns:
      [b, t, m + t] bool, True where attention is allowed.
    """
    b = mem_count.shape[0]
    mem_ok = jnp.arange(mem_len)[None, :] >= (mem_len - mem_count)[:, None]  # [b, m]
    mem_ok = jnp.broadcast_to(mem_ok[:, None, :], (b, t, mem_len))
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool))[None], (b, t, t))
    return jnp.concatenate([mem_ok, causal], axis=-1)


def append_memory(memory, mem_count, new):
    """Appends `new` [b, t, d] to the right of `memory` [b, m, d], keeping the last m slots."""
    m, t = memory.shape[1], new.shape[1]
    if m == 0:  # [:, -0:] would keep everything
        return memory, mem_count
    joined = jnp.concatenate([memory, new.astype(memory.dtype)], axis=1)[:, -m:]
    return joined, jnp.minimum(mem_count + t, m)


# ---------------------------------------------------------------------------------------------
# Transformer-XL relative positions


def sinusoid_positions(pos, dim):
    """Transformer-XL's position embedding: [sin(p ω) ; cos(p ω)], halves concatenated.

    Args:
      pos: [s] float positions (Transformer-XL passes s-1, ..., 0: the last key is position 0).
      dim: even embedding width d; ω_i = 10000^(-2i/d), i < d/2.
    Returns:
      [s, d] float32.
    """
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = pos.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def rel_shift(x):
    """Transformer-XL `_rel_shift`: scores by distance index -> scores by key index.

    Column c of `x` belongs to relative position s-1-c (the descending position sequence).
    Query i sits at absolute position (s - t) + i, so key j is at distance (s - t) + i - j, and
    the result is out[i, j] = x[i, j + t - 1 - i] for every causal pair j <= s - t + i. Entries
    above that diagonal hold values from the next row; callers mask them.

    Args:
      x: [..., t, s].
    Returns:
      [..., t, s].
    """
    *lead, t, s = x.shape
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])  # [..., t, s + 1]
    x = x.reshape(*lead, s + 1, t)[..., 1:, :]
    return x.reshape(*lead, t, s)


def relative_attention(q, k, v, pos_bias, mask, *, dropout=None, fused=True):
    """softmax(q·kᵀ/√k + pos_bias, masked) v with float32 logits and softmax.

    Args:
      q: [b, t, h, k] queries (already carrying Transformer-XL's content bias u).
      k, v: [b, s, h, k].
      pos_bias: [b, h, t, s] float, added to the scaled content scores (already scaled).
      mask: [b, 1 or h, t, s] bool, True where attention is allowed; every row needs one.
      dropout: None, or a function applied to the probabilities (attention dropout). The fused
        kernel has no dropout, so this forces the explicit form.
      fused: use `jax.nn.dot_product_attention` when possible; the explicit form is the
        reference it is tested against.
    Returns:
      [b, t, h, k] in v's dtype.
    """
    scale = q.shape[-1] ** -0.5
    if fused and dropout is None:
        return jax.nn.dot_product_attention(
            q, k.astype(q.dtype), v.astype(q.dtype), bias=pos_bias, mask=mask, scale=scale
        )
    scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32)
    probs = masked_softmax(scores * scale, mask=mask, bias=pos_bias)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bhts,bshk->bthk", probs.astype(v.dtype), v)


# ---------------------------------------------------------------------------------------------
# Adaptive-Span window: each query sees the w keys before it


def unskew(x):
    """out[i, c] = x[i, i + c]: the band of w keys before each of t queries.

    With keys [cache (w) | segment (t)], query i is at key position w + i, so band column c is
    key i + c at distance w - c (column w-1 is the previous token). The reference's `_unskew`:
    flatten, pad t, view with row stride s + 1.

    Args:
      x: [..., t, w + t].
    Returns:
      [..., t, w].
    """
    *lead, t, s = x.shape
    x = x.reshape(*lead, t * s)
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, t)])
    return x.reshape(*lead, t, s + 1)[..., : s - t]


def skew(y):
    """The inverse placement of `unskew`: out[i, i + c] = y[i, c], zeros elsewhere.

    Args:
      y: [..., t, w].
    Returns:
      [..., t, w + t].
    """
    *lead, t, w = y.shape
    y = jnp.pad(y, [(0, 0)] * len(lead) + [(0, 0), (0, t + 1)])  # [..., t, w + t + 1]
    y = y.reshape(*lead, t * (w + t + 1))[..., : t * (w + t)]
    return y.reshape(*lead, t, w + t)


def window_scores(q, k, pos_emb):
    """Unscaled scores of each query against the w keys before it, by distance.

    Args:
      q: [b, t, h, k].
      k: [b, w + t, h, k], keys of [cache | segment].
      pos_emb: [k, w] learned position keys, column c for distance w - c (shared by heads).
    Returns:
      [b, h, t, w] float32, column c = q_i·k_{i+c} + q_i·pos_emb[:, c].
    """
    content = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32)
    position = jnp.einsum("bthk,kw->bhtw", q, pos_emb.astype(q.dtype))
    return unskew(content) + position.astype(jnp.float32)


def window_output(probs, v):
    """probs: [b, h, t, w] over distances (as from `window_scores`); v: [b, w + t, h, k].

    Returns:
      [b, t, h, k] = Σ_c probs[i, c] v_{i+c}.
    """
    return jnp.einsum("bhts,bshk->bthk", skew(probs).astype(v.dtype), v)


# ---------------------------------------------------------------------------------------------
# Key/value cache for generation


class KVCache(NamedTuple):
    """Projected keys and values of the last m positions of one layer.

    k, v: [b, m, h, k] float32, oldest first. Which slots are valid is the caller's (a count
    per row shared by all layers, as `memory_causal_mask` takes).
    """

    k: jax.Array
    v: jax.Array


def zeros_kv_cache(batch_size, mem_len, num_heads, head_dim):
    z = jnp.zeros((batch_size, mem_len, num_heads, head_dim), jnp.float32)
    return KVCache(z, z)


def extend_kv_cache(cache, k_new, v_new):
    """Keys and values over [cache | new], and the cache of the last m of them.

    Args:
      cache: KVCache with m slots.
      k_new, v_new: [b, t, h, k], the segment's projections.
    Returns:
      (k [b, m + t, h, k], v [b, m + t, h, k], next KVCache), keys and values in float32.
    """
    t = k_new.shape[1]
    k = jnp.concatenate([cache.k, k_new.astype(jnp.float32)], axis=1)
    v = jnp.concatenate([cache.v, v_new.astype(jnp.float32)], axis=1)
    return k, v, KVCache(k[:, t:], v[:, t:])
