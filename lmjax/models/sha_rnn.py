"""SHA-RNN: Single Headed Attention RNN (Merity 2019, arXiv 1911.11423; reference Smerity/sha-rnn).

Shape legend: b batch, t time, s keys (memory + segment), m memory slots, d d_model,
f d_ff (the Boom width), v vocab.

Map from the reference (specs/recurrent.md part A) to this file:
  block j (A2)                 `_Block`: LN_start -> LSTM -> dropout, no residual around the LSTM
  single-head attention (A3)   `_SingleHeadAttention`: gates σ(qs), σ(ks) and the Overparam value
                               gate σ(f)⊙tanh(c), query Linear + LN, no key/value/output
                               projection; masked keys get finfo(float32).min
                               (`attention.masked_softmax`)
  Boom (A4)                    `_Boom`: Linear(d -> f), GELU x·σ(1.702x), sum of the f/d chunks
  output (A5)                  tied embedding `attend` plus its own bias
  init (A6)                    N(0, (0.1/√d)²) for every Linear and the embedding, zero biases,
                               PyTorch-default LSTM init, LN γ=1 β=0, gate logits 0
The residuals add onto LayerNorm outputs (LN_mid(h) + attn, LN_ff(h) + Boom), so the block is
neither pre- nor post-LN (A12.1). All LN eps are 1e-12 (A12.5).

The memory is a fixed buffer of `mem_len` slots of LN_mem outputs with a per-row count of valid
slots, so shapes are static under jit. The reference keeps at most `max_positions - L` = 5000 - L
past positions for a segment of length L (A3); with the fixed L of our training windows that is
exactly `mem_len = 5000 - seq_len`. Vocabulary: raw bytes (256) rather than the reference's
frequency-ranked 205 observed bytes; bits per character do not depend on the id order, but a
reference checkpoint needs its embedding rows permuted (A9, A12.11).
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.layers import attention, core, rnn
from lmjax.models import base

_LN_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class ShaRNNConfig:
    vocab_size: int = 256
    d_model: int = 1024
    d_ff: int = 4096  # Boom width; must be a multiple of d_model
    num_layers: int = 4
    attn_layers: tuple = (2,)  # blocks that carry the single-head attention
    mem_len: int = 3976  # past positions attended to: 5000 - bptt 1024 in the reference
    dropout_rate: float = 0.1  # final hidden, before the decoder ("dropout")
    dropout_hidden: float = 0.1  # LSTM outputs, attention, Boom ("dropouth")
    dropout_input: float = 0.1  # embedding output ("dropouti")
    dtype: str = "float32"  # compute dtype; params, LN, softmax, loss and carries stay float32
    unroll: int = 1  # lax.scan unroll of the LSTM recurrence


class ShaRNNCarry(NamedTuple):
    """lstm: one LSTMCarry per block; memory: one [b, m, d] float32 per attention block;
    mem_count: [b] int32 valid memory slots (shared: every attention block sees the same
    tokens)."""

    lstm: tuple
    memory: tuple
    mem_count: jax.Array


def _dense_init(d_model):
    return nn.initializers.normal(0.1 / d_model**0.5)


def _gelu_sigmoid(x):
    # The reference's GELU is the sigmoid approximation, not erf or tanh (A4, A12.6).
    return x * jax.nn.sigmoid(1.702 * x)


class _Boom(nn.Module):
    """Linear(d -> f), GELU, dropout, then sum of the f/d chunks of width d (no 2nd matrix)."""

    d_model: int
    d_ff: int
    dropout_rate: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, *, train):
        z = nn.Dense(self.d_ff, kernel_init=_dense_init(self.d_model), dtype=self.dtype)(x)
        z = core.Dropout(self.dropout_rate)(_gelu_sigmoid(z), deterministic=not train)
        return z.reshape(*z.shape[:-1], self.d_ff // self.d_model, self.d_model).sum(axis=-2)


class _SingleHeadAttention(nn.Module):
    """One head of width d over [memory | segment]; keys and values are the LN_mem states."""

    d_model: int
    dropout_rate: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h, kv, mask, *, train):
        """h: [t, b, d] query side (LN_mid); kv: [b, s, d] float32; mask: [b, t, s] bool.

        Returns [t, b, d]: the model runs time-major (the LSTMs' layout)."""
        d = self.d_model
        drop = lambda x: core.Dropout(self.dropout_rate)(x, deterministic=not train)
        qs, ks, vs = (self.param(n, nn.initializers.zeros, (1, 1, d)) for n in ("qs", "ks", "vs"))
        q = nn.Dense(d, kernel_init=_dense_init(d), dtype=self.dtype, name="query")(h)
        q = nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name="query_norm")(q.astype(jnp.float32))
        q = jax.nn.sigmoid(qs) * q
        # Overparam value gate, recomputed every call from σ(vs): outputs [c | f] (A3).
        cf = nn.Dense(2 * d, kernel_init=_dense_init(d), name="value_gate")(jax.nn.sigmoid(vs))
        gv = jax.nn.sigmoid(cf[..., d:]) * jnp.tanh(cf[..., :d])  # [1, 1, d]
        k = jax.nn.sigmoid(ks) * kv
        v = gv * kv
        q, v = drop(q), drop(v)  # the reference drops q and v but not k
        scores = jnp.einsum("tbd,bsd->bts", q.astype(self.dtype), k.astype(self.dtype))
        probs = drop(attention.masked_softmax(scores.astype(jnp.float32) / d**0.5, mask=mask))
        return jnp.einsum("bts,bsd->tbd", probs.astype(self.dtype), v.astype(self.dtype))


