"""The plain SRU language model.

Paper: Lei et al. 2018, "Simple Recurrent Units for Highly Parallelizable Recurrence" (arXiv
1709.02755). Reference: asappresearch/sru master language_model/train_enwik8.py with `sru`
2.6.0 on PyPI. Notes: specs/recurrent.md part B (B13). SRU++ is models/sru_pp.py.

Shape legend: b batch, t time, d d_model (n_d, the state width of every layer), n units of an
SRU layer (here n = d), v vocab.

Map from the reference to this file:
  SRU cell, SRUCell (B1)     `layers/sru.py`: `SRULayer` and its elementwise `sru_highway`
  train_enwik8 (B13)         `SRULM`: embedding (n_e) -> SRU stack -> Linear with bias;
                             embedding and output ~ U(±√(3/v)) (3 / weight.size(0))
  dropout                    embedding, the final hidden, and the recurrence mask on (c − s)
                             in every layer but the last
"""

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from lmjax.layers import core
from lmjax.layers import sru as sru_layer
from lmjax.models import base


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


class SRUCarry(NamedTuple):
    """c: one [b, n] float32 state per layer."""

    c: tuple


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
        drop = lambda y: core.Dropout(c.dropout_rate)(y, deterministic=not train)
        init = core.uniform(math.sqrt(3.0 / c.vocab_size))  # 3 / weight.size(0) in the reference
        x = drop(nn.Embed(c.vocab_size, c.input_dim, embedding_init=init, name="embed")(tokens))
        x = x.astype(jnp.dtype(c.dtype))
        states = []
        for i in range(c.num_layers):
            layer = sru_layer.SRULayer(
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
