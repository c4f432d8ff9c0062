"""The Story of Heads (Voita, Talbot, Moiseev, Sennrich & Titov 2019, arXiv 1905.09418): a
Transformer-base translation model whose attention heads carry Hard-Concrete gates. Reference
lena-voita/the-story-of-heads (TF1, `transformer_head_gates.Transformer`), as
specs/attention.md C.2-C.4 describe it.

Shape legend: b batch, s source time, t target time, h heads, k head_dim, d d_model, f d_ff,
v vocabulary.

Map from the reference to this file:
  emb_inp / emb_out, ×√d             `_embed`: N(0, d^-1/2) tables (separate per side), scaled
  inp_emb_bias                        `emb_inp_bias` [d], added to the encoder input only,
                                      U(±√(6/(1+d))) (TF glorot of its (1, 1, d) shape)
  T2T positions                       `timing_signal`: n = d/2 timescales,
                                      inv_i = exp(-i ln(10⁴)/(n-1)), [sin(p inv); cos(p inv)]
  decoder input                       target embeddings shifted right with a zero vector at
                                      position 0 (no BOS token), then positions, then dropout
  res_steps 'nlda'                    pre-LN: x + Drop(F(LN(x))), LN eps 1e-6 (scale 1, bias 0),
                                      final LNs `enc_out_norm` / `dec_out_norm`
  mem_conv / query_conv / out_conv    `_Attention`: fused [q | k | v] (self) or query + [k | v]
                                      (dec-enc), all with biases (zero), heads contiguous blocks
                                      of k columns; q / √k, softmax, attention dropout, gate,
                                      heads concatenated, output projection with bias
  attention bias                      -1e9 (1 - mask): padded source keys, future target keys
  conv1 / conv2                       `_FeedForward`: ReLU, relu dropout
  loss_xent_lm/logits/W               `logits`: d x v, glorot, no bias
  concrete_heads / alive_heads        `gates.HeadGate` on the listed attention types (C.3/C.4)
  label smoothing                     `smoothed_nll`: q(gold) = 1 - ε, q(other) = ε / (v - 1)
                                      (the gold is excluded from the uniform part)
  All Dense kernels                   glorot-uniform; biases zero.

The reference subtracts the (constant) entropy of the smoothed target from its logged loss;
here the loss is the plain cross-entropy with the smoothed target, so logged values are higher
by that constant, and gradients are the same.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.layers import core, gates
from lmjax.models import base

ATTENTION_TYPES = ("enc-self", "dec-self", "dec-enc")
_LN_EPS = 1e-6
_GLOROT = nn.initializers.xavier_uniform()
_NEG = -1e9


@dataclasses.dataclass(frozen=True)
class StoryOfHeadsConfig:
    src_vocab_size: int = 32000
    tgt_vocab_size: int = 32000
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_layers: int = 6  # encoder and decoder each
    dropout_rate: float = 0.1  # res_dropout: embeddings + positions, every residual branch
    attn_dropout: float = 0.1  # on the attention weights
    relu_dropout: float = 0.1  # inside the feed-forward
    label_smoothing: float = 0.1
    concrete_heads: tuple = ()  # attention types with Hard-Concrete gates (C.3)
    alive_heads: Any = ()  # {type: [layers][heads] 0/1}: fixed head masks (C.4)
    gate_coef: float = 0.1  # λ of the L0 term (the reference's `concrete_coef` example)
    dtype: str = "float32"

    def __post_init__(self):
        alive = self.alive_heads
        if hasattr(alive, "items"):  # a dict / ConfigDict -> a hashable sorted tuple
            alive = tuple(
                sorted(
                    (k, tuple(tuple(int(x) for x in row) for row in v)) for k, v in alive.items()
                )
            )
            object.__setattr__(self, "alive_heads", alive)
        object.__setattr__(self, "concrete_heads", tuple(self.concrete_heads))
        problem = _check_config(self)
        if problem:
            raise UserError(problem)

    @property
    def head_dim(self):
        return self.d_model // self.num_heads

    def alive(self, kind, layer):
        """The fixed 0/1 mask of `kind`'s heads in `layer`, or None."""
        for k, rows in self.alive_heads:
            if k == kind:
                return rows[layer]
        return None


def _check_config(c):
    for kind in c.concrete_heads:
        if kind not in ATTENTION_TYPES:
            return (
                f"model.concrete_heads: unknown attention type {kind!r}; known: {ATTENTION_TYPES}"
            )
    for kind, rows in c.alive_heads:
        if kind not in ATTENTION_TYPES:
            return f"model.alive_heads: unknown attention type {kind!r}; known: {ATTENTION_TYPES}"
        if kind in c.concrete_heads:
            return f"model: attention type {kind!r} is both in concrete_heads and alive_heads"
        shape = np.asarray(rows).shape
        if shape != (c.num_layers, c.num_heads) or not set(np.ravel(rows)) <= {0, 1}:
            return (
                f"model.alive_heads[{kind!r}] must be {c.num_layers} x {c.num_heads} zeros and "
                f"ones, got shape {shape}"
            )
    if c.d_model % c.num_heads or c.d_model % 2:
        return f"model.d_model={c.d_model} must be even and divisible by num_heads={c.num_heads}"
    if not 0 <= c.label_smoothing < 1:
        return f"model.label_smoothing={c.label_smoothing} must be in [0, 1)"
    return None


