"""Training-step benchmark: `python -m lmjax.bench --config=configs/sha_rnn.py:cpu [--steps=N]`
[--seq_lens=256,1024,4096] (cost against length: one run per train.seq_len, then a table).

Times the trainer's own training step (forward, backward, optimizer update: `bench.setup` builds
it as `train.train_and_evaluate` does, including the family's `adapt_to` on the initial
parameters) at the config's shape on a synthetic batch from the task, after warm-up, with the
carried state fed back as in training. Prints one JSON line: config, params, batch_shape,
devices, backend, the model's static facts (`describe()`, e.g. Adaptive-Span's trim_lens),
step_ms_median, tokens_per_sec (targets per second, as the trainer logs), peak_rss_mb (and peak
device memory where the backend reports it), xla_temp_mb / xla_args_mb (the compiled step's
temporaries and arguments from XLA's memory analysis: what grows with the sequence length,
without the runtime's fixed few hundred MB), flops_per_token (matmul FLOPs from the step's jaxpr,
every scan body times its length: `lmjax/flops.py` says why not XLA's cost analysis, which is
printed beside it for contrast), achieved_gflops and peak_fraction (against this machine's f32
matmul peak: `python -m lmjax.bench --peak` measures and caches it). Never run inside tests.

`--mode=eval` times a full evaluation of the valid split (tokens/s), `--mode=generate` sampling
one sequence at each of `--gen_lengths` (ms a token: flat for a family with a decoding state).
"""

if __name__ == "__main__":  # as a program: restart with huge pages first (lmjax/machine.py)
    from lmjax import machine

    machine.exec_with_huge_pages()

import functools
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
flags.DEFINE_bool(
    "peak",
    False,
    "Measure this machine's float32 matmul peak (GFLOP/s, the best of a few 2048^3 matmuls on "
    "the default device), cache it (~/.cache/lmjax/matmul_peak.json) and print it; every "
    "benchmark's peak_fraction divides by it (measured once on first use if never cached).",
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "generate"],
    "train: the training step; eval: a full evaluation of the valid split (eval.protocol, by "
    "default the state carried), tokens/s; generate: sampling throughput at each of "
    "--gen_batches (sequences decoded together) x --gen_lengths, which shows a decoding "
    "state's O(1) cost a token.",
)
flags.DEFINE_list("gen_lengths", ["64", "512"], "generate: continuation lengths to time.")
flags.DEFINE_list("gen_batches", ["1", "8"], "generate: sequences decoded together, to time.")
flags.DEFINE_list(
    "seq_lens",
    [],
    "Cost against length: run the benchmark once per train.seq_len in this list, each in its "
    "own process (so peak RSS is that length's), and print a table after the JSON lines.",
)


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
        task, model, tx, mesh, state, carry, config.train.grad_accum_steps,
        state_lib.param_sharding(config),
    )  # fmt: skip
    return task, model, state, carry, step_fn


