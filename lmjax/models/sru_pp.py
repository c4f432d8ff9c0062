"""The SRU++ language model.

Paper: Lei 2021, "When Attention Meets Fast Recurrence: Training Language Models with Reduced
Compute" (arXiv 2102.12459). Reference: asappresearch/sru, `sru` 3.0.0.dev6 on PyPI (branch
3.0.0-dev) and its experiments/srupp_experiments. Notes: specs/recurrent.md part B.

Shape legend: b batch, t time, s keys (memory + segment), m memory slots, d d_model (n_d),
a the attention width (n_proj, d′), h heads, k head_dim, v vocab.

Map from the reference to this file:
  SRU cell (B1)              `layers/sru.py` `sru_highway` (k = 3, the skip is x · scale_x)
  SRUppAttention (B2)        `_Attention`: Z = W1 [mem; x]; Q = Z[m:]; [K|V] = W2 Z;
                             Y = LN(α · softmax(Q Kᵀ/√k + mask) V + Q); U = W3 Drop(Y), the
                             mask additive 0 / -10000 (`attention.masked_softmax`'s `bias`)
  SRUppProjectedLinear (B2)  `_ProjectedLinear`: U = W2 Drop(LN(W1 x))
  SRUppCell / SRUpp (B2, B3) `_SRUppLayer`, `SRUpp`: memory = each attention layer's input
                             over the previous segment, K and V recomputed with current weights
  attention mask (B3)        `_attention_mask`: training sees all memory + the causal prefix;
                             evaluation (`same_length`) the mem_len + 1 most recent positions
  init (B5)                  xavier with √(1−p) on the last matrix, α = 0, weight_c ~ U(±1),
                             b_f = 0, b_r = highway_bias
  dropout (B6)               embedding, attention probabilities, Y before W3, the final hidden;
                             the per-segment mask m on (c − s) in every layer but the last
  train_wt103 (B4)           `adaptive_cutoffs`: adaptive input and softmax (layers/adaptive.py)
                             with tables and projections tied, emb_dropout inside, reversed
                             cluster logits, no input scaling; `nll` gives the loss without
                             [b, t, v] logits, `__call__` the full log-probabilities

The memory is a fixed buffer of `mem_len` slots per attention layer plus a per-row count of
valid slots (static shapes). The reference keeps exactly the previous segment; with the fixed
training windows (seq_len == mem_len) the buffer holds the same positions. At evaluation a query
sees the mem_len + 1 most recent positions, so a whole pass equals passes split through the
carry. To evaluate with the reference's longer eval window (3072), set model.mem_len to it.
"""

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.layers import adaptive, attention, core
from lmjax.layers import sru as sru_layer
from lmjax.models import base

_LN_EPS = 1e-5
_MASK_VALUE = -10000.0  # the reference's additive mask constant (B11.7), not -inf


@dataclasses.dataclass(frozen=True)
class SRUppConfig:
    vocab_size: int = 256
    d_model: int = 3072  # n_d: embedding, layer input/output and state width
    attn_dim: int = 768  # n_proj: the attention width d′
    num_layers: int = 10
    num_heads: int = 1
    attn_every_k: int = 1  # layer i has attention iff (i + 1) % k == 0; others projected-linear
    mem_len: int = 1024  # memory slots per attention layer (= the training unroll in the paper)
    highway_bias: float = -2.0  # initial b_r ("--bias")
    dropout_rate: float = 0.22  # embedding, before W3, recurrence mask, final hidden
    attn_dropout: float = 0.22  # attention probabilities
    tie_embeddings: bool = False  # enwik8 has an untied output Linear (with bias)
    # wt103 (B4): adaptive input + softmax when cutoffs are given, tied by tie_embeddings
    adaptive_cutoffs: tuple = ()  # cluster starts, e.g. (19997, 39997, 199997); () = plain
    d_embed: int = 1024  # n_e: cluster 0's embedding width (adaptive only)
    div_val: int = 4  # cluster i has width d_embed // div_val**i (adaptive only)
    emb_dropout: float = 0.0  # inside the adaptive input and softmax
    rescale: bool = False  # scale the skip input by √(1 + 2 e^{highway_bias})
    vc_terms: bool = True  # v ⊙ c in the gates; False is the reference's v1 (weight_c ≡ 0)
    weight_c_init: float = 1.0  # weight_c ~ U(±weight_c_init)
    scan_impl: str = "auto"  # sequential | associative | auto (see lmjax/layers/scan.py)
    unroll: int = 1  # lax.scan unroll
    dtype: str = "float32"  # compute dtype; params, LN, softmax, recurrence and carries stay f32

    @property
    def attn_layers(self):
        return tuple(i for i in range(self.num_layers) if (i + 1) % self.attn_every_k == 0)


