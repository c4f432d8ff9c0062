"""Transformer-XL (Dai et al. 2019, arXiv 1901.02860; reference kimiyoung/transformer-xl
pytorch, as forked by IDSIA/lmtool-fwms: attn_type 0 in specs/attention.md B.1-B.3).

Shape legend: b batch, t query time (segment), s key time (memory + segment), m memory slots,
h heads, k head_dim, d d_model, f d_ff, v vocab.

Map from the reference to this file:
  word embedding ×√d, tied output    `TransformerXL`: one N(0, 0.02) table, `attend` + own bias
  segment recurrence (§3.2)          `TransformerXLCarry.memory`: layer i's *input* of the last m
                                     positions (hids[i] in `_update_mems`), stop-gradient
  relative positions (§3.3)          `_RelPartialAttention`: (q + u)·k + (q + v)·W_r R(i - j), u, v
                                     (`r_w_bias`, `r_r_bias`, [h, k]) shared by all layers
  positions                          R = `attention.sinusoid_positions` over s-1 .. 0, clamped at
                                     `clamp_len`, with dropout as in the reference
  layer                              post-LN: LN(h + Drop(W_o A(h))), LN(h + Drop(FF(h)))
  qkv_net / r_net / o_net            no biases; qkv kernel columns = [q | k | v], head-major
  init (lmtool-fwms `weights_init`)  N(0, 0.02) weights, biases 0, LN scale N(1, 0.02)

The reference starts with empty memories and grows them to mem_len. Here the memory is a
fixed buffer of m slots with a per-row count of the valid ones (masked), so shapes are static
and the relative distances of the valid keys are the reference's.

Decoding: with `kv_cache=True` (inference only) the carry holds each layer's projected keys
and values (`attention.KVCache`) instead of its inputs; the numbers are the same, and a new
token costs one projection instead of re-projecting the whole memory.

Not reproduced: `same_length` (used only by the reference's enwik8 *evaluation*, with a longer
eval memory), adaptive softmax/input (not needed at byte level).
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.layers import attention, core, gates
from lmjax.models import base

_LN_EPS = 1e-5
_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class TransformerXLConfig:
    vocab_size: int = 256
    d_model: int = 512
    num_heads: int = 8
    head_dim: int = 64
    d_ff: int = 2048
    num_layers: int = 12
    mem_len: int = 512  # m, positions of memory per layer
    clamp_len: int = 0  # distances above this use this position; 0 = no clamp
    dropout_rate: float = 0.1  # embeddings, positions, residual branches, FF, final hidden
    dropout_attn: float = 0.0  # attention probabilities ("dropatt")
    dtype: str = "float32"  # compute dtype; params, LN, softmax, loss and memories stay float32
    fused_attention: bool = True  # jax.nn.dot_product_attention when dropout_attn is off
    kv_cache: bool = False  # carry projected keys/values instead of layer inputs (decoding)
    # Hard-Concrete gates on every layer's heads (layers/gates.py, the Story of Heads' gate): the
    # loss gains head_gate_coef x the mean over layers of Σ_h P(g_h ≠ 0); aux "open_heads" counts
    # the heads whose eval gate is not 0.
    head_gates: bool = False
    head_gate_coef: float = 0.1  # λ (the reference's example `concrete_coef`)


class TransformerXLCarry(NamedTuple):
    """memory: one [b, m, d] float32 per layer (its inputs), or one attention.KVCache per layer
    when kv_cache; mem_count: [b] int32 valid memory slots (shared by all layers)."""

    memory: tuple
    mem_count: jax.Array


def _ln_scale_init(key, shape, dtype=jnp.float32):
    # Transformer-XL draws LayerNorm gains from N(1, 0.02) rather than ones.
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def layer_norm(name):
    return nn.LayerNorm(_LN_EPS, dtype=jnp.float32, scale_init=_ln_scale_init, name=name)


class _RelPartialAttention(nn.Module):
    """Transformer-XL relative multi-head attention with a post-LN residual.

    Attributes:
      num_heads, head_dim: h, k.
      dropout_rate: on the output projection; dropout_attn: on the probabilities.
      dtype: compute dtype of the projections.
      fused: use jax.nn.dot_product_attention where it applies.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float
    dropout_attn: float
    dtype: jnp.dtype
    fused: bool
    head_gates: bool = False

    @nn.compact
    def __call__(self, h, memory, r, u, v_bias, mask, *, train):
        """h: [b, t, d]; memory: [b, m, d] float32 or KVCache; r: [s, d] positions (descending);
        u, v_bias: [h, k]; mask: [b, t, s] bool. Returns ([b, t, d] float32, next KVCache,
        gates.GateStats or None)."""
        b, t, d = h.shape
        nh, hk = self.num_heads, self.head_dim
        dense = lambda n, name: nn.Dense(
            n, use_bias=False, kernel_init=_INIT, dtype=self.dtype, name=name
        )
        next_cache = None
        if isinstance(memory, attention.KVCache):
            qkv = dense(3 * nh * hk, "qkv")(h).reshape(b, t, 3, nh, hk)
            k, v, next_cache = attention.extend_kv_cache(memory, qkv[:, :, 1], qkv[:, :, 2])
            q = qkv[:, :, 0]
        else:
            cat = jnp.concatenate([memory, h.astype(jnp.float32)], axis=1)  # [b, s, d]
            qkv = dense(3 * nh * hk, "qkv")(cat).reshape(b, cat.shape[1], 3, nh, hk)
            q, k, v = qkv[:, -t:, 0], qkv[:, :, 1], qkv[:, :, 2]
        s = k.shape[1]
        r_k = dense(nh * hk, "r_net")(r).reshape(s, nh, hk)
        q = q.astype(jnp.float32)
        # BD: (q + v)·W_r R over all distances, then moved to key order (`rel_shift`).
        bd = jnp.einsum("bthk,shk->bhts", (q + v_bias[None, None]).astype(self.dtype), r_k)
        bd = attention.rel_shift(bd.astype(jnp.float32)) * hk**-0.5
        drop_attn = None
        if train and self.dropout_attn > 0:
            drop_attn = lambda p: core.Dropout(self.dropout_attn)(p, deterministic=False)
        out = attention.relative_attention(
            (q + u[None, None]).astype(self.dtype),
            k.astype(self.dtype),
            v.astype(self.dtype),
            bd,
            mask[:, None],
            dropout=drop_attn,
            fused=self.fused,
        )
        stats = None
        if self.head_gates:  # each head's context, before the heads are combined
            out, stats = gates.HeadGate(nh, name="gate")(out, train=train)
        out = dense(d, "o_net")(out.reshape(b, t, nh * hk))
        out = core.Dropout(self.dropout_rate)(out, deterministic=not train)
        return layer_norm("layer_norm")(h + out.astype(jnp.float32)), next_cache, stats