def benchmark(config, steps=20, warmup=3):
    from lmjax import flops as flops_lib
    from lmjax import sharding
    from lmjax import state as state_lib

    mesh = sharding.make_mesh()
    sharding.check_batch(
        "train.batch_size", config.train.batch_size, mesh, config.train.grad_accum_steps
    )
    task, model, state, carry, step_fn = setup(config, mesh)
    host_batch = task.synthetic_batch(model)
    batch = sharding.shard_host_batch(mesh, host_batch)
    step_flops, loops = flops_lib.step_flops(step_fn, state, carry, batch)
    step_fn = step_fn.lower(state, carry, batch).compile()  # once: its buffer sizes are reported
    memory = step_fn.memory_analysis()
    xla_cost = step_fn.cost_analysis() or {}
    times, counts, faults = [], [], 0
    for i in range(warmup + steps):
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        state, carry, metrics = step_fn(state, carry, batch)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            counts.append(float(sharding.to_host(metrics["count"])))
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    median = float(np.median(times))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    def per_device_mb(tree):  # the bytes of `tree` that device 0 holds
        return sum(
            s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
            if s.device == jax.devices()[0]
        ) / 2**20  # fmt: skip

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
        # minor page faults a timed step: memory the step mapped afresh (machine.py)
        "page_faults_per_step": round(faults / steps),
        "param_sharding": state_lib.param_sharding(config),
        # parameters + optimizer state held by one device (train.param_sharding)
        "state_mb_per_device": round(per_device_mb((state.params, state.opt_state)), 2),
    }
    tokens = float(np.median(counts))
    peak, machine = flops_lib.peak_gflops()
    achieved = step_flops / median / 1e9
    out.update(
        # matmul FLOPs from the step's jaxpr, scan bodies times their lengths (lmjax/flops.py)
        flops_per_token=round(step_flops / tokens, 1),
        achieved_gflops=round(achieved, 2),
        peak_gflops=peak,  # this machine's f32 matmul peak (`--peak` re-measures it)
        peak_fraction=round(achieved / peak, 4),
        peak_machine=machine,
    )
    if loops:
        out["flops_while_loops_counted_once"] = len(loops)
    if "flops" in xla_cost:  # for contrast: XLA counts each loop body once (lmjax/flops.py)
        out["xla_cost_analysis_flops_per_token"] = round(xla_cost["flops"] / tokens, 1)
    if memory is not None:  # XLA's buffer assignment for the step: its working memory beyond
        # the arguments (activations kept for the backward, temporaries), backend-independent
        out["xla_temp_mb"] = round(memory.temp_size_in_bytes / 2**20, 1)
        out["xla_args_mb"] = round(memory.argument_size_in_bytes / 2**20, 1)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return out


def _lm_setup(config, mesh):
    """(task, adapted model, state) of `setup` for a language-model config."""
    from lmjax.errors import UserError
    from lmjax.tasks import lm

    task, model, state, _, _ = setup(config, mesh)
    if not isinstance(task, lm.LMTask):
        raise UserError(
            f"bench --mode=eval/generate is for language models, not {type(task).__name__}"
        )
    return task, model, state


