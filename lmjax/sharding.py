"""Data parallelism: one mesh axis `data` over every device of every host.

Batches and carried recurrent state are split along their leading batch axis (P("data")), so a
row's state lives on the device that holds the row. Parameters and optimizer state are
replicated (P(), `train.param_sharding='replicated'`), or with 'fsdp' split along the `data`
axis too: each array on its largest dimension that the device count divides (arrays with none,
and arrays under FSDP_MIN_SIZE elements, stay replicated), so a device holds about 1/n of them
and XLA gathers each where it is used (ZeRO-3 / FSDP, as MaxText's `fsdp` axis; one axis for
data and parameters here).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lmjax.errors import UserError


def make_mesh(devices=None):
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_sharded(mesh):
    return NamedSharding(mesh, P("data"))


PARAM_SHARDINGS = ("replicated", "fsdp")
FSDP_MIN_SIZE = 4096  # elements; smaller arrays are replicated under fsdp


def state_sharding(mesh, shape, mode):
    """The sharding of one parameter or optimizer-state array of `shape` under `mode`."""
    n = mesh.devices.size
    # Small arrays (biases, norms, gates, spans) stay whole: splitting them saves nothing, and
    # host code may read them from one device (Adaptive-Span's trims, a replicated scalar).
    if mode == "replicated" or n == 1 or int(np.prod(shape)) < FSDP_MIN_SIZE:
        return replicated(mesh)
    dims = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if not dims:
        return replicated(mesh)
    axis = max(dims, key=lambda i: (shape[i], -i))  # the largest; the first of equals
    spec = [None] * len(shape)
    spec[axis] = "data"
    return NamedSharding(mesh, P(*spec))


def state_shardings(mesh, tree, mode):
    """`state_sharding` for every array of a pytree of arrays or ShapeDtypeStructs."""
    return jax.tree.map(lambda x: state_sharding(mesh, tuple(x.shape), mode), tree)


def check_batch(field, batch_size, mesh, multiple=1):
    """Raises a UserError unless `batch_size` splits evenly over devices (and `multiple`)."""
    n = mesh.devices.size * multiple
    if batch_size <= 0 or batch_size % n:
        extra = f" x {multiple} micro-batches" if multiple > 1 else ""
        raise UserError(
            f"{field}={batch_size} must be a positive multiple of {n} "
            f"({mesh.devices.size} devices{extra})"
        )


def shard_host_batch(mesh, local):
    """Places this process's rows (a pytree of numpy [b_local, ...]) as global arrays."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def to_host(tree):
    """Replicated arrays (metrics, the step) as numpy. Under several processes an array is not
    fully addressable, but every process holds a complete replica in its first local shard."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def any_process(flag):
    """True on every process if `flag` is true on any (e.g. one host received SIGTERM)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))
