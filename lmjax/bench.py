"""Training-step benchmark: `python -m lmjax.bench --config=configs/sha_rnn.py:cpu [--steps=N]`.

Times the trainer's own training step (forward, backward, optimizer update: `bench.setup` builds
it as `train.train_and_evaluate` does, including the family's `adapt_to` on the initial
parameters) at the config's shape on a synthetic batch from the task, after warm-up, with the
carried state fed back as in training. Prints one JSON line: config, params, batch_shape,
devices, backend, the model's static facts (`describe()`, e.g. Adaptive-Span's trim_lens),
step_ms_median, tokens_per_sec (targets per second, as the trainer logs), peak_rss_mb (and peak
device memory where the backend reports it). Never run inside tests.
"""

import json
import resource
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:variant].", lock_config=True
)
flags.DEFINE_integer("steps", 20, "Timed steps after warm-up.")
flags.DEFINE_integer("warmup", 3, "Untimed steps (the first compiles).")


def setup(config, mesh):
    """The trainer's own set-up, minus the data: task, model adapted to the initial parameters
    (Adaptive-Span's trim from its initial spans, as `train_and_evaluate` computes it), state,
    carry and the jitted training step."""
    from lmjax import models, optim, tasks, train
    from lmjax import state as state_lib

    task = tasks.get_task(config)
    model = models.get_model(config)
    tx, _ = optim.make_optimizer(config.optim)
    state = state_lib.sharded_train_state(config, model, tx, mesh, task.init_inputs())
    model = model.adapt_to(state.params)
    carry = state_lib.zero_carry(model, config.train.batch_size, mesh)
    step_fn = train.make_train_step(
        task, model, tx, mesh, state, carry, config.train.grad_accum_steps
    )
    return task, model, state, carry, step_fn


def benchmark(config, steps=20, warmup=3):
    from lmjax import sharding

    mesh = sharding.make_mesh()
    sharding.check_batch(
        "train.batch_size", config.train.batch_size, mesh, config.train.grad_accum_steps
    )
    task, model, state, carry, step_fn = setup(config, mesh)
    host_batch = task.synthetic_batch(model)
    batch = sharding.shard_host_batch(mesh, host_batch)
    times, counts = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, carry, metrics = step_fn(state, carry, batch)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            counts.append(float(sharding.to_host(metrics["count"])))
    median = float(np.median(times))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    out = {
        "config": config.model_name,
        "params": params,
        "batch_shape": {k: list(v.shape) for k, v in host_batch.items()},
        "dtype": getattr(model.config, "dtype", "float32"),
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        **model.describe(),
        "step_ms_median": round(1000 * median, 2),
        "step_ms_min": round(1000 * min(times), 2),
        # Targets per second, as the trainer logs it (the task's count of a batch).
        "tokens_per_sec": round(float(np.median(counts)) / median, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return out


def main(argv):
    if FLAGS.config is None:
        sys.exit("error: --config is required")
    from lmjax import cli
    from lmjax.errors import UserError

    try:
        result = benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup)
    except UserError as e:  # a bad field found when the model is built: one line, exit 2
        cli.fail(str(e))
    arg = sys.argv[[a.startswith("--config=") for a in sys.argv].index(True)].split("=", 1)[1]
    result["config"] = arg
    print(json.dumps(result))


if __name__ == "__main__":
    from lmjax import cli

    app.run(main, flags_parser=cli.parse_flags)
