"""Head gates: Hard-Concrete gates with an L0 penalty, and fixed head masks.

Papers: Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0
Regularization" (arXiv 1712.01312: the Hard-Concrete distribution and its L0 relaxation);
Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy
Lifting, the Rest Can Be Pruned" (arXiv 1905.09418: one gate per attention head). The
definitions follow the reference code (lena-voita/the-story-of-heads, `lib/layers/
concrete_gate.py`) as specs/attention.md C.3-C.4 describe it.

A gate multiplies each head's context vector (after attention dropout, before the heads are
combined) by g_h ∈ [0, 1]:

  train   u ~ U(eps, 1 - eps), one sample per head per forward, shared by the whole batch
          (the `gates` RNG stream); s = σ((ln u - ln(1 - u) + log_a) / β);
          g = clip(s (r - l) + l, 0, 1)
  eval    g = clip(σ(log_a) (r - l) + l, 0, 1): deterministic, not binarised (it saturates to
          exactly 0 or 1 in practice, which is what makes pruning exact)
  L0      P(g_h ≠ 0) = clip(σ(log_a_h - β ln(-l / r)), eps, 1 - eps); a gated layer contributes
          Σ_h P(g_h ≠ 0), and a model's penalty is the mean of that over its gated layers (the
          reference's `ConcreteProblem`; the paper writes the plain sum, so the reference's λ is
          the paper's λ times the number of gated layers).

with β = 0.33, (l, r) = (-0.1, 1.1), eps = 1e-6. A fixed mask (C.4 `alive_heads`) is a constant
0/1 gate: a dead head is still computed, then zeroed.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BETA = 0.33  # temperature
STRETCH = (-0.1, 1.1)  # (l, r)
EPS = 1e-6
RNG_STREAM = "gates"


class GateStats(NamedTuple):
    """What one gated layer reports: `l0` Σ_h P(g_h ≠ 0) (0 for a fixed mask), `open` the
    number of heads whose eval gate is not 0, `values` the eval gates [h]."""

    l0: jax.Array
    open: jax.Array
    values: jax.Array


def sample(key, log_a, beta=BETA, stretch=STRETCH, eps=EPS):
    """A training gate for every entry of log_a (one draw each)."""
    low, high = stretch
    u = jax.random.uniform(key, log_a.shape, jnp.float32, eps, 1.0 - eps)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_a) / beta)
    return jnp.clip(s * (high - low) + low, 0.0, 1.0)


def eval_gate(log_a, stretch=STRETCH):
    """The deterministic gate of evaluation and inference."""
    low, high = stretch
    return jnp.clip(jax.nn.sigmoid(log_a) * (high - low) + low, 0.0, 1.0)


def prob_open(log_a, beta=BETA, stretch=STRETCH, eps=EPS):
    """P(g ≠ 0) under the training distribution: the L0 norm's expectation, per entry."""
    low, high = stretch
    return jnp.clip(jax.nn.sigmoid(log_a - beta * np.log(-low / high)), eps, 1.0 - eps)


def log_a_init(key, shape, dtype=jnp.float32):
    """U(±√(3/h)) for h heads: what TF's glorot-uniform gives the reference's (1, h, 1, 1)
    log_a (fan in = fan out = h), ≈ U(±0.61) at 8 heads."""
    limit = np.sqrt(3.0 / shape[-1])
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def l0_penalty(stats):
    """The model's L0 term from its gated layers' GateStats: the mean over layers of Σ_h P
    (0.0 when nothing is gated)."""
    stats = [s for s in stats if s is not None]
    if not stats:
        return jnp.zeros((), jnp.float32)
    return jnp.mean(jnp.stack([s.l0 for s in stats]))


class HeadGate(nn.Module):
    """Gates the heads of x along `head_axis`: Hard-Concrete (a `log_a` parameter per head)
    or, with `alive` given, the fixed 0/1 mask.

    Attributes:
      num_heads: h.
      alive: None (Hard-Concrete), or a length-h sequence of 0/1 (a fixed mask, no parameter).
      head_axis: the axis of x that indexes heads (x [b, t, h, d]: -2).
    """

    num_heads: int
    alive: tuple | None = None
    head_axis: int = -2

    @nn.compact
    def __call__(self, x, *, train):
        """Returns (x with every head scaled by its gate, GateStats)."""
        if self.alive is not None:
            values = jnp.asarray(self.alive, jnp.float32)
            if values.shape != (self.num_heads,):
                raise ValueError(
                    f"alive has {values.shape} entries, the layer {self.num_heads} heads"
                )
            gate = values
            stats = GateStats(jnp.zeros((), jnp.float32), jnp.sum(values != 0), values)
        else:
            log_a = self.param("log_a", log_a_init, (self.num_heads,))
            values = eval_gate(log_a)
            gate = sample(self.make_rng(RNG_STREAM), log_a) if train else values
            stats = GateStats(jnp.sum(prob_open(log_a)), jnp.sum(values != 0), values)
        shape = [1] * x.ndim
        shape[self.head_axis] = self.num_heads
        return x * gate.reshape(shape).astype(x.dtype), stats