def timing_signal(length, d):
    """T2T's sinusoid [length, d]: n = d/2 timescales, [sin(p inv); cos(p inv)] concatenated."""
    n = d // 2
    inv = np.exp(-np.arange(n) * np.log(1e4) / max(n - 1, 1))
    angles = np.arange(length)[:, None] * inv[None]
    return jnp.asarray(np.concatenate([np.sin(angles), np.cos(angles)], axis=1), jnp.float32)


def smoothed_nll(logits, targets, smoothing):
    """Cross-entropy with the smoothed target q(gold) = 1 - ε, q(other) = ε / (v - 1), per
    token [b, t] (the reference's label smoothing: the gold is not in the uniform part)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    gold = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if not smoothing:
        return -gold
    v = logits.shape[-1]
    other = (jnp.sum(logp, axis=-1) - gold) / (v - 1)
    return -((1.0 - smoothing) * gold + smoothing * other)


def _layer_norm(name):
    return nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name=name)


class _Attention(nn.Module):
    """Multi-head attention with biased projections and an optional head gate.

    Attributes:
      config: the model's StoryOfHeadsConfig; kind: one of ATTENTION_TYPES; layer: its index.
    """

    config: StoryOfHeadsConfig
    kind: str
    layer: int

    @nn.compact
    def __call__(self, x, memory, bias, *, train):
        """x: [b, t, d] queries (already normalised); memory: [b, s, d] keys/values, or None for
        self-attention; bias: [b or 1, 1, t, s] additive. Returns ([b, t, d], GateStats|None)."""
        c = self.config
        nh, hk, d = c.num_heads, c.head_dim, c.d_model
        dtype = jnp.dtype(c.dtype)
        dense = lambda n, name: nn.Dense(n, kernel_init=_GLOROT, dtype=dtype, name=name)
        b, t = x.shape[:2]
        if memory is None:
            qkv = dense(3 * d, "mem_conv")(x).reshape(b, t, 3, nh, hk)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = dense(d, "query_conv")(x).reshape(b, t, nh, hk)
            kv = dense(2 * d, "mem_conv")(memory).reshape(b, memory.shape[1], 2, nh, hk)
            k, v = kv[:, :, 0], kv[:, :, 1]
        scores = jnp.einsum("bthk,bshk->bhts", q * hk**-0.5, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores + bias, axis=-1)
        probs = core.Dropout(c.attn_dropout)(probs, deterministic=not train)
        out = jnp.einsum("bhts,bshk->bthk", probs.astype(v.dtype), v)  # [b, t, h, k]
        stats = None
        alive = c.alive(self.kind, self.layer)
        if self.kind in c.concrete_heads or alive is not None:
            out, stats = gates.HeadGate(nh, alive=alive, name="gate")(out, train=train)
        self.sow("intermediates", "attention", probs)
        out = dense(d, "out_conv")(out.reshape(b, t, d))
        return out.astype(jnp.float32), stats


class _FeedForward(nn.Module):
    config: StoryOfHeadsConfig

    @nn.compact
    def __call__(self, x, *, train):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        z = jax.nn.relu(nn.Dense(c.d_ff, kernel_init=_GLOROT, dtype=dtype, name="conv1")(x))
        z = core.Dropout(c.relu_dropout)(z, deterministic=not train)
        return nn.Dense(c.d_model, kernel_init=_GLOROT, dtype=dtype, name="conv2")(z).astype(
            jnp.float32
        )


class _EncoderLayer(nn.Module):
    config: StoryOfHeadsConfig
    layer: int

    @nn.compact
    def __call__(self, x, bias, *, train):
        drop = lambda y: core.Dropout(self.config.dropout_rate)(y, deterministic=not train)
        a, stats = _Attention(self.config, "enc-self", self.layer, name="self_attn")(
            _layer_norm("self_attn_norm")(x), None, bias, train=train
        )
        x = x + drop(a)
        x = x + drop(_FeedForward(self.config, name="ffn")(_layer_norm("ffn_norm")(x), train=train))
        return x, stats


class _DecoderLayer(nn.Module):
    config: StoryOfHeadsConfig
    layer: int

    @nn.compact
    def __call__(self, y, enc, self_bias, enc_bias, *, train):
        c = self.config
        drop = lambda z: core.Dropout(c.dropout_rate)(z, deterministic=not train)
        a, s_self = _Attention(c, "dec-self", self.layer, name="self_attn")(
            _layer_norm("self_attn_norm")(y), None, self_bias, train=train
        )
        y = y + drop(a)
        # Only the query side is normalised: the encoder output (already through its final
        # LN) is the memory as it is.
        a, s_enc = _Attention(c, "dec-enc", self.layer, name="enc_attn")(
            _layer_norm("enc_attn_norm")(y), enc, enc_bias, train=train
        )
        y = y + drop(a)
        y = y + drop(_FeedForward(c, name="ffn")(_layer_norm("ffn_norm")(y), train=train))
        return y, (s_self, s_enc)


class StoryOfHeads(base.Family):
    """The gated Transformer translation model (encoder-decoder).

    Attributes:
      config: a StoryOfHeadsConfig.
    """

    config: StoryOfHeadsConfig

    @property
    def rng_streams(self):
        return ("dropout", gates.RNG_STREAM) if self.config.concrete_heads else ("dropout",)

    @property
    def aux_losses(self):
        return ("l0_penalty",) if self.config.concrete_heads else ()

    def setup(self):
        c = self.config
        emb_init = nn.initializers.normal(c.d_model**-0.5)
        self.emb_inp = nn.Embed(c.src_vocab_size, c.d_model, embedding_init=emb_init)
        self.emb_out = nn.Embed(c.tgt_vocab_size, c.d_model, embedding_init=emb_init)
        self.emb_inp_bias = self.param(
            "emb_inp_bias", core.uniform(np.sqrt(6.0 / (1 + c.d_model))), (c.d_model,)
        )
        self.enc = [_EncoderLayer(c, i) for i in range(c.num_layers)]
        self.dec = [_DecoderLayer(c, i) for i in range(c.num_layers)]
        self.enc_out_norm = _layer_norm(None)
        self.dec_out_norm = _layer_norm(None)
        self.logits_w = self.param("logits", _GLOROT, (c.d_model, c.tgt_vocab_size))
        self.drop = core.Dropout(c.dropout_rate)

    def encode(self, src, src_mask, *, train):
        """src, src_mask: [b, s]. Returns (encoder output [b, s, d], enc-self GateStats)."""
        c = self.config
        x = self.emb_inp(src) * c.d_model**0.5 + self.emb_inp_bias[None, None]
        x = self.drop(x + timing_signal(src.shape[1], c.d_model)[None], deterministic=not train)
        bias = (_NEG * (1.0 - src_mask.astype(jnp.float32)))[:, None, None, :]
        stats = []
        for layer in self.enc:
            x, s = layer(x, bias, train=train)
            stats.append(s)
        return self.enc_out_norm(x), stats

    def decode(self, tgt_in, enc, src_mask, *, train):
        """Teacher-forced decoder over target ids tgt_in [b, t] (the targets themselves: the
        shift right happens here). Returns (logits [b, t, v] float32, GateStats lists)."""
        c = self.config
        t = tgt_in.shape[1]
        y = self.emb_out(tgt_in) * c.d_model**0.5
        y = jnp.pad(y[:, :-1], ((0, 0), (1, 0), (0, 0)))  # a zero vector first, no BOS
        y = self.drop(y + timing_signal(t, c.d_model)[None], deterministic=not train)
        causal = jnp.tril(jnp.ones((t, t), jnp.float32))
        self_bias = (_NEG * (1.0 - causal))[None, None]
        enc_bias = (_NEG * (1.0 - src_mask.astype(jnp.float32)))[:, None, None, :]
        self_stats, enc_stats = [], []
        for layer in self.dec:
            y, (s_self, s_enc) = layer(y, enc, self_bias, enc_bias, train=train)
            self_stats.append(s_self)
            enc_stats.append(s_enc)
        y = self.dec_out_norm(y)
        logits = jnp.einsum("btd,dv->btv", y, self.logits_w, preferred_element_type=jnp.float32)
        return logits, (self_stats, enc_stats)

    def __call__(self, src, src_mask, tgt, *, train):
        """Returns (logits [b, t, v], aux): aux has `l0_penalty` (λ L0) with concrete gates
        and `open_<type>` (heads whose eval gate is open) for every gated or masked type."""
        enc, enc_stats = self.encode(src, src_mask, train=train)
        logits, (self_stats, dec_enc_stats) = self.decode(tgt, enc, src_mask, train=train)
        by_kind = {"enc-self": enc_stats, "dec-self": self_stats, "dec-enc": dec_enc_stats}
        aux = {}
        c = self.config
        if c.concrete_heads:
            gated = [s for kind in c.concrete_heads for s in by_kind[kind]]
            aux["l0_penalty"] = c.gate_coef * gates.l0_penalty(gated)
        for kind, stats in by_kind.items():
            if stats[0] is not None:
                aux[f"open_{kind.replace('-', '_')}"] = sum(s.open for s in stats).astype(
                    jnp.float32
                )
        return logits, aux

    def nll(self, src, src_mask, tgt, *, train):
        """Label-smoothed per-token loss [b, t] and aux."""
        logits, aux = self(src, src_mask, tgt, train=train)
        return smoothed_nll(logits, tgt, self.config.label_smoothing), aux
