"""Adaptive-Span Transformer (Sukhbaatar, Grave, Bojanowski, Joulin 2019, "Adaptive Attention
Span in Transformers", arXiv 1905.07799) and All-attention (Sukhbaatar et al. 2019, "Augmenting
Self-attention with Persistent Memory", arXiv 1907.01470); reference
facebookresearch/adaptive-span. specs/attention.md part A and D.A.

Shape legend: b batch, t query time (block M), s key time (window + block), w window of
distances 1..w (the attention span L, or L - trim), n persistent vectors, h heads, k head_dim,
d d_model, f d_ff, v vocab.

Map from the reference to this file:
  TransformerSeq (A.2)            `AdaptiveSpan`: N(0, 1) embedding (no scaling), layers, untied
                                  output Linear with bias; emb dropout on both ends
  key_pe (1, D, L) shared         param `key_pe` [k, L]; column L - d is distance d
  TransformerSeqLayer             `_Layer`: post-LN, h' = LN1(h + Attn(h, [cache; h])),
                                  out = LN2(h' + FF(h')); no FF with persistent memory (A.4)
  SeqAttention + _skew/_unskew    `_SeqAttention` on `attention.window_scores/window_output`:
                                  a query sees distances 1..L (itself excluded), q·k + q·p_d
  AdaptiveMask m_z (A.3)          `_soft_mask`: clamp((R + z·L - (d - 1)) / R, 0, 1), applied
                                  after the softmax, renormalised with +1e-8 (the `prob_mask`
                                  of `attention.masked_softmax`)
  z (`_mask.current_val`)         param `span_z` [h] per layer, a fraction of L, init 0
  clamp after every step          `AdaptiveSpan.post_update` (the trainer hook)
  get_loss                        aux "span_penalty" = Σ_layers λ·L·mean_h(z) (added to the
                                  loss); also logged: "span_mean" (mean z·L over heads and
                                  layers, in positions) and "span_overflow" (see Trimming)
  trim_memory / get_cache_size    static `trim_lens` from `AdaptiveSpan.adapt_to` (host side),
                                  `_trim_len`; the cache keeps min(L, L - T + 64) positions
  PersistentMemory (A.4)          `_SeqAttention` with n > 0: per-head keys √k·P_k, values
                                  √n·P_v, one joint softmax, mask on the context part only
  init (A.6)                      PyTorch defaults: Linear U(±1/√in) weights and biases
  adaptive_io.py (A.5)            `adaptive_cutoffs`: adaptive input (×√d) and projected
                                  adaptive softmax (layers/adaptive.py), every cluster projected,
                                  `cluster_proj` with bias, reversed cluster logits, tables and
                                  projections tied by `adaptive_tied` (wiki103_pers); `nll`
                                  gives the loss without [b, t, v] logits

The cache (A.2) holds each layer's *inputs* for the last positions and starts as zeros that are
not masked: a query near the start of the stream spends softmax mass on zero keys, as in the
reference. It is stored with L slots whatever the trim, so carry shapes (and checkpoints) never
change; when trimmed, slots older than the reference's cache size are zeroed, which is exactly
the reference's behaviour when a span later grows past a shrunken cache (it zero-pads).

Trimming (A.3): with T = ⌊min(L - 1, L - S)/64⌋·64, S = min(L, ⌈max_h z·L⌉ + R), every
distance above L - T has m_z = 0, so cutting keys, values and key_pe to the last L - T
distances changes only the softmax denominator, which the renormalisation cancels: the result
equals the untrimmed one up to the 1e-8 term (visible only if a head puts < ~1e-6 of its
softmax mass inside its span, as with absurd weights). T must be a Python int under jit, so it is a
config field (`trim_lens`, one per layer) that `adapt_to(params)` recomputes on the host; a new
value means one recompile, and the 64-rounding makes that rare. The reference recomputes T
before every forward (reading the spans back with `.item()`); here the trainer does it at start
and at every log step, where it reads the metrics back anyway, so dispatch never waits on the
host in between. A window can hold spans up to 63 positions longer than the ones it was cut
for; if a span outgrows its window between two log steps, the soft mask is cut off at the
window until the next one. The step reports by how much as aux "span_overflow" (the largest
ceil(z·L) + R - (L - T) over layers, clipped at 0, averaged over the steps of a log interval):
0 means every step equalled the reference's.

`jax.nn.dot_product_attention` does not fit here: the mask multiplies the probabilities after
the softmax and renormalises with +1e-8 (a log-mask bias equals it only up to that term, and its
gradient is 0·∞ where m_z = 0), and the keys form a per-query band. The explicit band is used.

Not reproduced: the reference's random restart offset < M when the training data wraps around,
and its dummy 0·Σ(params) loss term with adaptive IO (a DistributedDataParallel workaround).
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmjax.layers import adaptive, attention, core
from lmjax.models import base

_LN_EPS = 1e-5
_TRIM_STEP = 64  # the reference rounds trims down to multiples of 64 (and keeps 64 of slack)
_RENORM_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class AdaptiveSpanConfig:
    vocab_size: int = 256
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048  # ignored with persistent memory (no FF sublayer)
    num_layers: int = 12
    attn_span: int = 8192  # L, the largest span; distances 1..L
    dropout_rate: float = 0.3  # attention probabilities and after the FF ReLU ("--dropout")
    dropout_emb: float = 0.0  # embedding output and final hidden ("--emb-dropout")
    adapt_span: bool = True  # learn one span per head (off = the plain base model)
    span_ramp: int = 32  # R
    span_init: float = 0.0  # initial z, a fraction of L
    span_loss: float = 5e-7  # λ
    span_cache: bool = True  # shrink the cache with the span ("--adapt-span-cache")
    pers_mem_size: int = 0  # n persistent vectors per head; > 0 removes the FF sublayer
    trim_lens: tuple = ()  # static T per layer (multiples of 64); () = full span. See adapt_to
    # --adapt-io (wiki103_pers): adaptive input and softmax; () = embedding + untied Linear
    adaptive_cutoffs: tuple = ()  # cluster starts, e.g. (20000, 40000, 200000)
    div_val: int = 4  # --adapt-io-divval: cluster i has width d_model // div_val**i
    adaptive_tied: bool = True  # --adapt-io-tied: tables and projections shared in and out
    dtype: str = "float32"  # compute dtype; params, LN, softmax, loss and cache stay float32

    @property
    def head_dim(self):
        return self.d_model // self.num_heads


class AdaptiveSpanCarry(NamedTuple):
    """cache: one [b, L, d] float32 per layer, that layer's inputs for the last L positions
    (zeros before the stream starts)."""

    cache: tuple


def _dense(features, fan_in, dtype, name, use_bias=True):
    init = core.torch_linear_init(fan_in)
    return nn.Dense(
        features, use_bias=use_bias, kernel_init=init, bias_init=init, dtype=dtype, name=name
    )


def _trim_len(z_max, attn_span, ramp):
    """The reference's `_get_trim_len` for a layer whose largest z is `z_max` (host floats)."""
    size = max(0, min(attn_span, math.ceil(z_max * attn_span) + ramp))
    return math.floor(min(attn_span - 1, attn_span - size) / _TRIM_STEP) * _TRIM_STEP