class FeedForward(nn.Module):
    """Post-LN ReLU FF: LN(h + Drop(W₂ Drop(ReLU(W₁h + b₁)) + b₂))."""

    d_ff: int
    dropout_rate: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h, *, train):
        drop = lambda x: core.Dropout(self.dropout_rate)(x, deterministic=not train)
        z = nn.Dense(self.d_ff, kernel_init=_INIT, dtype=self.dtype, name="fc1")(h)
        z = drop(
            nn.Dense(h.shape[-1], kernel_init=_INIT, dtype=self.dtype, name="fc2")(
                drop(jax.nn.relu(z))
            )
        )
        return layer_norm("layer_norm")(h + z.astype(jnp.float32))


class _DecoderLayer(nn.Module):
    """Relative attention then the FF, each with its post-LN residual (`RelPartialLearnable
    DecoderLayer`)."""

    config: TransformerXLConfig

    @nn.compact
    def __call__(self, h, memory, r, u, v_bias, mask, *, train):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        attn = _RelPartialAttention(
            c.num_heads,
            c.head_dim,
            c.dropout_rate,
            c.dropout_attn,
            dtype,
            c.fused_attention,
            c.head_gates,
            name="attn",
        )
        h, kv, stats = attn(h, memory, r, u, v_bias, mask, train=train)
        return FeedForward(c.d_ff, c.dropout_rate, dtype, name="ff")(h, train=train), kv, stats