class _Block(nn.Module):
    d_model: int
    d_ff: int
    use_attn: bool
    dropout_hidden: float
    dtype: jnp.dtype
    unroll: int

    @nn.compact
    def __call__(self, x, lstm_carry, memory, mem_count, *, train):
        drop = lambda y: core.Dropout(self.dropout_hidden)(y, deterministic=not train)
        ln = lambda name: nn.LayerNorm(_LN_EPS, dtype=jnp.float32, name=name)
        """x: [t, b, d], time-major, as the LSTM scans it; memory: [b, m, d]."""
        lstm = rnn.LSTM(self.d_model, self.dtype, self.unroll, time_major=True, name="lstm")
        y, lstm_carry = lstm(ln("ln_start")(x), lstm_carry)
        h = drop(y)  # no residual around the LSTM: its output replaces the stream
        if self.use_attn:
            m = ln("ln_mem")(h)  # what is stored as memory, not recomputed later
            h = ln("ln_mid")(h)
            t, mem_len = h.shape[0], memory.shape[1]
            kv = jnp.concatenate([memory, jnp.swapaxes(m, 0, 1)], axis=1)  # [b, m + t, d] f32
            mask = attention.memory_causal_mask(t, mem_len, mem_count)
            a = _SingleHeadAttention(self.d_model, self.dropout_hidden, self.dtype, name="attn")(
                h, kv, mask, train=train
            )
            h = h + drop(a)
            memory = kv[:, -mem_len:] if mem_len else memory
        boom = _Boom(self.d_model, self.d_ff, self.dropout_hidden, self.dtype, name="boom")
        h = ln("ln_ff")(h) + drop(boom(ln("ln_xff")(h), train=train))
        return h, lstm_carry, memory


class ShaRNN(base.Family):
    """The SHA-RNN language model.

    Attributes:
      config: a ShaRNNConfig.
    """

    config: ShaRNNConfig

    def init_carry(self, batch_size):
        c = self.config
        return ShaRNNCarry(
            lstm=tuple(rnn.zeros_carry(batch_size, c.d_model) for _ in range(c.num_layers)),
            memory=tuple(
                jnp.zeros((batch_size, c.mem_len, c.d_model), jnp.float32) for _ in c.attn_layers
            ),
            mem_count=jnp.zeros((batch_size,), jnp.int32),
        )

    @nn.compact
    def __call__(self, tokens, carry=None, *, train):
        """tokens: [b, t] int. Returns (logits [b, t, v] float32, carry, aux {})."""
        c = self.config
        b, t = tokens.shape
        assert c.d_ff % c.d_model == 0, "Boom width must be a multiple of d_model"
        carry = self.init_carry(b) if carry is None else carry
        dtype = jnp.dtype(c.dtype)
        embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=_dense_init(c.d_model))
        # Time-major inside ([t, b, d]): the LSTM scans need it, and one transpose of the token
        # ids here and one of h before the decoder replace two around every LSTM.
        h = core.Dropout(c.dropout_input)(embed(tokens.T), deterministic=not train)
        lstm_out, mem_out = [], list(carry.memory)
        for i in range(c.num_layers):
            use_attn = i in c.attn_layers
            j = c.attn_layers.index(i) if use_attn else 0
            memory = carry.memory[j] if use_attn else None
            block = _Block(
                c.d_model, c.d_ff, use_attn, c.dropout_hidden, dtype, c.unroll, name=f"layer_{i}"
            )
            h, lstm_i, memory = block(h, carry.lstm[i], memory, carry.mem_count, train=train)
            lstm_out.append(lstm_i)
            if use_attn:
                mem_out[j] = memory
        h = core.Dropout(c.dropout_rate)(h, deterministic=not train)
        bias = self.param("decoder_bias", nn.initializers.zeros, (c.vocab_size,))
        logits = embed.attend(jnp.swapaxes(h, 0, 1).astype(jnp.float32)) + bias[None, None, :]
        mem_count = jnp.minimum(carry.mem_count + t, c.mem_len)
        return logits, ShaRNNCarry(tuple(lstm_out), tuple(mem_out), mem_count), {}
