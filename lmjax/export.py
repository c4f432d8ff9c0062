"""`python -m lmjax.export --config=CONFIG --workdir=DIR --prune --out=OUT`: a physically smaller
model in a new workdir.

--prune asks the model family (`Family.pruned`) for the same function with fewer parameters:
for the Story of Heads, the heads whose eval gate (or fixed mask) is 0 leave the projection
matrices and an attention sublayer with no open head keeps only its output bias. OUT gets

  checkpoints/STEP   the pruned parameters (the orbax layout the trainer writes, params only)
  config_overrides.json  the model fields the pruned parameters need (`model.kept_heads`, ...)
  alive_heads.json  the open heads as {type: [layers][heads] 0/1} (`Family.head_masks`): the
                 fixed masks of a from-scratch run with the same heads
                 (`--config=configs/story_of_heads.py:multi30k_fixed,heads=OUT/alive_heads.json`)

and `--mode=eval` / `--mode=translate --workdir=OUT` with the original `--config` flag read
the overrides from OUT (lmjax/cli.py `apply_workdir_overrides`), so they run the pruned model.
Its translations are the gated model's: eval gates are the same numbers, applied the same way.
OUT is written under a temporary name and renamed when complete, so it is never half-written;
an OUT that exists already is refused.

`python -m lmjax.export --config=CONFIG --workdir=DIR --out=FILE` (without --prune) writes a
language model's one-step decoder, serialised with `jax.export`, and its parameters, as one .npz
file: `step(params, token [1, 1] int32, state) -> (logits [1, v] float32, state)` and
`init(total_len int32 []) -> state` (the O(1) decoding state of the recurrent and fast-weight
families: LSTM and SRU states, attention memories, fast weights; `total_len` matters only where
positions count down to the end, as the fast-weight models'), lowered for `--platforms`
(default cpu, cuda and tpu: one artifact runs on any of them). `--mode=generate
--exported=FILE` samples from it without the model code or a config (lmjax/generate.py
`sample_exported`); the vocabulary (bytes, or the word list) travels in the file's metadata.
A family that has no decoding state (it decodes by rerunning its window) has nothing to export.
"""

import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import checkpoint, cli, evaluate, models, sharding, tasks
from lmjax import state as state_lib
from lmjax.errors import UserError

FLAGS = flags.FLAGS
ALIVE_HEADS = "alive_heads.json"  # the open heads as 0/1 masks, for configs' heads=FILE


def _count(tree):
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def _set(config, key, value):
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    with node.ignore_type():
        node[leaf] = value


