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

The serialised one-step decoder (`jax.export`, without --prune) is not written yet.
"""

import json
import os
import shutil
import sys
import time

import jax
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
        cli.fail("only --prune is implemented (the jax.export of one-step decoding is not yet)")
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
    flags.DEFINE_string("out", None, "The new workdir to write (must not exist).")
    flags.DEFINE_bool("prune", False, "Remove what the model's gates closed (Story of Heads).")
    flags.DEFINE_string(
        "measure",
        None,
        "After --prune: translate this split with both models (same batches, "
        "same run), check the translations are equal, print sentences/s of each.",
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
