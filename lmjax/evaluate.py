"""--mode=eval: the best (else latest) checkpoint's parameters on the task's evaluation splits.

What a split's evaluation means is the task's (tasks/lm.py: the whole stream with the carry,
bits per byte or perplexity); this file restores the parameters, runs each split and reports.
"""

import os

import jax

from lmjax import checkpoint, models, sharding, tasks, writers
from lmjax import state as state_lib
from lmjax.errors import UserError


def restore_for_inference(config, workdir, mesh, *, task=None, model=None):
    """(task, model, params, meta, path): the config's task and model (or the ones given), the
    parameters of `workdir`'s best (else latest) checkpoint, and the model adapted to them.
    Needs no optimizer: a config differing only in optim or train settings reads the same
    checkpoint. Used by eval, generate and notebooks."""
    task = tasks.get_task(config) if task is None else task
    model = models.get_model(config) if model is None else model
    target = state_lib.abstract_params(model, task.init_inputs(), mesh)
    params, meta, path = checkpoint.restore_params(workdir, target)
    return task, model.adapt_to(params), params, meta, path


def run_eval(config, workdir, *, devices=None, writer=None):
    """Evaluates every split in the task's `eval_splits`; prints `<split> <metric> <value>`.

    Returns {split: value of the task's headline metric}.
    """
    mesh = sharding.make_mesh(devices)
    sharding.check_batch("eval.batch_size", config.eval.batch_size, mesh)
    task, model = tasks.get_task(config), models.get_model(config)
    task.prepare(model, task.eval_splits)  # user errors before any restore
    if writer is None and jax.process_index() == 0:
        _check_writable(workdir)
    task, model, params, meta, path = restore_for_inference(
        config, workdir, mesh, task=task, model=model
    )
    writer = writer or writers.MetricWriter(workdir, tensorboard=False)
    results = {}
    for name in task.eval_splits:
        metrics = task.evaluate(model, params, name, mesh=mesh, progress=True)
        results[name] = metrics[task.metric]
        print(f"{name} {task.metric} {results[name]:.4f}{task.eval_note(metrics)}")
        writer.write(meta["step"], task.eval_label(name), **metrics, full=1)
    print(f"(checkpoint {path}, step {meta['step']})")
    return results


def _check_writable(workdir):
    """Eval appends its results to metrics.jsonl: fail before evaluating, not after."""
    path = os.path.join(os.path.abspath(workdir), "metrics.jsonl")
    target = path if os.path.exists(path) else os.path.dirname(path)
    if os.path.isdir(os.path.dirname(path)) and not os.access(target, os.W_OK):
        raise UserError(f"{target} is not writable: eval appends its results to metrics.jsonl")
