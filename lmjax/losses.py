"""Losses as (sum, count) pairs, divided on the host, so padding and sharding never bias a mean."""

import math

import jax.numpy as jnp
import optax


def weighted_xent(logits, targets, weights):
    """logits: [b, t, v]; targets: [b, t] int; weights: [b, t]. Returns (nats summed, count)."""
    xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(xent * weights), jnp.sum(weights)


def bpc(nats_per_token):
    """Bits per character (per byte) from nats per byte-level token."""
    return nats_per_token / math.log(2)
