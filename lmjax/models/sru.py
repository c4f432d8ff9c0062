"""SRU and SRU++ language models.

Papers: Lei et al. 2018, "Simple Recurrent Units for Highly Parallelizable Recurrence"
(arXiv 1709.02755); Lei 2021, "When Attention Meets Fast Recurrence" (arXiv 2102.12459).
Reference: asappresearch/sru, `sru` 2.6.0 on PyPI for SRU, 3.0.0.dev6 (branch 3.0.0-dev) for
SRU++. Notes: specs/recurrent.md part B.

Shape legend: b batch, t time, s keys (memory + segment), m memory slots, d d_model (n_d),
a the attention width (n_proj, d′), h heads, k head_dim, n units of an SRU layer
(directions · hidden), v vocab.

Map from the reference to this file:
  SRU cell (B1)              `_sru_highway`: U viewed [b, t, n, 3|4] (unit-major, the k matrices
                             fastest: candidate, forget, reset[, skip]); c_t by `scan.sru_scan`
                             (only the elementwise update runs inside lax.scan); r_t and
                             h_t = s + m ⊙ r_t ⊙ (c_t − s) for all t at once outside the scan
  SRUCell (2.6.0)            `SRULayer`: uni- or bidirectional, rescale, projection; the
                             parameter names and layouts are the reference's
  master train_enwik8 (B13)  `SRULM`: embedding (n_e) -> SRU stack -> Linear with bias
  SRUppAttention (B2)        `_Attention`: Z = W1 [mem; x]; Q = Z[m:]; [K|V] = W2 Z;
                             Y = LN(α · softmax(Q Kᵀ/√k + mask) V + Q); U = W3 Drop(Y)
  SRUppProjectedLinear (B2)  `_ProjectedLinear`: U = W2 Drop(LN(W1 x))
  SRUppCell / SRUpp (B2, B3) `_SRUppLayer`, `SRUpp`: memory = each attention layer's input
                             over the previous segment, K and V recomputed with current weights
  attention mask (B3)        `_attention_mask`: training sees all memory + the causal prefix;
                             evaluation (`same_length`) the mem_len + 1 most recent positions
  init (B5; B1 for 2.x)      xavier with √(1−p) on the last matrix, α = 0, weight_c ~ U(±1),
                             b_f = 0, b_r = highway_bias; `_sru2_weight` for 2.6.0's SRU
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

from lmjax.layers import adaptive, attention, scan
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


@dataclasses.dataclass(frozen=True)
class SRUConfig:
    vocab_size: int = 256
    d_model: int = 1024  # n_d: hidden (state) width of every layer
    embed_dim: int = 0  # n_e; 0 means min(vocab_size, d_model), as the reference
    num_layers: int = 6
    projection_size: int = 0  # n_proj: factorise each layer's weight (0 = none)
    highway_bias: float = -3.0
    dropout_rate: float = 0.2  # embedding, recurrence mask, final hidden
    rescale: bool = False
    vc_terms: bool = True
    scan_impl: str = "auto"
    unroll: int = 1
    dtype: str = "float32"

    @property
    def input_dim(self):
        return self.embed_dim or min(self.vocab_size, self.d_model)


class SRUppCarry(NamedTuple):
    """c: one [b, d] float32 state per layer; memory: one [b, m, d] float32 per attention layer
    (its last m inputs); mem_count: [b] int32 valid memory slots (shared by all layers)."""

    c: tuple
    memory: tuple
    mem_count: jax.Array


class SRUCarry(NamedTuple):
    """c: one [b, n] float32 state per layer."""

    c: tuple


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _xavier(scale=1.0):
    base = nn.initializers.xavier_uniform()
    return lambda key, shape, dtype=jnp.float32: base(key, shape, dtype) * scale


def _gate_bias(n, highway_bias):
    """[b_f; b_r] = [0 (n); highway_bias (n)]."""

    def init(key, shape, dtype=jnp.float32):
        del key
        assert shape == (2 * n,), shape
        return jnp.concatenate([jnp.zeros(n), jnp.full(n, highway_bias)]).astype(dtype)

    return init


def _scale_x(rescale, highway_bias):
    # The reference's `scale_x` buffer: set once at construction, never trained.
    return math.sqrt(1 + 2 * math.exp(highway_bias)) if rescale else 1.0


def _direction_time(x, bidirectional):
    """[t, b, n] -> the backward direction's units (second half) flipped in time. Involutive."""
    if not bidirectional:
        return x
    fwd, bwd = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([fwd, jnp.flip(bwd, 0)], axis=-1)


