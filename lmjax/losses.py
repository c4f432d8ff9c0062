"""Losses as (sum, count) pairs, divided on the host, so padding and sharding never bias a mean.

`token_nll` is the one place cross-entropy is computed from logits (the families' default
`nll`, see models/base.py); a family with an adaptive softmax computes its own NLL from its
clusters. Tasks weight the per-token NLL with `weighted_sum`.
"""

import math

import jax.numpy as jnp
import optax


def token_nll(logits, targets):
    """logits: [..., v]; targets: [...] int. Returns the per-token NLL [...] in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def weighted_sum(nll, weights):
    """nll: [b, t] per-token nats; weights: [b, t]. Returns (nats summed, count)."""
    return jnp.sum(nll.astype(jnp.float32) * weights), jnp.sum(weights)


def bpc(nats_per_token):
    """Bits per character (per byte) from nats per byte-level token."""
    return nats_per_token / math.log(2)


def ppl(nats_per_token):
    """Perplexity, exp(nats per token) (word level); inf past float64's range."""
    return math.exp(nats_per_token) if nats_per_token < 709 else math.inf
