"""TrainState, its creation (jitted with output shardings), abstract parameters and carries."""

import functools
from typing import Any

import jax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything an exact resume needs besides the carry and the data position (= step)."""

    step: jax.Array  # completed optimizer updates, int32 scalar
    params: Any
    opt_state: Any
    rng: jax.Array  # base key data (uint32); each step folds in `step`


def init_params(rng, *, model, init_inputs):
    """Parameters from `model.init` on the task's dummy inputs (they do not depend on the batch
    size, so tasks give one row)."""
    return model.init({"params": rng}, *init_inputs, train=False)["params"]


def create_train_state(rng, *, model, tx, init_inputs):
    """rng: raw uint32 key data."""
    params_rng, base_rng = jax.random.split(jax.random.wrap_key_data(rng))
    params = init_params(params_rng, model=model, init_inputs=init_inputs)
    return TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(base_rng),
    )


def sharded_train_state(config, model, tx, mesh, init_inputs, *, abstract=False):
    """The initial TrainState over `mesh` (replicated, or split as `train.param_sharding`
    says), or its ShapeDtypeStructs if `abstract`.

    Built by one jit with output shardings, so parameters are created where they live.
    """
    from lmjax import sharding  # local: state.py stays importable without a mesh

    init = functools.partial(create_train_state, model=model, tx=tx, init_inputs=init_inputs)
    rng = jax.random.key_data(jax.random.PRNGKey(config.seed))
    shapes = jax.eval_shape(init, rng)
    shardings = sharding.state_shardings(mesh, shapes, param_sharding(config))
    if abstract:
        return with_shardings(shapes, shardings)
    return jax.jit(init, out_shardings=shardings)(rng)


def param_sharding(config):
    return config.train.get("param_sharding", "replicated")


def abstract_params(model, init_inputs, mesh):
    """ShapeDtypeStructs of the parameters, replicated over `mesh` (a restore target)."""
    from lmjax import sharding

    init = functools.partial(init_params, model=model, init_inputs=init_inputs)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    return with_shardings(shapes, jax.tree.map(lambda _: sharding.replicated(mesh), shapes))


def with_shardings(shapes, shardings):
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def zero_carry(model, batch_size, mesh):
    """The model's initial carry for `batch_size` rows, split over `mesh` along the batch; None
    for a family without state."""
    from lmjax import sharding

    shapes = jax.eval_shape(lambda: model.init_carry(batch_size))
    if shapes is None:
        return None
    shardings = jax.tree.map(lambda _: sharding.batch_sharded(mesh), shapes)
    return jax.jit(lambda: model.init_carry(batch_size), out_shardings=shardings)()