def export_pruned(config, workdir, out):
    """Writes the pruned model of `workdir` to the new workdir `out`. Returns a summary dict."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise UserError(f"--out={out} exists; give a new directory (nothing was written)")
    if not os.path.isdir(os.path.dirname(out)):
        raise UserError(f"--out={out}: no directory {os.path.dirname(out)}")
    mesh = sharding.make_mesh(jax.devices()[:1])
    task, model, params, meta, path = evaluate.restore_for_inference(config, workdir, mesh)
    result = model.pruned(jax.device_get(params))
    if result is None:
        raise UserError(
            f"{config.model_name} at {path} has nothing to prune (no gated or masked heads: "
            "model.concrete_heads / model.alive_heads)"
        )
    fields, small = result
    overrides = {f"model.{k}": v for k, v in fields.items()}
    pruned_config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        _set(pruned_config, key, value)
    pruned_model = models.get_model(pruned_config)
    target = state_lib.abstract_params(pruned_model, task.init_inputs(), mesh)
    want, got = jax.tree.map(np.shape, target), jax.tree.map(np.shape, small)
    if want != got:  # a family's pruned() that disagrees with its own model: a bug, not input
        raise AssertionError(f"pruned parameters {got} do not fit the pruned model {want}")
    tmp = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        ckpts = checkpoint.Checkpoints(tmp)
        step = int(meta["step"])
        state = {"params": small, "step": np.asarray(step, np.int32)}
        new_meta = {k: v for k, v in meta.items() if k in ("step", "best", "model_name", "task")}
        new_meta["config"] = pruned_config.to_dict()
        new_meta["pruned_from"] = path
        ckpts.save(step, state, None, new_meta)
        ckpts.wait()
        ckpts.close()
        with open(os.path.join(tmp, cli.WORKDIR_OVERRIDES), "w") as f:
            json.dump(overrides, f, indent=1)
        masks = model.head_masks(jax.device_get(params))
        if masks is not None:  # for a from-scratch run with the same heads (`*_fixed`)
            with open(os.path.join(tmp, ALIVE_HEADS), "w") as f:
                json.dump(masks, f)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"from": path, "out": out, "step": step}
    if masks is not None:
        summary["alive_heads"] = os.path.join(out, ALIVE_HEADS)
    summary["params_before"], summary["params_after"] = _count(params), _count(small)
    for kind, rows in fields.get("kept_heads", {}).items():
        summary[f"heads_{kind}"] = sum(len(r) for r in rows)
    return summary


DECODER_FORMAT = "lmjax-decoder-1"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


def export_decoder(config, workdir, out, platforms=("cpu", "cuda", "tpu")):
    """Writes the one-step decoder of `workdir`'s language model to the file `out` (.npz).
    Returns a summary dict."""
    from lmjax.data import corpora
    from lmjax.tasks import lm

    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise UserError(
            f"--platforms={','.join(platforms)}: unknown platform {unknown[0] if unknown else ''!r}"
            f"; known: {', '.join(PLATFORMS)}"
        )
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise UserError(f"--out={out} exists; give a new file name (nothing was written)")
    if not os.path.isdir(os.path.dirname(out)):
        raise UserError(f"--out={out}: no directory {os.path.dirname(out)}")
    task = tasks.get_task(config)
    if not isinstance(task, lm.LMTask):
        raise UserError(
            f"task {type(task).__name__} has no one-step decoder to export; for a translation "
            "model, --prune writes a smaller workdir"
        )
    mesh = sharding.make_mesh(jax.devices()[:1])
    task, model, params, meta, path = evaluate.restore_for_inference(
        config, workdir, mesh, task=task
    )
    if model.decode_carry(1, 2) is None:
        raise UserError(
            f"{config.model_name} ({path}) has no decoding state: it decodes by rerunning its "
            "window, so there is no one-step decoder to export"
        )
    params = jax.device_get(params)
    leaves, params_def = jax.tree.flatten(params)
    carry_def = jax.tree.structure(model.decode_carry(1, 2))

    def init(total_len):
        return jax.tree.leaves(model.decode_carry(1, total_len))

    def step(param_leaves, token, carry_leaves):
        p = jax.tree.unflatten(params_def, param_leaves)
        carry = jax.tree.unflatten(carry_def, carry_leaves)
        logits, carry, _ = model.apply({"params": p}, token, carry, train=False)
        return logits[:, -1].astype(jnp.float32), jax.tree.leaves(carry)

    spec = lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    carry_specs = [spec(x) for x in jax.eval_shape(init, jnp.int32(2))]
    try:
        exp_init = jax.export.export(jax.jit(init), platforms=platforms)(
            jax.ShapeDtypeStruct((), jnp.int32)
        )
        exp_step = jax.export.export(jax.jit(step), platforms=platforms)(
            [spec(x) for x in leaves], jax.ShapeDtypeStruct((1, 1), jnp.int32), carry_specs
        )
    except (ValueError, NotImplementedError) as e:  # a platform the lowering does not support
        raise UserError(f"--platforms={','.join(platforms)}: {str(e).splitlines()[0]}") from None
    level = corpora.level(config.data)
    info = {
        "format": DECODER_FORMAT,
        "model_name": config.model_name,
        "from": path,
        "step": int(meta["step"]),
        "vocab_size": int(model.config.vocab_size),
        "level": level,
        "vocab": list(corpora.load_vocab(config.data)) if level == "word" else None,
        "platforms": list(platforms),
        "state": [[list(x.shape), str(x.dtype)] for x in carry_specs],
        "parameters": _count(params),
    }
    arrays = {f"param_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["init"] = np.frombuffer(exp_init.serialize(), np.uint8)
    arrays["step"] = np.frombuffer(exp_step.serialize(), np.uint8)
    arrays["meta"] = np.asarray(json.dumps(info))
    tmp = f"{out}.partial-{os.getpid()}.npz"  # np.savez adds .npz to a name without it
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dict(info, out=out, bytes=os.path.getsize(out), vocab=None)


def measure(config, workdir, out, split):
    """Translates `split`'s sources with the original and the pruned model: (equal, {name:
    (sentences/s, parameters)}). Each model translates twice, the first time compiling."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    results, outputs = {}, {}
    for name, cfg, where in (
        ("full", config, workdir),
        ("pruned", cli.apply_workdir_overrides(config, out), out),
    ):
        task, model, params, _, _ = evaluate.restore_for_inference(cfg, where, mesh)
        task.prepare(model, [split])
        lines = task.source_lines(split)
        task.translate_lines(model, params, lines)  # compiles every bucket shape
        t0 = time.perf_counter()
        outputs[name] = task.translate_lines(model, params, lines)
        results[name] = (len(lines) / (time.perf_counter() - t0), _count(params))
    return outputs["full"] == outputs["pruned"], results


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    for name in ("config", "workdir", "out"):
        if FLAGS[name].value is None:
            cli.fail(f"--{name} is required")
    if not FLAGS.prune:
        platforms = tuple(p.strip() for p in FLAGS.platforms.split(",") if p.strip())
        try:
            config = cli.apply_workdir_overrides(FLAGS.config, FLAGS.workdir)
            tasks.get_task(config)
            s = export_decoder(config, FLAGS.workdir, FLAGS.out, platforms)
        except UserError as e:
            cli.fail(str(e))
        print(
            f"exported {s['model_name']} from {s['from']} (step {s['step']}) for "
            f"{', '.join(s['platforms'])}: {s['parameters']:,} parameters, state "
            f"{' '.join('x'.join(map(str, shape)) + ' ' + dtype for shape, dtype in s['state'])}; "
            f"wrote {s['out']} ({s['bytes'] / 2**20:.1f} MiB)"
        )
        return
    try:
        config = cli.apply_workdir_overrides(FLAGS.config, FLAGS.workdir)
        tasks.get_task(config)  # the config's own errors first
        s = export_pruned(config, FLAGS.workdir, FLAGS.out)
    except UserError as e:
        cli.fail(str(e))
    heads = ", ".join(
        f"{k[6:]} {v}/{FLAGS.config.model.num_layers * FLAGS.config.model.num_heads}"
        for k, v in s.items()
        if k.startswith("heads_")
    )
    print(
        f"pruned {s['from']} (step {s['step']}): heads kept {heads}; parameters "
        f"{s['params_before']:,} -> {s['params_after']:,} "
        f"({100 * s['params_after'] / s['params_before']:.1f}%); wrote {s['out']}"
    )
    if "alive_heads" in s:
        print(
            f"the open heads as fixed masks (a from-scratch run's heads=FILE): {s['alive_heads']}"
        )
    sys.stdout.flush()
    if FLAGS.measure:
        equal, r = measure(config, FLAGS.workdir, s["out"], FLAGS.measure)
        for name, (speed, n) in r.items():
            print(f"{name}: {n:,} parameters, {speed:.1f} sentences/s ({FLAGS.measure}, beam "
                  f"{config.eval.beam_size}, eval.batch_len {config.eval.batch_len})")  # fmt: skip
        print(f"speed-up {r['pruned'][0] / r['full'][0]:.2f}x; translations identical: {equal}")
        if not equal:
            sys.exit(1)


def _define_flags():
    """Flags are defined when run as a program only: tests import this module beside bench.py
    and main.py, which define their own --config."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file[:variant].", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "The trained workdir to export from.")
    flags.DEFINE_string("out", None, "The new workdir (--prune) or decoder file (.npz) to write.")
    flags.DEFINE_bool("prune", False, "Remove what the model's gates closed (Story of Heads).")
    flags.DEFINE_string(
        "platforms", "cpu,cuda,tpu", "Without --prune: the platforms the decoder is lowered for."
    )
    flags.DEFINE_string(
        "measure",
        None,
        "After --prune: translate this split with both models (same batches, "
        "same run), check the translations are equal, print sentences/s of each.",
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