def _cache_size(attn_span, trim):
    """`get_cache_size` with --adapt-span-cache: 64 positions of slack for a growing span."""
    return min(attn_span, attn_span - trim + _TRIM_STEP)


def _clamp01(x):
    # Where-based clamp: like torch.clamp, the gradient passes on the closed interval [0, 1]
    # (jnp.clip would halve it at the ends, e.g. for d = 1 at the initial z = 0).
    return jnp.where(x < 0, 0.0, jnp.where(x > 1, 1.0, x))


def _soft_mask(z, window, attn_span, ramp):
    """m_z over the last `window` distances.

    Args:
      z: [h] float32, spans as fractions of L.
      window: w; column c is distance w - c.
    Returns:
      [h, w] float32, clamp((R + z·L - (d - 1)) / R, 0, 1).
    """
    d = (window - jnp.arange(window)).astype(jnp.float32)
    # The reference's order of operations: (template + z·L) / R + 1, template = 1 - d.
    return _clamp01(((1.0 - d)[None, :] + z[:, None] * attn_span) / ramp + 1.0)


class _SeqAttention(nn.Module):
    """Multi-head windowed attention with the span mask and optional persistent memory.

    Attributes:
      num_heads: h.
      attn_span: L.
      trim: static T; the window is the last L - T distances.
      ramp: R.
      adapt_span: apply the learned soft mask.
      span_init: initial z.
      pers_mem_size: n.
      dropout_rate: on attention probabilities.
      dtype: compute dtype.
    """

    num_heads: int
    attn_span: int
    trim: int
    ramp: int
    adapt_span: bool
    span_init: float
    pers_mem_size: int
    dropout_rate: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h, kv_in, key_pe, *, train):
        """h: [b, t, d] float32 queries; kv_in: [b, w + t, d] float32 [cache window | block];
        key_pe: [k, L]. Returns ([b, t, d], z [h] or None)."""
        b, t, d = h.shape
        nh, hk = self.num_heads, d // self.num_heads
        w = kv_in.shape[1] - t
        assert w == self.attn_span - self.trim
        drop = lambda x: core.Dropout(self.dropout_rate)(x, deterministic=not train)
        proj = lambda name: _dense(d, d, self.dtype, name, use_bias=False)
        q = proj("proj_query")(h).reshape(b, t, nh, hk)
        k = proj("proj_key")(kv_in).reshape(b, w + t, nh, hk)
        v = proj("proj_val")(kv_in).reshape(b, w + t, nh, hk)
        scores = attention.window_scores(q, k, key_pe[:, self.trim :])  # [b, h, t, w]
        z = None
        if self.adapt_span:
            z = self.param("span_z", nn.initializers.constant(self.span_init), (nh,))
            mask = _soft_mask(z, w, self.attn_span, self.ramp)[None, :, None, :]  # [1, h, 1, w]
        n = self.pers_mem_size
        if n == 0:
            probs = attention.masked_softmax(
                scores / math.sqrt(hk),
                prob_mask=None if z is None else mask,
                renorm_eps=_RENORM_EPS,
            )
            out = attention.window_output(drop(probs), v)
        else:
            # All-attention: stored small, used at unit scale (√k·P_k, √n·P_v).
            normal = nn.initializers.normal
            pk = self.param("pers_key", normal(1 / math.sqrt(hk)), (nh, hk, n)) * math.sqrt(hk)
            pv = self.param("pers_val", normal(1 / math.sqrt(n)), (nh, n, hk)) * math.sqrt(n)
            pers = jnp.einsum("bthk,hkn->bhtn", q, pk.astype(q.dtype)).astype(jnp.float32)
            joint_mask = None
            if z is not None:  # mask the context only, then renormalise jointly
                joint_mask = jnp.concatenate([mask, jnp.ones((1, nh, 1, n))], axis=-1)
            joint = attention.masked_softmax(
                jnp.concatenate([scores, pers], -1) / math.sqrt(hk),
                prob_mask=joint_mask,
                renorm_eps=_RENORM_EPS,
            )
            probs, probs_pers = drop(joint[..., :w]), drop(joint[..., w:])
            out = attention.window_output(probs, v)
            out = out + jnp.einsum("bhtn,hnk->bthk", probs_pers.astype(self.dtype), pv)
        out = proj("proj_out")(out.reshape(b, t, d))
        return out.astype(jnp.float32), z


