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
    # {type: [layers][kept heads] gate value}: a pruned model (`lmjax.export --prune`) whose
    # layers of that type have only the listed heads, each scaled by its (fixed) eval gate; a
    # layer with none keeps only its output bias.
    kept_heads: Any = ()
    dtype: str = "float32"

    def __post_init__(self):
        for field, cast in (("alive_heads", int), ("kept_heads", float)):
            value = getattr(self, field)
            if hasattr(value, "items"):  # a dict / ConfigDict -> a hashable sorted tuple
                value = tuple(
                    sorted(
                        (k, tuple(tuple(cast(x) for x in row) for row in v))
                        for k, v in value.items()
                    )
                )
                object.__setattr__(self, field, value)
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

    def kept(self, kind, layer):
        """The gate values of the heads a pruned model kept in `kind`'s `layer`, or None."""
        for k, rows in self.kept_heads:
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
    for kind, rows in c.kept_heads:
        if kind not in ATTENTION_TYPES:
            return f"model.kept_heads: unknown attention type {kind!r}; known: {ATTENTION_TYPES}"
        if kind in c.concrete_heads or kind in dict(c.alive_heads):
            return f"model: attention type {kind!r} is pruned (kept_heads) and also gated or masked"
        if len(rows) != c.num_layers or any(len(r) > c.num_heads for r in rows):
            return (
                f"model.kept_heads[{kind!r}] must list at most {c.num_heads} gate values for "
                f"each of {c.num_layers} layers"
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

    def setup(self):
        c = self.config
        dense = lambda n: nn.Dense(n, kernel_init=_GLOROT, dtype=jnp.dtype(c.dtype))
        kept = c.kept(self.kind, self.layer)
        self.heads = c.num_heads if kept is None else len(kept)
        width = self.heads * c.head_dim
        if self.heads == 0:  # pruned away: only the output projection's bias is left
            self.out_conv = _Bias(c.d_model)
            return
        if self.kind == "dec-enc":
            self.query_conv = dense(width)
            self.mem_conv = dense(2 * width)
        else:
            self.mem_conv = dense(3 * width)
        self.out_conv = dense(c.d_model)
        self.dropout = core.Dropout(c.attn_dropout)
        alive = c.alive(self.kind, self.layer) if kept is None else kept
        self.gated = self.kind in c.concrete_heads or alive is not None
        if self.gated:
            self.gate = gates.HeadGate(self.heads, alive=alive)

    def memory_kv(self, memory):
        """Keys and values [b, s, h, k] of the dec-enc memory, computed once for decoding."""
        c = self.config
        if self.heads == 0:
            return ()
        kv = self.mem_conv(memory).reshape(*memory.shape[:2], 2, self.heads, c.head_dim)
        return kv[:, :, 0], kv[:, :, 1]

    def __call__(self, x, memory, bias, *, train, cache=None, index=None):
        """x: [b, t, d] queries (already normalised); memory: [b, s, d] keys/values, a
        precomputed (k, v) pair of `memory_kv`, or None for self-attention; bias: [b or 1, 1,
        t, s] additive. For incremental decoding, self-attention takes `cache` (k, v) [b, T, h,
        k] and writes this step's keys and values at position `index` (x is then [b, 1, d]
        and bias covers the T cached keys). Returns ([b, t, d], GateStats|None, cache)."""
        c = self.config
        nh, hk, d = self.heads, c.head_dim, c.d_model
        b, t = x.shape[:2]
        if nh == 0:
            none = gates.GateStats(jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros((0,)))
            return jnp.broadcast_to(self.out_conv(), (b, t, d)), none, cache
        if memory is None:
            qkv = self.mem_conv(x).reshape(b, t, 3, nh, hk)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            if cache is not None:
                k = jax.lax.dynamic_update_slice_in_dim(
                    cache[0], k.astype(cache[0].dtype), index, 1
                )
                v = jax.lax.dynamic_update_slice_in_dim(
                    cache[1], v.astype(cache[1].dtype), index, 1
                )
                cache = (k, v)
        else:
            q = self.query_conv(x).reshape(b, t, nh, hk)
            k, v = memory if isinstance(memory, tuple) else self.memory_kv(memory)
        scores = jnp.einsum("bthk,bshk->bhts", q * hk**-0.5, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores + bias, axis=-1)
        probs = self.dropout(probs, deterministic=not train)
        out = jnp.einsum("bhts,bshk->bthk", probs.astype(v.dtype), v)  # [b, t, h, k]
        stats = None
        if self.gated:
            out, stats = self.gate(out, train=train)
        self.sow("intermediates", "attention", probs)
        out = self.out_conv(out.reshape(b, t, nh * hk))
        return out.astype(jnp.float32), stats, cache


_SUBLAYERS = {"enc-self": ("enc", "self_attn"), "dec-self": ("dec", "self_attn")}
_SUBLAYERS["dec-enc"] = ("dec", "enc_attn")


def head_gates(config, params):
    """{type: float array [layers, heads]}: what multiplies each head's output at evaluation,
    for every gated or masked attention type of a (not pruned) model: the deterministic eval
    gate of C.3 for a gated type (0 = closed, prunable), the fixed 0/1 mask of a masked one.
    `config` is the model's StoryOfHeadsConfig, `params` its parameters (arrays or numpy)."""
    out = {}
    for kind in ATTENTION_TYPES:
        side, sub = _SUBLAYERS[kind]
        if config.alive(kind, 0) is not None:
            out[kind] = np.asarray(dict(config.alive_heads)[kind], np.float32)
        elif kind in config.concrete_heads:
            rows = [
                gates.eval_gate(params[f"{side}_{i}"][sub]["gate"]["log_a"])
                for i in range(config.num_layers)
            ]
            out[kind] = np.asarray(jnp.stack(rows), np.float32)
    return out


def _keep_heads(a, parts, num_heads, idx):
    """The columns of heads `idx` of a projection [..., parts x heads x k] (a kernel or bias
    whose output is `parts` blocks, q | k | v, of contiguous head columns)."""
    hk = a.shape[-1] // (parts * num_heads)
    a = np.take(a.reshape(*a.shape[:-1], parts, num_heads, hk), idx, axis=-2)
    return a.reshape(*a.shape[:-3], parts * len(idx) * hk)


class _Bias(nn.Module):
    """What is left of an attention sublayer whose every head was pruned: out_conv's bias (the
    gated model adds it too: out_conv of all-zero heads is its bias)."""

    features: int

    @nn.compact
    def __call__(self):
        return self.param("bias", nn.initializers.zeros, (self.features,)).astype(jnp.float32)


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
        a, stats, _ = _Attention(self.config, "enc-self", self.layer, name="self_attn")(
            _layer_norm("self_attn_norm")(x), None, bias, train=train
        )
        x = x + drop(a)
        x = x + drop(_FeedForward(self.config, name="ffn")(_layer_norm("ffn_norm")(x), train=train))
        return x, stats


class _DecoderLayer(nn.Module):
    config: StoryOfHeadsConfig
    layer: int

    def setup(self):
        c = self.config
        self.self_attn_norm = _layer_norm(None)
        self.self_attn = _Attention(c, "dec-self", self.layer)
        self.enc_attn_norm = _layer_norm(None)
        self.enc_attn = _Attention(c, "dec-enc", self.layer)
        self.ffn_norm = _layer_norm(None)
        self.ffn = _FeedForward(c)
        self.drop = core.Dropout(c.dropout_rate)

    def memory_kv(self, enc):
        return self.enc_attn.memory_kv(enc)

    def __call__(self, y, enc, self_bias, enc_bias, *, train, cache=None, index=None):
        """enc: the encoder output [b, s, d] or its precomputed (k, v); cache / index: the
        self-attention cache of incremental decoding (see _Attention). Returns (y, (self
        GateStats, dec-enc GateStats), cache)."""
        drop = lambda z: self.drop(z, deterministic=not train)
        a, s_self, cache = self.self_attn(
            self.self_attn_norm(y), None, self_bias, train=train, cache=cache, index=index
        )
        y = y + drop(a)
        # Only the query side is normalised: the encoder output (already through its final
        # LN) is the memory as it is.
        a, s_enc, _ = self.enc_attn(self.enc_attn_norm(y), enc, enc_bias, train=train)
        y = y + drop(a)
        y = y + drop(self.ffn(self.ffn_norm(y), train=train))
        return y, (s_self, s_enc), cache


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
            y, (s_self, s_enc), _ = layer(y, enc, self_bias, enc_bias, train=train)
            self_stats.append(s_self)
            enc_stats.append(s_enc)
        return self._logits(y), (self_stats, enc_stats)

    def _logits(self, y):
        y = self.dec_out_norm(y)
        return jnp.einsum("btd,dv->btv", y, self.logits_w, preferred_element_type=jnp.float32)

    def init_cache(self, enc, out_len):
        """The decoding state for `decode_step`: per decoder layer, the dec-enc keys and values
        of the encoder output enc [b, s, d] (computed once) and an empty self-attention cache
        of out_len positions."""
        c = self.config
        b = enc.shape[0]
        empty = lambda i: jnp.zeros(
            (b, out_len, self.dec[i].self_attn.heads, c.head_dim), jnp.dtype(c.dtype)
        )
        return {
            "memory": [layer.memory_kv(enc) for layer in self.dec],
            "self": [(empty(i), empty(i)) for i in range(len(self.dec))],
        }

    def decode_step(self, prev, index, cache, src_mask):
        """One incremental decoder step (inference): prev [b] the token at output position
        index - 1 (ignored at index 0, where the input is the zero vector), index a scalar.
        Returns (logits [b, v] for output position `index`, the updated cache); equal to
        `decode` on the whole prefix (tested)."""
        c = self.config
        out_len = cache["self"][0][0].shape[1]  # (b, T, h, k) even when h = 0
        y = self.emb_out(prev[:, None]) * c.d_model**0.5
        y = jnp.where(index > 0, y, 0.0)
        pos = jax.lax.dynamic_slice_in_dim(timing_signal(out_len, c.d_model), index, 1, 0)
        y = y + pos[None]
        self_bias = jnp.where(jnp.arange(out_len) <= index, 0.0, _NEG)[None, None, None]
        enc_bias = (_NEG * (1.0 - src_mask.astype(jnp.float32)))[:, None, None, :]
        new = []
        for layer, memory, kv in zip(self.dec, cache["memory"], cache["self"], strict=True):
            y, _, kv = layer(y, memory, self_bias, enc_bias, train=False, cache=kv, index=index)
            new.append(kv)
        return self._logits(y)[:, 0], {"memory": cache["memory"], "self": new}

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

    def pruned(self, params):
        """The model without its closed heads (`lmjax.export --prune`): for every gated or
        masked attention type, each layer keeps the heads whose eval gate (or mask) is not 0,
        their columns of the q / k / v projections and rows of out_conv, and scales them by
        that gate as before; a layer left with no head keeps out_conv's bias only. Returns
        ({'kept_heads', 'concrete_heads', 'alive_heads'}, params): the same translations, with
        fewer parameters and less work. None if no type is gated or masked."""
        c = self.config
        kinds = [k for k in ATTENTION_TYPES if k in c.concrete_heads or c.alive(k, 0) is not None]
        if not kinds:
            return None
        params = jax.tree.map(np.asarray, params)
        values = head_gates(c, params)
        hk, d = c.head_dim, c.d_model
        kept = {}
        for kind in kinds:
            side, sub = _SUBLAYERS[kind]
            kept[kind] = []
            for layer in range(c.num_layers):
                p = dict(params[f"{side}_{layer}"][sub])
                g = values[kind][layer]
                p.pop("gate", None)
                idx = np.flatnonzero(g != 0)
                kept[kind].append([float(x) for x in g[idx]])
                if not len(idx):
                    p = {"out_conv": {"bias": p["out_conv"]["bias"]}}
                else:
                    for name, parts in (
                        (("query_conv", 1), ("mem_conv", 2)) if kind == "dec-enc"
                        else (("mem_conv", 3),)
                    ):  # fmt: skip
                        p[name] = {
                            k: _keep_heads(p[name][k], parts, c.num_heads, idx)
                            for k in ("kernel", "bias")
                        }
                    w = p["out_conv"]["kernel"].reshape(c.num_heads, hk, d)[idx]
                    p["out_conv"] = {"kernel": w.reshape(-1, d), "bias": p["out_conv"]["bias"]}
                layer_params = dict(params[f"{side}_{layer}"])
                layer_params[sub] = p
                params = dict(params, **{f"{side}_{layer}": layer_params})
        fields = {
            "kept_heads": kept,
            "concrete_heads": [k for k in c.concrete_heads if k not in kinds],
            "alive_heads": {k: [list(r) for r in v] for k, v in c.alive_heads if k not in kinds},
        }
        return fields, params

    def head_masks(self, params):
        """{type: [layers][heads] 1 if the head's eval gate (or fixed mask) is not 0}, for every
        gated or masked type: `model.alive_heads` of a `*_fixed` run (C.4). None if none."""
        values = head_gates(self.config, jax.tree.map(np.asarray, params))
        if not values:
            return None
        return {k: [[int(x != 0) for x in row] for row in v] for k, v in values.items()}

    def nll(self, src, src_mask, tgt, *, train):
        """Label-smoothed per-token loss [b, t] and aux."""
        logits, aux = self(src, src_mask, tgt, train=train)
        return smoothed_nll(logits, tgt, self.config.label_smoothing), aux
