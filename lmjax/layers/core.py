"""Small layers and initializers every family can use.

`uniform(bound)` is the initializer U(±bound) (PyTorch's `uniform_(-bound, bound)`), and
`torch_linear_init(fan_in)` PyTorch's `nn.Linear` default for weight and bias, U(±1/√fan_in): the
one place the families' PyTorch-matching inits draw from, so equal keys give equal parameters.

`Dropout` is the one dropout of every family (SHA-RNN, SRU, SRU++, Transformer-XL, Adaptive-Span,
the adaptive input and softmax, SRU's recurrence mask): inverted dropout like
`flax.linen.Dropout`, with masks drawn from 16-bit random numbers, so one 32-bit threefry word
gives two masks. Random-bit generation is a large share of a training step at CPU scale (about
a fifth of SHA-RNN's `cpu` step with flax's Dropout, whose Bernoulli draws one 32-bit word per
element), and halving the words halves it. The rate is quantised to 1/65536 (0.1 -> 0.100006);
the kept values are scaled by the exact 1/(1 - p'). Masks differ from flax's for the same key.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def uniform(bound):
    """The initializer U(-bound, bound): `init(key, shape, dtype=float32)`."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear_init(fan_in):
    """PyTorch's nn.Linear default for weight and bias alike: U(±1/√fan_in)."""
    return uniform(1.0 / math.sqrt(fan_in))


class Dropout(nn.Module):
    """Inverted dropout with 16-bit masks.

    Attributes:
      rate: probability of dropping an element.
      rng_collection: the RNG stream the masks come from.
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x, *, deterministic):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        threshold = round(self.rate * 65536)  # drop where the 16-bit draw is below it
        keep = 1.0 - threshold / 65536
        n = x.size + (x.size % 2)
        bits = jax.random.bits(self.make_rng(self.rng_collection), (n // 2,), jnp.uint32)
        halves = jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(-1)[: x.size]
        mask = (halves >= threshold).reshape(x.shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