class _Layer(nn.Module):
    """h' = LN1(h + Attn(h, [cache; h])); out = LN2(h' + FF(h')) (no FF with persistent memory).

    Attributes:
      config: the model's AdaptiveSpanConfig.
      trim: static T of this layer.
    """

    config: AdaptiveSpanConfig
    trim: int

    @nn.compact
    def __call__(self, h, cache, key_pe, *, train):
        """h: [b, t, d] float32; cache: [b, L, d] float32. Returns (out, z, next cache)."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        big_l, t = c.attn_span, h.shape[1]
        w = big_l - self.trim
        kv_in = jnp.concatenate([cache[:, big_l - w :], h], axis=1)
        attn = _SeqAttention(
            c.num_heads,
            big_l,
            self.trim,
            c.span_ramp,
            c.adapt_span,
            c.span_init,
            c.pers_mem_size,
            c.dropout_rate,
            dtype,
            name="attn",
        )
        a, z = attn(h, kv_in, key_pe, train=train)
        h_next = nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name="norm1")(h + a)
        if c.pers_mem_size == 0:
            d = c.d_model
            y = nn.relu(_dense(c.d_ff, d, dtype, "fc1")(h_next))
            y = core.Dropout(c.dropout_rate)(y, deterministic=not train)
            y = _dense(d, c.d_ff, dtype, "fc2")(y).astype(jnp.float32)
            h_next = nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name="norm2")(h_next + y)
        # Next cache: the last L layer inputs; beyond the reference's (shrunken) cache, zeros.
        new_cache = jnp.concatenate([cache, h], axis=1)[:, t:]
        if c.span_cache and self.trim > 0:
            keep = _cache_size(big_l, self.trim)
            new_cache = jnp.where((jnp.arange(big_l) >= big_l - keep)[None, :, None], new_cache, 0)
        return h_next, z, jax.lax.stop_gradient(new_cache)


class AdaptiveSpan(base.Family):
    """The Adaptive-Span (and All-attention) language model, on bytes or (adaptive IO) words.

    Attributes:
      config: an AdaptiveSpanConfig.
    """

    config: AdaptiveSpanConfig

    def init_carry(self, batch_size):
        c = self.config
        zeros = jnp.zeros((batch_size, c.attn_span, c.d_model), jnp.float32)
        return AdaptiveSpanCarry(tuple(zeros for _ in range(c.num_layers)))

    def trims(self):
        """The static trim of each layer (0 everywhere when `trim_lens` is empty)."""
        c = self.config
        return c.trim_lens or (0,) * c.num_layers

    def post_update(self, params, rngs=None):
        """Trainer hook, inside the jitted step after each optimizer update: z <- clip(z, 0, 1)
        (the reference clamps `current_val` after every `optimizer.step()`)."""
        del rngs
        clamp = lambda path, x: jnp.clip(x, 0.0, 1.0) if path[-1].key == "span_z" else x
        return jax.tree_util.tree_map_with_path(clamp, params)

    @property
    def aux_losses(self):  # the base model (adapt_span off) has no spans to penalise
        return ("span_penalty",) if self.config.adapt_span else ()

    def adapt_to(self, params):
        """Trainer hook, on the host (at start-up and log steps): this model with the static
        trims the current spans allow (the reference recomputes `_get_trim_len` every forward).

        Returns `self` when nothing changes, else a clone to re-jit the step with.
        """
        c = self.config
        if not c.adapt_span:
            return self
        # Replicated parameters: this host's copy is the value (and works across processes).
        host = lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
        zs = [host(params[f"layer_{i}"]["attn"]["span_z"]) for i in range(c.num_layers)]
        # .item() in the reference: the float32 max times L in double precision.
        trims = tuple(_trim_len(float(np.max(z)), c.attn_span, c.span_ramp) for z in zs)
        if trims == self.trims():
            return self
        return self.clone(config=dataclasses.replace(c, trim_lens=trims))

    def describe(self):
        return {"trim_lens": list(self.trims())}

    def __call__(self, tokens, carry=None, *, train):
        """tokens: [b, t] int.

        Returns:
          (logits [b, t, v] float32 (log-probabilities with adaptive IO), carry, aux). aux with
          adapt_span: {"span_penalty": Σ_layers λ·L·mean(z), "span_mean": mean z·L,
          "span_overflow": positions of span cut off by the trim}, else {}.
        """
        return self._forward(tokens, carry, None, train=train)

    def nll(self, tokens, targets, carry=None, *, train):
        """tokens, targets: [b, t] int. Returns (nll [b, t] float32, carry, aux); with adaptive
        IO from the clusters, without [b, t, v] logits."""
        if not self.config.adaptive_cutoffs:
            return super().nll(tokens, targets, carry, train=train)
        return self._forward(tokens, carry, targets, train=train)

    @nn.compact
    def _forward(self, tokens, carry, targets, *, train):
        """The model; `targets` is given only with adaptive IO (then the output is the per-token
        NLL [b, t] float32)."""
        c = self.config
        b, t = tokens.shape
        trims = self.trims()
        assert c.d_model % c.num_heads == 0
        assert len(trims) == c.num_layers, "trim_lens needs one entry per layer"
        assert all(0 <= x < c.attn_span and x % _TRIM_STEP == 0 for x in trims), trims
        carry = self.init_carry(b) if carry is None else carry
        assert carry.cache[0].shape == (b, c.attn_span, c.d_model)
        emb_drop = lambda x: core.Dropout(c.dropout_emb)(x, deterministic=not train)
        if c.adaptive_cutoffs:
            io = adaptive.AdaptiveIO(
                c.vocab_size,
                c.d_model,
                tuple(c.adaptive_cutoffs),
                d_embed=c.d_model,
                div_val=c.div_val,
                scale_embed=True,
                tie_tables=c.adaptive_tied,
                tie_projs=c.adaptive_tied,
                init_scheme="torch",
                dtype=jnp.dtype(c.dtype),
                name="adaptive_io",
            )
            embed = functools.partial(io.embed, train=train)
        else:
            embed = nn.Embed(
                c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(1.0), name="in_emb"
            )
        key_pe = self.param("key_pe", nn.initializers.normal(1.0), (c.head_dim, c.attn_span))
        h = emb_drop(embed(tokens))
        caches, zs = [], []
        for i in range(c.num_layers):
            layer = _Layer(c, trims[i], name=f"layer_{i}")
            h, z, cache = layer(h, carry.cache[i], key_pe, train=train)
            caches.append(cache)
            zs.append(z)
        h = emb_drop(h)
        aux = _span_aux(zs, trims, c) if c.adapt_span else {}
        new_carry = AdaptiveSpanCarry(tuple(caches))
        if c.adaptive_cutoffs:
            if targets is None:
                return io.log_probs(h, train=train), new_carry, aux
            return io.nll(h, targets, train=train), new_carry, aux
        logits = _dense(c.vocab_size, c.d_model, jnp.float32, "out_emb")(h)
        return logits, new_carry, aux


def _span_aux(zs, trims, c):
    """The span penalty (the reference's `get_loss`, summed over layers) and two diagnostics."""
    big_l = c.attn_span
    penalty = 0.0
    for z in zs:
        penalty = penalty + c.span_loss * big_l * jnp.mean(z)
    overflow = 0.0
    for z, trim in zip(zs, trims, strict=True):
        needed = jnp.minimum(big_l, jnp.ceil(jnp.max(z) * big_l) + c.span_ramp)
        overflow = jnp.maximum(overflow, needed - (big_l - trim))
    return {
        "span_penalty": penalty,
        "span_mean": jnp.mean(jnp.stack(zs)) * big_l,
        "span_overflow": jnp.maximum(overflow, 0.0),
    }
