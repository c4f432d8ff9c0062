"""Losses as (sum, count) pairs, divided on the host, so padding and sharding never bias a mean.

A model gives its per-token loss one of two ways (`lm_loss` picks):
  logits  `__call__(tokens, carry, *, train) -> (logits [b, t, v], carry, aux)`; cross-entropy
          against the targets here.
  nll     `nll(tokens, targets, carry, *, train) -> (nll [b, t] float32, carry, aux)`, for
          models whose loss is cheaper than their logits (an adaptive softmax never builds
          [b, t, v]). Such a model's `__call__` still returns full log-probabilities (logits up
          to a constant), which generation samples from.
"""

import math

import jax.numpy as jnp
import optax


def weighted_xent(logits, targets, weights):
    """logits: [b, t, v]; targets: [b, t] int; weights: [b, t]. Returns (nats summed, count)."""
    xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(xent * weights), jnp.sum(weights)


def weighted_nll(nll, weights):
    """nll: [b, t] per-token nats; weights: [b, t]. Returns (nats summed, count)."""
    return jnp.sum(nll.astype(jnp.float32) * weights), jnp.sum(weights)


def lm_loss(model, params, batch, carry, *, train, rngs=None):
    """Applies `model` to a window. Returns (nats summed, count, carry, aux)."""
    variables = {"params": params}
    if hasattr(model, "nll"):
        nll, carry, aux = model.apply(
            variables, batch["inputs"], batch["targets"], carry, train=train, rngs=rngs,
            method=model.nll,
        )  # fmt: skip
        loss_sum, count = weighted_nll(nll, batch["weights"])
    else:
        logits, carry, aux = model.apply(variables, batch["inputs"], carry, train=train, rngs=rngs)
        loss_sum, count = weighted_xent(logits, batch["targets"], batch["weights"])
    return loss_sum, count, carry, aux


def bpc(nats_per_token):
    """Bits per character (per byte) from nats per byte-level token."""
    return nats_per_token / math.log(2)


def ppl(nats_per_token):
    """Perplexity, exp(nats per token) (word level); inf past float64's range."""
    return math.exp(nats_per_token) if nats_per_token < 709 else math.inf


def scores(nats_per_token, word_level):
    """The metric a run reports beside its loss: {"ppl": ..} for words, {"bpc": ..} for bytes."""
    if word_level:
        return {"ppl": ppl(nats_per_token)}
    return {"bpc": bpc(nats_per_token)}
