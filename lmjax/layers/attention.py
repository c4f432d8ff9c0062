"""Attention helpers shared by every family.

Shape legend: b batch, t query time, s key time (memory + current segment), m memory length.
"""

import jax.numpy as jnp


def memory_causal_mask(t, mem_len, mem_count):
    """Which keys each query may see when keys are [memory (m) | current segment (t)].

    Memory slots are filled from the right: with `mem_count[b]` valid entries, slots
    [m - mem_count, m) hold the most recent states and the rest are empty. A query sees every
    valid memory slot and, within the segment, itself and earlier positions.

    Args:
      t: query length.
      mem_len: memory slots m.
      mem_count: [b] int, valid memory entries per row (0 at the start of a stream).
    Returns:
      [b, t, m + t] bool, True where attention is allowed.
    """
    b = mem_count.shape[0]
    mem_ok = jnp.arange(mem_len)[None, :] >= (mem_len - mem_count)[:, None]  # [b, m]
    mem_ok = jnp.broadcast_to(mem_ok[:, None, :], (b, t, mem_len))
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool))[None], (b, t, t))
    return jnp.concatenate([mem_ok, causal], axis=-1)


def append_memory(memory, mem_count, new):
    """Appends `new` [b, t, d] to the right of `memory` [b, m, d], keeping the last m slots."""
    m, t = memory.shape[1], new.shape[1]
    joined = jnp.concatenate([memory, new.astype(memory.dtype)], axis=1)[:, -m:]
    return joined, jnp.minimum(mem_count + t, m)