def benchmark_eval(config, split="valid"):
    """Evaluation throughput: the task's full-split evaluation (`--mode=eval`: eval.protocol,
    by default the state carried across the split) from the initial parameters, timed on a
    second pass (the first compiles). Tokens are the split's scored targets."""
    from lmjax import sharding

    mesh = sharding.make_mesh()
    sharding.check_batch("eval.batch_size", config.eval.batch_size, mesh)
    task, model, state = _lm_setup(config, mesh)
    task.prepare(model, [split])
    task.evaluate(model, state.params, split, mesh=mesh)  # compiles, reads the split
    t0 = time.perf_counter()
    metrics = task.evaluate(model, state.params, split, mesh=mesh)
    seconds = time.perf_counter() - t0
    return {
        "config": config.model_name,
        "mode": "eval",
        "split": split,
        "protocol": task.protocol,
        "eval_batch_size": config.eval.batch_size,
        "eval_seq_len": config.eval.seq_len,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "targets": int(metrics["targets"]),
        "seconds": round(seconds, 2),
        "tokens_per_sec": round(metrics["targets"] / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def benchmark_generate(config, lengths=(64, 512), batches=(1, 8), prompt_len=16, repeats=3):
    """Sampling throughput of `generate.sample` (what --mode=generate runs: the prompt in one
    call, then one step a token with the carried state) at each batch size (sequences decoded
    together, `--num_samples`) and continuation length, from the initial parameters: compiled
    once per shape, then the median of `repeats` timed calls. A family with a decoding state
    (LSTM, SRU, fast weights, a Transformer's K/V memory) costs O(1) a token, so its per-step
    time stays flat as the length grows; one without (the softmax baseline) reruns its window,
    O(length) a token. `ms_per_token` is a step's time (one token for every sequence);
    `tokens_per_sec` counts all sequences' tokens."""
    from lmjax import generate, sharding

    mesh = sharding.make_mesh(jax.devices()[:1])  # decoding runs on one device
    _, model, state = _lm_setup(config, mesh)
    # any token ids do for timing: 0, 1, ... folded into the vocabulary
    prompt = np.arange(prompt_len, dtype=np.int32)[None] % model.config.vocab_size
    rows = []
    for batch in batches:
        for length in lengths:
            run = functools.partial(
                generate.sample, state.params, np.repeat(prompt, batch, axis=0),
                jax.random.key(0), model=model, length=length,
            )  # fmt: skip
            jax.block_until_ready(run())  # compiles
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(run())
                times.append(time.perf_counter() - t0)
            median = float(np.median(times))
            rows.append(
                dict(batch=batch, length=length, ms_per_token=round(1000 * median / length, 3),
                     tokens_per_sec=round(batch * length / median, 1),
                     tokens_per_sec_per_sequence=round(length / median, 1))
            )  # fmt: skip
    return {
        "config": config.model_name,
        "mode": "generate",
        "decoding_state": model.decode_carry(1, prompt.shape[1] + max(lengths)) is not None,
        "prompt_len": int(prompt.shape[1]),
        "backend": jax.default_backend(),
        "lengths": rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def sweep_lengths(argv, seq_lens):
    """One subprocess per length (this command without --seq_lens, with train.seq_len set);
    returns their results."""
    import subprocess

    base = [a for a in argv[1:] if not a.startswith("--seq_lens")]
    results = []
    for length in seq_lens:
        cmd = [sys.executable, "-m", "lmjax.bench", *base, f"--config.train.seq_len={length}"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            tail = [line for line in run.stderr.splitlines() if line.strip()][-1:]
            from lmjax import cli

            cli.fail(f"seq_len {length}: {tail[0] if tail else 'failed'}", code=run.returncode)
        line = run.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))
    return results


def length_table(results):
    head = "| seq_len | batch | step ms | tokens/s | XLA temp MB | peak RSS MB |"
    rows = [head, "|---:" * 6 + "|"]
    for r in results:
        b, t = r["batch_shape"]["inputs"]
        rows.append(
            f"| {t} | {b} | {r['step_ms_median']:.0f} | {r['tokens_per_sec']:.0f} "
            f"| {r.get('xla_temp_mb', float('nan')):.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(rows)


def main(argv):
    from lmjax import cli

    if FLAGS.peak:
        from lmjax import flops as flops_lib

        peak, machine = flops_lib.peak_gflops(measure=True)
        print(json.dumps({"peak_gflops": peak, "machine": machine}))
        if FLAGS.config is None:
            return
    if FLAGS.config is None:
        cli.fail("--config is required (or --peak alone)")
    from lmjax.errors import UserError

    if FLAGS.seq_lens:
        try:
            lengths = [int(x) for x in FLAGS.seq_lens]
        except ValueError:
            cli.fail(f"--seq_lens={','.join(FLAGS.seq_lens)}: a comma-separated list of integers")
        print(length_table(sweep_lengths(sys.argv, lengths)))
        return

    try:
        if FLAGS.mode == "generate":
            sizes = {}
            for name in ("gen_lengths", "gen_batches"):
                given = ",".join(getattr(FLAGS, name))
                try:
                    sizes[name] = [int(x) for x in getattr(FLAGS, name)]
                except ValueError:
                    cli.fail(f"--{name}={given}: integers, comma-separated")
                if not sizes[name] or min(sizes[name]) < 1:
                    cli.fail(f"--{name}={given}: sizes of at least 1")
            result = benchmark_generate(FLAGS.config, sizes["gen_lengths"], sizes["gen_batches"])
        elif FLAGS.mode == "eval":
            result = benchmark_eval(FLAGS.config)
        else:
            result = benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup)
    except UserError as e:  # a bad field found when the model is built: one line, exit 2
        cli.fail(str(e))
    arg = sys.argv[[a.startswith("--config=") for a in sys.argv].index(True)].split("=", 1)[1]
    result["config"] = arg
    print(json.dumps(result))


if __name__ == "__main__":
    from lmjax import cli

    app.run(main, flags_parser=cli.parse_flags)
