"""TrainState and its creation (jitted with output shardings in train.py)."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything an exact resume needs besides the carry and the data position (= step)."""

    step: jax.Array  # completed optimizer updates, int32 scalar
    params: Any
    opt_state: Any
    rng: jax.Array  # base key data (uint32); each step folds in `step`


def create_train_state(rng, *, model, tx, seq_len):
    """rng: raw uint32 key. Parameters do not depend on the batch size, so init with one row."""
    params_rng, base_rng = jax.random.split(jax.random.wrap_key_data(rng))
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init({"params": params_rng}, tokens, None, train=False)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(base_rng),
    )


def sharded_train_state(config, model, tx, mesh, *, abstract=False):
    """The initial TrainState replicated over `mesh`, or its ShapeDtypeStructs if `abstract`.

    Built by one jit with output shardings, so parameters are created where they live.
    """
    from lmjax import sharding  # local: state.py stays importable without a mesh

    init = functools.partial(create_train_state, model=model, tx=tx, seq_len=config.train.seq_len)
    rng = jax.random.key_data(jax.random.PRNGKey(config.seed))
    shapes = jax.eval_shape(init, rng)
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
    if abstract:
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )
    return jax.jit(init, out_shardings=shardings)(rng)


def zero_carry(model, batch_size, mesh):
    """The model's initial carry for `batch_size` rows, split over `mesh` along the batch."""
    from lmjax import sharding

    shapes = jax.eval_shape(lambda: model.init_carry(batch_size))
    shardings = jax.tree.map(lambda _: sharding.batch_sharded(mesh), shapes)
    return jax.jit(lambda: model.init_carry(batch_size), out_shardings=shardings)()