def _sru_highway(u, skip, weight_c, bias, c0, mask_c, *, bidirectional, impl, unroll):
    """The SRU elementwise part of one layer (B1), for all timesteps and directions at once.

    Args:
      u: [b, t, n, k] the transform's output, k = 3 (candidate, forget, reset) or 4 (+ skip).
      skip: [b, t, n] float, the highway input x · scale_x when k == 3; None for k == 4 or
        without a skip term.
      weight_c: [2n] = [v_f; v_r] float32, or None (no v ⊙ c terms).
      bias: [2n] = [b_f; b_r] float32.
      c0: [b, n] float32 initial state; for two directions [c_fwd; c_bwd] along n.
      mask_c: [b, n] float32 dropout mask on (c − s), or None.
    Returns:
      (h [b, t, n] float32, c_last [b, n] float32: the forward direction's state after the last
      step and the backward direction's after the first).
    """
    n = u.shape[2]
    assert bias.shape == (2 * n,) and c0.shape == (u.shape[0], n), (bias.shape, c0.shape)
    # Time-major, each direction in its own time order; U's columns stay unit-major.
    tm = lambda y: _direction_time(jnp.swapaxes(y.astype(jnp.float32), 0, 1), bidirectional)
    b_f, b_r = (z[None, None] for z in jnp.split(bias, 2))
    cand, fpre, rpre = tm(u[..., 0]), tm(u[..., 1]) + b_f, tm(u[..., 2]) + b_r  # [t, b, n]
    s = tm(u[..., 3]) if u.shape[-1] == 4 else (None if skip is None else tm(skip))
    v_f, v_r = (None, None) if weight_c is None else jnp.split(weight_c, 2)
    c, c_last = scan.sru_scan(cand, fpre, v_f, c0, impl=impl, unroll=unroll)
    if v_r is not None:
        c_prev = jnp.concatenate([c0[None], c[:-1]], axis=0)
        rpre = rpre + v_r[None, None] * c_prev
    gate = jax.nn.sigmoid(rpre)
    if mask_c is not None:
        gate = gate * mask_c[None]
    h = c * gate if s is None else s + (c - s) * gate
    return jnp.swapaxes(_direction_time(h, bidirectional), 0, 1), c_last


def _recurrence_mask(rate, shape, train):
    """SRU's variational mask on (c − s): one [b, n] draw per call, shared over time (B1)."""
    if rate <= 0 or not train:
        return None
    return nn.Dropout(rate)(jnp.ones(shape, jnp.float32), deterministic=False)


def _sru2_weight(d_w, n, k, dropout, rescale, highway_bias, vc_terms):
    """sru 2.6.0 init of `weight` [d_w, n·k]: U(±√(3/d_w)), candidate column · √(1−p), gate
    columns · √0.5 (when weight_c is used), k = 4 skip column · scale_x under rescale."""

    def init(key, shape, dtype=jnp.float32):
        w = _uniform(math.sqrt(3.0 / d_w))(key, shape, jnp.float32).reshape(d_w, n, k)
        col = jnp.ones((k,), jnp.float32)
        if dropout > 0:
            col = col.at[0].multiply(math.sqrt(1 - dropout))
        if rescale and k == 4:
            col = col.at[3].multiply(_scale_x(True, highway_bias))
        if vc_terms:
            col = col.at[1:3].multiply(math.sqrt(0.5))
        return (w * col[None, None]).reshape(shape).astype(dtype)

    return init


