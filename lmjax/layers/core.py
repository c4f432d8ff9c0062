"""Small layers every family can use.

`Dropout` is inverted dropout like `flax.linen.Dropout`, with masks drawn from 16-bit random
numbers: one 32-bit threefry word gives two masks. Random-bit generation is a large share of a
training step at CPU scale (about a fifth of SHA-RNN's `cpu` step with flax's Dropout, whose
Bernoulli draws one 32-bit word per element), and halving the words halves it. The rate is
quantised to 1/65536 (0.1 -> 0.100006); the kept values are scaled by the exact 1/(1 - p').
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


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