class TransformerXL(base.Family):
    """The Transformer-XL language model with segment-level recurrence.

    Attributes:
      config: a TransformerXLConfig.
    """

    config: TransformerXLConfig

    @property
    def rng_streams(self):
        return ("dropout", gates.RNG_STREAM) if self.config.head_gates else ("dropout",)

    @property
    def aux_losses(self):
        return ("l0_penalty",) if self.config.head_gates else ()

    def init_carry(self, batch_size):
        c = self.config
        if c.kv_cache:
            z = attention.zeros_kv_cache(batch_size, c.mem_len, c.num_heads, c.head_dim)
            memory = tuple(z for _ in range(c.num_layers))
        else:
            zeros = jnp.zeros((batch_size, c.mem_len, c.d_model), jnp.float32)
            memory = tuple(zeros for _ in range(c.num_layers))
        return TransformerXLCarry(memory, jnp.zeros((batch_size,), jnp.int32))

    @nn.compact
    def __call__(self, tokens, carry=None, *, train):
        """tokens: [b, t] int. Returns (logits [b, t, v] float32, carry, aux): aux is {}, or
        with head_gates {"l0_penalty": λ·L0, "open_heads": heads with an open eval gate}."""
        c = self.config
        b, t = tokens.shape
        assert c.d_model % 2 == 0, "the sinusoid needs an even d_model"
        assert not (train and c.kv_cache), (
            "kv_cache is for decoding: the reference trains "
            "with gradients through the memory's key/value projections"
        )
        carry = self.init_carry(b) if carry is None else carry
        drop = lambda x: core.Dropout(c.dropout_rate)(x, deterministic=not train)
        m = c.mem_len
        s = m + t
        embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=_INIT, name="embed")
        h = drop(embed(tokens) * c.d_model**0.5)
        pos = jnp.arange(s - 1, -1, -1, dtype=jnp.float32)
        if c.clamp_len > 0:
            pos = jnp.minimum(pos, c.clamp_len)
        r = drop(attention.sinusoid_positions(pos, c.d_model))
        u = self.param("r_w_bias", _INIT, (c.num_heads, c.head_dim))
        v_bias = self.param("r_r_bias", _INIT, (c.num_heads, c.head_dim))
        mask = attention.memory_causal_mask(t, m, carry.mem_count)
        new_memory, gate_stats = [], []
        for i in range(c.num_layers):
            mem_i = carry.memory[i]
            if not c.kv_cache:
                # The memory is what layer i saw as input; it never carries gradient.
                new_memory.append(attention.append_memory(mem_i, carry.mem_count, h)[0])
            layer = _DecoderLayer(c, name=f"layer_{i}")
            h, kv, stats = layer(h, mem_i, r, u, v_bias, mask, train=train)
            gate_stats.append(stats)
            if c.kv_cache:
                new_memory.append(kv)
        h = drop(h)
        bias = self.param("out_bias", nn.initializers.zeros, (c.vocab_size,))
        logits = embed.attend(h.astype(jnp.float32)) + bias[None, None, :]
        mem_count = jnp.minimum(carry.mem_count + t, m)
        new_memory = jax.lax.stop_gradient(tuple(new_memory))
        aux = {}
        if c.head_gates:
            aux = {
                "l0_penalty": c.head_gate_coef * gates.l0_penalty(gate_stats),
                "open_heads": sum(s.open for s in gate_stats).astype(jnp.float32),
            }
        return logits, TransformerXLCarry(new_memory, mem_count), aux