class SRULayer(nn.Module):
    """One SRU layer, as `sru.SRUCell` 2.6.0 (same parameter names and layouts).

    Attributes:
      hidden_size: state width per direction; the output has n = directions · hidden_size units.
      bidirectional: add a backward-in-time direction (an encoder layer; not causal).
      dropout_rate: p of the recurrence mask on (c − s) (0 for a stack's last layer).
      highway_bias: initial reset-gate bias b_r.
      rescale: multiply the k = 3 skip input by √(1 + 2 e^{highway_bias}).
      has_skip_term: the highway term s; without it h = m ⊙ r ⊙ c.
      projection_size: factorise W as W_proj W when 0 < p < min(d_in, n), as 2.6.0 does.
      vc_terms: v ⊙ c in the gates (False: 2.6.0's v1, no weight_c).
      weight_c_init: U(±weight_c_init); None is 2.6.0's default U(±√3)·√0.5.
      dtype: matmul dtype; the recurrence and outputs' state are float32.
      scan_impl, unroll: see `scan.sru_scan`.
    """

    hidden_size: int
    bidirectional: bool = False
    dropout_rate: float = 0.0
    highway_bias: float = 0.0
    rescale: bool = False
    has_skip_term: bool = True
    projection_size: int = 0
    vc_terms: bool = True
    weight_c_init: float | None = None
    dtype: jnp.dtype = jnp.float32
    scan_impl: str = "auto"
    unroll: int = 1

    @nn.compact
    def __call__(self, x, c0=None, *, train):
        """x: [b, t, d_in]; c0: [b, n] or None. Returns (h [b, t, n] dtype, c_last [b, n] f32)."""
        b, t, d_in = x.shape
        n = self.hidden_size * (2 if self.bidirectional else 1)
        k = 4 if self.has_skip_term and d_in != n else 3
        proj = self.projection_size if 0 < self.projection_size < min(d_in, n) else 0
        c0 = jnp.zeros((b, n), jnp.float32) if c0 is None else c0
        assert c0.shape == (b, n), (c0.shape, (b, n))
        xc = x.astype(self.dtype)
        if proj:
            w_proj = self.param("weight_proj", _uniform(math.sqrt(3.0 / d_in)), (d_in, proj))
            xc = jnp.einsum("btd,dp->btp", xc, w_proj.astype(self.dtype))
        d_w = proj or d_in
        init = _sru2_weight(
            d_w, n, k, self.dropout_rate, self.rescale, self.highway_bias, self.vc_terms
        )
        weight = self.param("weight", init, (d_w, n * k))
        u = jnp.einsum("btd,df->btf", xc, weight.astype(self.dtype)).reshape(b, t, n, k)
        weight_c = None
        if self.vc_terms:
            bound = math.sqrt(1.5) if self.weight_c_init is None else self.weight_c_init
            weight_c = self.param("weight_c", _uniform(bound), (2 * n,))
        bias = self.param("bias", _gate_bias(n, self.highway_bias), (2 * n,))
        skip = None
        if self.has_skip_term and k == 3:
            skip = x.astype(jnp.float32) * _scale_x(self.rescale, self.highway_bias)
        h, c = _sru_highway(
            u,
            skip,
            weight_c,
            bias,
            c0,
            _recurrence_mask(self.dropout_rate, (b, n), train),
            bidirectional=self.bidirectional,
            impl=self.scan_impl,
            unroll=self.unroll,
        )
        return h.astype(self.dtype), c


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
        probs = jax.nn.softmax(scores.astype(jnp.float32) + bias, axis=-1)
        probs = nn.Dropout(self.attn_dropout)(probs, deterministic=not train)
        o = jnp.einsum("bhts,bshk->bthk", probs.astype(self.dtype), heads(value))
        alpha = self.param("alpha", nn.initializers.zeros, (1,))  # ReZero-like, starts at 0
        y = alpha[0] * o.reshape(b, t, a).astype(jnp.float32) + q.astype(jnp.float32)
        y = nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name="layer_norm")(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
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
        z = nn.Dropout(self.dropout_rate)(z, deterministic=not train)
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
            weight_c = self.param("weight_c", _uniform(self.weight_c_init), (2 * d,))
        bias = self.param("bias", _gate_bias(d, self.highway_bias), (2 * d,))
        skip = x.astype(jnp.float32) * _scale_x(self.rescale, self.highway_bias)
        h, c = _sru_highway(
            u.reshape(b, t, d, 3),
            skip,
            weight_c,
            bias,
            c0,
            _recurrence_mask(self.mask_dropout, (b, d), train),
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
        drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=not train)
        init = _uniform(math.sqrt(3.0 / c.d_model))
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


class SRULM(base.Family):
    """The plain SRU language model (master language_model/train_enwik8.py, B13): Drop(E[x]) ->
    SRU stack -> Drop -> Linear(d, v) with bias. Embedding and output ~ U(±√(3/v)).

    Attributes:
      config: an SRUConfig.
    """

    config: SRUConfig

    def init_carry(self, batch_size):
        zeros = jnp.zeros((batch_size, self.config.d_model), jnp.float32)
        return SRUCarry(c=tuple(zeros for _ in range(self.config.num_layers)))

    @nn.compact
    def __call__(self, tokens, carry=None, *, train):
        """tokens: [b, t] int. Returns (logits [b, t, v] float32, carry, aux {})."""
        c = self.config
        carry = self.init_carry(tokens.shape[0]) if carry is None else carry
        drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=not train)
        init = _uniform(math.sqrt(3.0 / c.vocab_size))  # 3 / weight.size(0) in the reference
        x = drop(nn.Embed(c.vocab_size, c.input_dim, embedding_init=init, name="embed")(tokens))
        x = x.astype(jnp.dtype(c.dtype))
        states = []
        for i in range(c.num_layers):
            layer = SRULayer(
                c.d_model,
                dropout_rate=c.dropout_rate if i + 1 < c.num_layers else 0.0,
                highway_bias=c.highway_bias,
                rescale=c.rescale,
                projection_size=c.projection_size,
                vc_terms=c.vc_terms,
                dtype=jnp.dtype(c.dtype),
                scan_impl=c.scan_impl,
                unroll=c.unroll,
                name=f"layer_{i}",
            )
            x, state = layer(x, carry.c[i], train=train)
            states.append(state)
        h = drop(x).astype(jnp.float32)
        logits = nn.Dense(c.vocab_size, kernel_init=init, name="output")(h)
        return logits, SRUCarry(tuple(states)), {}
