"""Training-step benchmark: `python -m lmjax.bench --config=configs/sha_rnn.py:cpu [--steps=N]`.

Times full training steps (forward, backward, optimizer update) at the config's shape on
synthetic tokens, after warm-up, with the carried state fed back as in training. Prints one JSON
line: config, params, batch_size, seq_len, devices, backend, step_ms_median, tokens_per_sec,
peak_rss_mb (and peak device memory where the backend reports it). Never run inside tests.
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


def benchmark(config, steps=20, warmup=3):
    from lmjax import models, optim, sharding, train
    from lmjax import state as state_lib

    mesh = sharding.make_mesh()
    b, t = config.train.batch_size, config.train.seq_len
    sharding.check_batch("train.batch_size", b, mesh, config.train.grad_accum_steps)
    model = models.get_model(config)
    tx, _ = optim.make_optimizer(config.optim)
    state = state_lib.sharded_train_state(config, model, tx, mesh)
    carry = state_lib.zero_carry(model, b, mesh)
    step_fn = train.make_train_step(model, tx, mesh, state, carry, config.train.grad_accum_steps)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.config.vocab_size, (b, t + 1), dtype=np.int32)
    batch = sharding.shard_host_batch(
        mesh,
        {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "weights": np.ones((b, t), np.float32),
        },
    )
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, carry, metrics = step_fn(state, carry, batch)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    out = {
        "config": config.model_name,
        "params": params,
        "batch_size": b,
        "seq_len": t,
        "dtype": model.config.dtype,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "step_ms_median": round(1000 * median, 2),
        "step_ms_min": round(1000 * min(times), 2),
        "tokens_per_sec": round(b * t / median, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return out


def main(argv):
    if FLAGS.config is None:
        sys.exit("error: --config is required")
    result = benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup)
    arg = sys.argv[[a.startswith("--config=") for a in sys.argv].index(True)].split("=", 1)[1]
    result["config"] = arg
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