class SRUppCarry(NamedTuple):
    """c: one [b, d] float32 state per layer; memory: one [b, m, d] float32 per attention layer
    (its last m inputs); mem_count: [b] int32 valid memory slots (shared by all layers)."""

    c: tuple
    memory: tuple
    mem_count: jax.Array


def _xavier(scale=1.0):
    base = nn.initializers.xavier_uniform()
    return lambda key, shape, dtype=jnp.float32: base(key, shape, dtype) * scale


def _attention_mask(t, mem_len, mem_count, same_length):
    """Which of [memory (m) | segment (t)] each query sees (B3). Returns [b, t, m + t] bool.

    Key j sits at position j − m relative to the segment start, query i at i. Training: every
    valid memory slot and the causal prefix. `same_length` (evaluation): also key position
    ≥ i − m, i.e. j ≥ i, the reference's band below the diagonal: the m + 1 most recent
    positions. Without memory (mem_len 0) the window is the causal prefix.
    """
    mask = attention.memory_causal_mask(t, mem_len, mem_count)
    if same_length and mem_len > 0:
        band = jnp.arange(mem_len + t)[None, :] >= jnp.arange(t)[:, None]
        mask = mask & band[None]
    return mask


class _Attention(nn.Module):
    """SRU++'s attention sub-layer (SRUppAttention, post-LN). Produces U [b, t, d_out]."""

    d_out: int
    attn_dim: int
    num_heads: int
    dropout_rate: float
    attn_dropout: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, memory, mask, *, train):
        """x: [b, t, d]; memory: [b, m, d] float32 or None; mask: [b, t, m + t] bool."""
        b, t, _ = x.shape
        a, nh = self.attn_dim, self.num_heads
        m = 0 if memory is None else memory.shape[1]
        assert mask.shape == (b, t, m + t), (mask.shape, (b, t, m + t))
        scale = math.sqrt(1 - self.dropout_rate) if self.dropout_rate > 0 else 1.0

        def dense(features, name, init_scale=1.0):
            kernel_init = _xavier(init_scale)
            return nn.Dense(
                features, use_bias=False, kernel_init=kernel_init, dtype=self.dtype, name=name
            )

        xs = x if memory is None else jnp.concatenate([memory.astype(x.dtype), x], axis=1)
        z = dense(a, "linear1")(xs)  # [b, s, a]
        q = z[:, m:]  # the query IS the projected input (no W_q)
        key, value = jnp.split(dense(2 * a, "linear2")(z), 2, axis=-1)
        heads = lambda y: y.reshape(b, y.shape[1], nh, a // nh)  # contiguous k slices
        scores = jnp.einsum("bthk,bshk->bhts", heads(q * (a // nh) ** -0.5), heads(key))
        bias = jnp.where(mask, 0.0, _MASK_VALUE)[:, None]  # additive, as the reference
        probs = attention.masked_softmax(scores, bias=bias)
        probs = core.Dropout(self.attn_dropout)(probs, deterministic=not train)
        o = jnp.einsum("bhts,bshk->bthk", probs.astype(self.dtype), heads(value))
        alpha = self.param("alpha", nn.initializers.zeros, (1,))  # ReZero-like, starts at 0
        y = alpha[0] * o.reshape(b, t, a).astype(jnp.float32) + q.astype(jnp.float32)
        y = nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name="layer_norm")(y)
        y = core.Dropout(self.dropout_rate)(y, deterministic=not train)
        return dense(self.d_out, "linear3", scale)(y)


class _ProjectedLinear(nn.Module):
    """SRU++'s layer without attention (SRUppProjectedLinear): U = W2 Drop(LN(W1 x))."""

    d_out: int
    attn_dim: int
    dropout_rate: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, *, train):
        scale = math.sqrt(1 - self.dropout_rate) if self.dropout_rate > 0 else 1.0
        z = nn.Dense(
            self.attn_dim, use_bias=False, kernel_init=_xavier(), dtype=self.dtype, name="linear1"
        )(x)
        z = nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name="layer_norm")(z.astype(jnp.float32))
        z = core.Dropout(self.dropout_rate)(z, deterministic=not train)
        return nn.Dense(
            self.d_out, use_bias=False, kernel_init=_xavier(scale), dtype=self.dtype, name="linear2"
        )(z)


class _SRUppLayer(nn.Module):
    """One SRU++ layer: the transform (attention or projected linear) feeds the SRU cell (k=3)."""

    attn_dim: int
    num_heads: int
    use_attn: bool
    dropout_rate: float
    attn_dropout: float
    mask_dropout: float  # the recurrence mask's p: dropout_rate, or 0 in the last layer
    highway_bias: float
    rescale: bool
    vc_terms: bool
    weight_c_init: float
    dtype: jnp.dtype
    scan_impl: str
    unroll: int

    @nn.compact
    def __call__(self, x, c0, memory, mask, *, train):
        """x: [b, t, d]; c0: [b, d]. Returns (h [b, t, d] dtype, c_last [b, d] float32)."""
        b, t, d = x.shape
        p = self.dropout_rate
        if self.use_attn:
            transform = _Attention(
                3 * d, self.attn_dim, self.num_heads, p, self.attn_dropout, self.dtype,
                name="transform",
            )  # fmt: skip
            u = transform(x, memory, mask, train=train)
        else:
            transform = _ProjectedLinear(3 * d, self.attn_dim, p, self.dtype, name="transform")
            u = transform(x, train=train)
        weight_c = None
        if self.vc_terms:
            weight_c = self.param("weight_c", core.uniform(self.weight_c_init), (2 * d,))
        bias = self.param("bias", sru_layer.gate_bias(d, self.highway_bias), (2 * d,))
        skip = x.astype(jnp.float32) * sru_layer.scale_x(self.rescale, self.highway_bias)
        h, c = sru_layer.sru_highway(
            u.reshape(b, t, d, 3),
            skip,
            weight_c,
            bias,
            c0,
            sru_layer.recurrence_mask(self.mask_dropout, (b, d), train),
            bidirectional=False,
            impl=self.scan_impl,
            unroll=self.unroll,
        )
        return h.astype(self.dtype), c


class SRUpp(base.Family):
    """The SRU++ language model (B3): Drop(E[x]) -> SRU++ layers -> Drop -> output layer; with
    `adaptive_cutoffs` the embedding and output layer are the tied adaptive ones (B4).

    Attributes:
      config: an SRUppConfig.
    """

    config: SRUppConfig

    def init_carry(self, batch_size):
        c = self.config
        zeros = lambda *shape: jnp.zeros((batch_size, *shape), jnp.float32)
        memory = tuple(zeros(c.mem_len, c.d_model) for _ in c.attn_layers) if c.mem_len else ()
        return SRUppCarry(
            c=tuple(zeros(c.d_model) for _ in range(c.num_layers)),
            memory=memory,
            mem_count=jnp.zeros((batch_size,), jnp.int32),
        )

    def __call__(self, tokens, carry=None, *, train):
        """tokens: [b, t] int. Returns (logits [b, t, v] float32, log-probabilities when
        adaptive; carry; aux {})."""
        return self._forward(tokens, carry, None, train=train)

    def nll(self, tokens, targets, carry=None, *, train):
        """tokens, targets: [b, t] int. Returns (nll [b, t] float32, carry, aux {}).

        With the adaptive softmax the loss comes from its clusters without [b, t, v] logits;
        otherwise it is the base cross-entropy of the logits."""
        if not self.config.adaptive_cutoffs:
            return super().nll(tokens, targets, carry, train=train)
        return self._forward(tokens, carry, targets, train=train)

    @nn.compact
    def _forward(self, tokens, carry, targets, *, train):
        """The model; `targets` is given only with the adaptive softmax (then the output is
        the per-token NLL [b, t] float32)."""
        c = self.config
        b, t = tokens.shape
        assert c.attn_dim % c.num_heads == 0 and c.attn_every_k >= 1, c
        carry = self.init_carry(b) if carry is None else carry
        drop = lambda y: core.Dropout(c.dropout_rate)(y, deterministic=not train)
        init = core.uniform(math.sqrt(3.0 / c.d_model))
        if c.adaptive_cutoffs:
            io = adaptive.AdaptiveIO(
                c.vocab_size,
                c.d_model,
                tuple(c.adaptive_cutoffs),
                d_embed=c.d_embed,
                div_val=c.div_val,
                dropout_rate=c.emb_dropout,
                tie_tables=c.tie_embeddings,
                tie_projs=c.tie_embeddings,
                init_scheme="xavier",  # train_wt103.py init_weights: U(±√(3/d)), xavier, 0
                dtype=jnp.dtype(c.dtype),
                name="adaptive",
            )
            x = drop(io.embed(tokens, train=train)).astype(jnp.dtype(c.dtype))
        else:
            embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=init, name="embed")
            x = drop(embed(tokens)).astype(jnp.dtype(c.dtype))
        mask = _attention_mask(t, c.mem_len, carry.mem_count, same_length=not train)
        states, memories = [], []
        for i in range(c.num_layers):
            use_attn = i in c.attn_layers
            memory = None
            if use_attn and c.mem_len:
                memory = carry.memory[c.attn_layers.index(i)]
                # This layer's input is the next segment's memory (dropout included, B2).
                joined = jnp.concatenate([memory, x.astype(jnp.float32)], axis=1)
                memories.append(joined[:, -c.mem_len :])
            layer_mask = mask if memory is not None else mask[:, :, -t:]
            layer = _SRUppLayer(
                c.attn_dim,
                c.num_heads,
                use_attn,
                c.dropout_rate,
                c.attn_dropout,
                mask_dropout=c.dropout_rate if i + 1 < c.num_layers else 0.0,
                highway_bias=c.highway_bias,
                rescale=c.rescale,
                vc_terms=c.vc_terms,
                weight_c_init=c.weight_c_init,
                dtype=jnp.dtype(c.dtype),
                scan_impl=c.scan_impl,
                unroll=c.unroll,
                name=f"layer_{i}",
            )
            x, state = layer(x, carry.c[i], memory, layer_mask, train=train)
            states.append(state)
        h = drop(x).astype(jnp.float32)
        new_carry = SRUppCarry(
            tuple(states), tuple(memories), jnp.minimum(carry.mem_count + t, c.mem_len)
        )
        if c.adaptive_cutoffs:
            if targets is None:
                return io.log_probs(h, train=train), new_carry, {}
            return io.nll(h, targets, train=train), new_carry, {}
        if c.tie_embeddings:
            bias = self.param("output_bias", nn.initializers.zeros, (c.vocab_size,))
            logits = embed.attend(h) + bias[None, None]
        else:
            logits = nn.Dense(c.vocab_size, kernel_init=init, name="output")(h)
        return logits, new_carry, {}
