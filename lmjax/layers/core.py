"""Small layers and initializers every family can use.

`uniform(bound)` is the initializer U(±bound) (PyTorch's `uniform_(-bound, bound)`), and
`torch_linear_init(fan_in)` PyTorch's `nn.Linear` default for weight and bias, U(±1/√fan_in): the
one place the families' PyTorch-matching inits draw from, so equal keys give equal parameters.

`Dropout` is the one dropout of every family (SHA-RNN, SRU, SRU++, Transformer-XL, Adaptive-Span,
fast weights, the adaptive input and softmax, SRU's recurrence mask): inverted dropout like
`flax.linen.Dropout`, with the rate quantised to 1/65536 (0.1 -> 0.100006) and the kept values
scaled by the exact 1/(1 - p'). Masks differ from flax's for the same key.

Its random bits do not come from threefry element by element. At CPU scale that was the largest
non-matmul cost of a training step: threefry (20 rounds per pair of 32-bit words) took 5.8 ms
for one 2048 x 1024 mask on this 2-core CPU, ~13% of the fast-weight `cpu` step, which draws
four such masks and ten smaller ones; with flax's one-word-per-element Bernoulli it was about
a fifth of SHA-RNN's step. `random_bits16` draws a 64-bit seed with one threefry call and gives
each element the top 16 bits of a keyed counter hash of its flat index (`_hash32`: two rounds of
the "lowbias32" mixer, constants from Wellons' hash-prospector search as improved by
TheIronBorn, avalanche bias 0.108 in that search's measure, 0 ideal): 0.6 ms for the same mask,
fused into its consumer. A hash is not a cryptographic generator; dropout needs masks without
visible structure and independent across keys, which tests/layers/core_test.py checks (overall
and per-position rates, neighbour and cross-key correlations). The mask is a function of the
global index, so it is the same however the batch is sharded; the index wraps past 2^32
elements.
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


_GOLDEN = 0x9E3779B9  # 2^32 / φ: the Weyl step that spreads consecutive indices


def _hash32(x):
    """One round of the lowbias32 mixer on uint32 (xor-shift, multiply, xor-shift, multiply,
    xor-shift)."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x21F0AAAD)
    x = (x ^ (x >> 15)) * jnp.uint32(0x735A2D97)
    return x ^ (x >> 15)


def random_bits16(key, shape):
    """Uniform 16-bit values (uint32 in [0, 65536)) of `shape` from `key`: a 64-bit seed from one
    threefry call, then a keyed counter hash of each element's flat index i,
    h = mix(mix(i·φ + s₀) ⊕ s₁) >> 16 (the top half: the better-mixed bits). The index is built
    from per-axis iotas, which XLA fuses into the consumer (a flat iota reshaped was 1.8x
    slower)."""
    s0, s1 = jax.random.bits(key, (2,), jnp.uint32)
    i, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        i = i + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return _hash32(_hash32(i * jnp.uint32(_GOLDEN) + s0) ^ s1) >> 16


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
        mask = random_bits16(self.make_rng(self.rng_collection), x.shape) >= threshold
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
