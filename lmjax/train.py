"""The one trainer: `train_and_evaluate(config, workdir)` for every model family.

The trainer owns the mesh, the TrainState, the jitted step, the loop, checkpoints and logging.
What is learned is the Task's (tasks/: data, batches, loss, evaluation, decoding) and the
family's (models/base.py: the forward pass, its carry and hooks); this file names no field of
either. `train_step` is a module-level pure function, jitted once with shardings and buffer
donation over a mesh of all devices: parameters and optimizer state replicated, the batch and
the carried state split along the batch axis, the carry fed from one step to the next
(truncated backpropagation through time) and reset where the task says a new pass begins.
Metrics leave the device as sums and counts and are divided on the host; every aux scalar of
the family is logged.
"""

import functools
import json
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from lmjax import checkpoint, models, optim, sharding, tasks, writers
from lmjax import state as state_lib
from lmjax.errors import UserError


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message names the step window."""


def _split_micro(x, k):
    # Micro-batch j takes rows j, j+k, j+2k, ...: with rows split over devices in contiguous
    # blocks, every micro-batch still spans all devices.
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def _join_micro(x):
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def _rngs(model, rng):
    """The step's RNG streams: the family's first stream gets `rng` itself (so a family with
    only dropout draws exactly what it always has), the others keys folded from it."""
    return {
        name: rng if i == 0 else jax.random.fold_in(rng, _STREAM_SALT + i)
        for i, name in enumerate(model.rng_streams)
    }


_STREAM_SALT = 0x5EED0000  # far from the micro-batch indices folded into the same key


def _micro_rng(rng, i, num_micro):
    """The key of micro-batch i: the step's key itself without accumulation."""
    return rng if num_micro == 1 else jax.random.fold_in(rng, i)


def train_step(state, carry, batch, *, task, model, tx, grad_accum_steps=1):
    """One optimizer update on one batch. Returns (state, carry, metric sums).

    With grad_accum_steps = k the rows are split into k micro-batches (each with its own rows'
    carry) whose gradients are summed: the same update as the full batch without dropout.
    Metrics: the task's loss sum and target count, gradient and parameter norms, and the
    family's aux scalars (averaged over micro-batches) under "aux".
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    carry = jax.lax.stop_gradient(carry)
    total = jnp.maximum(task.count(batch), 1.0)

    def loss_fn(params, carry, mb, rng):
        loss_sum, count, carry, aux = task.loss(
            model, params, mb, carry, train=True, rngs=_rngs(model, rng)
        )
        extra = 0.0
        if model.aux_losses:  # e.g. Adaptive-Span's span penalty
            extra = sum(aux[k] for k in model.aux_losses) / grad_accum_steps
        return loss_sum / total + extra, (carry, loss_sum, count, aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (_, (carry, loss_sum, count, aux)), grads = grad_fn(state.params, carry, batch, rng)
    else:
        k = grad_accum_steps
        micro = jax.tree.map(lambda x: _split_micro(x, k), (batch, carry))

        def body(acc, xs):
            mb, c, i = xs
            (_, (c, ls, n, aux)), g = grad_fn(state.params, c, mb, _micro_rng(rng, i, k))
            return jax.tree.map(jnp.add, acc, (g, ls, n)), (c, aux)

        zeros = (jax.tree.map(jnp.zeros_like, state.params), 0.0, 0.0)
        (grads, loss_sum, count), (carry, aux) = jax.lax.scan(body, zeros, (*micro, jnp.arange(k)))
        carry = jax.tree.map(_join_micro, carry)
        aux = jax.tree.map(lambda x: jnp.mean(x, axis=0), aux)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # The hook sees the streams of the last forward (e.g. the Performer's drawn matrices).
    last_rng = _micro_rng(rng, grad_accum_steps - 1, grad_accum_steps)
    params = model.post_update(optax.apply_updates(state.params, updates), _rngs(model, last_rng))
    metrics = {
        "loss_sum": loss_sum,
        "count": count,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "aux": aux,
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, carry, metrics


def make_train_step(task, model, tx, mesh, state, carry, grad_accum_steps, param_sharding):
    repl = sharding.replicated(mesh)
    state_sh = sharding.state_shardings(mesh, state, param_sharding)
    carry_sh = jax.tree.map(lambda _: sharding.batch_sharded(mesh), carry)
    step = functools.partial(
        train_step, task=task, model=model, tx=tx, grad_accum_steps=grad_accum_steps
    )
    return jax.jit(
        step,
        in_shardings=(state_sh, carry_sh, sharding.batch_sharded(mesh)),
        out_shardings=(state_sh, carry_sh, repl),
        donate_argnums=(0, 1),
    )


def _check_config(config, mesh):
    """The values that would lose work later, checked before anything runs."""
    t = config.train
    for field in ("num_steps", "log_every", "eval_every", "checkpoint_every", "grad_accum_steps"):
        if t[field] <= 0:
            raise UserError(f"train.{field}={t[field]} must be positive")
    if t.keep_checkpoints < 1:
        raise UserError(
            f"train.keep_checkpoints={t.keep_checkpoints} must be at least 1 (a re-run resumes "
            "from the latest kept checkpoint)"
        )
    if t.eval_steps == 0 or t.eval_steps < -1:
        raise UserError(f"train.eval_steps={t.eval_steps} must be positive, or -1 (whole split)")
    lr = config.optim.learning_rate
    if not lr >= 0:  # NaN too; inf is allowed (the divergence test uses it)
        raise UserError(f"optim.learning_rate={lr} must be >= 0")
    mode = state_lib.param_sharding(config)
    if mode not in sharding.PARAM_SHARDINGS:
        raise UserError(
            f"train.param_sharding={mode!r} is unknown; known: "
            + ", ".join(sharding.PARAM_SHARDINGS)
        )
    sharding.check_batch("train.batch_size", t.batch_size, mesh, t.grad_accum_steps)
    sharding.check_batch("eval.batch_size", config.eval.batch_size, mesh)


class _Interrupt:
    """Turns SIGTERM / Ctrl-C into a flag the loop checks after each step, and says so at once.

    A second signal exits immediately without saving (os._exit: no cleanup can hang), naming
    the last complete checkpoint; an async save cut short leaves only orbax's temporary
    directory, which is never read as a checkpoint.
    """

    def __init__(self, workdir):
        self.signum = None
        self.step = None  # the step being run, for the message
        self._checkpoints = os.path.join(workdir, "checkpoints")
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass
        return self

    def _last_checkpoint(self):
        try:  # finished saves are renamed to their step number; nothing else is a number
            steps = [int(d) for d in os.listdir(self._checkpoints) if d.isdigit()]
        except OSError:
            steps = []
        return f"step {max(steps)}" if steps else "none (no checkpoint was saved)"

    def _handle(self, signum, frame):
        if self.signum is not None:
            print(
                f"\nexiting now without saving; the last checkpoint is {self._last_checkpoint()}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\nstopping: saving a checkpoint after step {self.step} (signal {signum}; send it "
            "again to exit at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _flush(pending, step, last_logged, suspect=None):
    """Sums device metrics since the last log; raises if the loss went non-finite, naming
    `suspect` (the checkpoint a run just resumed from) if given.

    Returns (mean loss, targets counted, mean grad norm, last param norm, mean aux scalars).
    """
    host = sharding.to_host(pending)
    loss_sum = sum(float(m["loss_sum"]) for m in host)
    count = sum(float(m["count"]) for m in host)
    loss = loss_sum / max(count, 1.0)
    # The parameters too: a finite loss with an update that overflowed would otherwise reach
    # the checkpoint saved at this step.
    norms = [float(m[k]) for m in host for k in ("grad_norm", "param_norm")]
    if not np.isfinite(loss) or not np.all(np.isfinite(norms)):
        message = f"loss is not finite in steps {last_logged + 1}-{step}"
        if suspect:
            message += (
                f", before any checkpoint since resuming from {suspect}: that checkpoint is the "
                "suspect (move it aside to resume from the one before it)"
            )
        else:
            message += f"; the last checkpoint (step <= {last_logged}) is intact"
        raise TrainingDiverged(message)
    grad_norm = float(np.mean([float(m["grad_norm"]) for m in host]))
    aux = {k: float(np.mean([float(m["aux"][k]) for m in host])) for k in host[-1]["aux"]}
    return loss, count, grad_norm, float(host[-1]["param_norm"]), aux


def _restored_best(meta, task):
    """The best validation value a checkpoint recorded, if it was ranked the way `task` ranks."""
    best = meta.get("best") or {}
    return best.get("value") if best.get("metric") == task.rank_by else None


def _prepare_workdir(workdir):
    """Creates `workdir` if needed; a path that is a file or not writable is a UserError."""
    workdir = os.path.abspath(os.path.expanduser(str(workdir)))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--workdir {workdir}: cannot create it ({e.strerror or e})") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir} is not writable")
    return workdir


def train_and_evaluate(config, workdir, *, devices=None):
    """Trains (or resumes) `config` in `workdir`. Returns a summary dict of the last events."""
    mesh = sharding.make_mesh(devices)
    _check_config(config, mesh)
    task = tasks.get_task(config)
    model = models.get_model(config)
    # Every check on the user's input happens before any checkpoint is opened.
    task.prepare(model, ("train", "valid", "test"))
    tx, schedule = optim.make_optimizer(config.optim)
    workdir = _prepare_workdir(workdir)
    lock = checkpoint.WorkdirLock(workdir) if jax.process_index() == 0 else None
    try:
        return _train(config, workdir, mesh, task, model, tx, schedule)
    finally:
        if lock is not None:
            lock.release()


def _train(config, workdir, mesh, task, model, tx, schedule):
    b = config.train.batch_size
    config_dict = json.loads(config.to_json_best_effort())
    ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    init_inputs = task.init_inputs()
    target = state_lib.sharded_train_state(config, model, tx, mesh, init_inputs, abstract=True)
    carry = state_lib.zero_carry(model, b, mesh)
    try:
        restored = ckpts.restore_latest(target, carry, config_dict)
    except BaseException:
        ckpts.close()
        raise
    best, resumed_from = None, None
    if restored is not None:
        state, carry, meta, path = restored
        best = _restored_best(meta, task)
        if ckpts.set_aside_after(meta["step"]):
            best = None  # best/ no longer holds it: the next validation writes best/ again
        resumed_from = path
        print(f"resuming from {path} (step {meta['step']})")
    else:
        state = state_lib.sharded_train_state(config, model, tx, mesh, init_inputs)
        if config.init_from:
            stored, meta, path = checkpoint.restore_params(
                config.init_from, target.params, as_stored=True
            )
            params, fresh, unused = checkpoint.merge_params(state.params, stored, path)
            state = state.replace(params=params)
            print(f"initialised parameters from {path} (step {meta['step']})")
            for what, paths in (("kept their fresh init", fresh), ("unused", unused)):
                if paths:
                    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
                    print(f"  {len(paths)} parameters {what}: {', '.join(paths[:3])}{more}")
    start = int(sharding.to_host(state.step))

    compiled = {}  # model -> train step; a family's static shapes may follow its parameters

    def step_fn_for(model):
        if model not in compiled:
            compiled[model] = make_train_step(
                task, model, tx, mesh, state, carry, config.train.grad_accum_steps,
                state_lib.param_sharding(config),
            )  # fmt: skip
        return compiled[model]

    model = model.adapt_to(state.params)  # e.g. Adaptive-Span: trims from the (restored) spans
    step_fn = step_fn_for(model)
    # Rows logged after the resumed step belong to a run that was cut short: set them aside.
    writer = writers.MetricWriter(workdir, resume_step=start if restored is not None else None)
    summary = {"start_step": start}
    pending, last_logged, t0, stop = [], start, time.perf_counter(), False
    saved_since_resume = False  # until then a divergence names the restored checkpoint
    bar = tqdm.tqdm(
        total=config.train.num_steps,
        initial=start,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        with _Interrupt(workdir) as interrupt:
            for step in range(start, config.train.num_steps):
                interrupt.step = step + 1
                host_batch, reset = task.train_batch(step)
                if reset:  # a new pass over the data starts from empty state, as the references
                    carry = state_lib.zero_carry(model, b, mesh)
                batch = sharding.shard_host_batch(mesh, host_batch)
                state, carry, metrics = step_fn(state, carry, batch)
                pending.append(metrics)
                if len(pending) > 1:
                    # At most one step queued behind the running one: the device never idles,
                    # and a signal is acted on within a step, not after a log interval's worth.
                    jax.block_until_ready(pending[-2]["loss_sum"])
                done = step + 1
                bar.update(1)
                last = done == config.train.num_steps
                adapted = False
                suspect = None if saved_since_resume else resumed_from  # named on divergence
                if done % config.train.log_every == 0 or last:
                    loss, count, grad_norm, param_norm, aux = _flush(
                        pending, done, last_logged, suspect
                    )
                    tok_s = count / (time.perf_counter() - t0)
                    scores = task.scores(loss)
                    writer.write(
                        done,
                        "train",
                        loss=loss,
                        **scores,
                        tokens_per_sec=tok_s,
                        learning_rate=float(schedule(done - 1)),
                        grad_norm=grad_norm,
                        param_norm=param_norm,
                        **aux,
                    )
                    shown = {k: f"{v:.3f}" for k, v in scores.items()}
                    if len(aux) <= 3:
                        shown.update({k: f"{v:.3g}" for k, v in aux.items()})
                    bar.set_postfix(loss=f"{loss:.3f}", **shown, tok_s=f"{tok_s:.0f}")
                    summary.update(train_loss=loss, **{f"train_{k}": v for k, v in scores.items()})
                    pending, last_logged = [], done
                    # Log steps read the metrics back anyway: the host may look at parameters.
                    model, adapted = model.adapt_to(state.params), True
                    step_fn = step_fn_for(model)
                is_best = False
                if done % config.train.eval_every == 0 or last:
                    results = task.evaluate(
                        model, state.params, "valid", mesh=mesh,
                        max_batches=config.train.eval_steps,
                    )  # fmt: skip
                    writer.write(done, "valid", **results)
                    bar.write(f"step {done}: valid {task.metric} {results[task.metric]:.4f}")
                    summary.update({f"valid_{k}": v for k, v in results.items()})
                    value = results[task.rank_by]
                    is_best = task.better(value, best)
                    best = value if is_best else best
                # Under several processes the stop flag is agreed at log steps (one all-gather),
                # so every host saves and stops at the same step.
                if jax.process_count() == 1 or done == last_logged:
                    stop = sharding.any_process(interrupt.signum)
                save = done % config.train.checkpoint_every == 0 or last or stop
                if save or is_best:
                    if pending:  # never checkpoint a state whose loss has not been checked
                        _flush(pending, done, last_logged, suspect)
                    meta = {
                        "step": done,
                        "best": {"metric": task.rank_by, "value": best},
                        "model_name": config.model_name,
                        "task": config.get("task", "lm"),
                        "config": config_dict,  # names the fields a mismatching re-run changed
                    }
                    saved_since_resume = True
                    if save:
                        ckpts.save(done, state, carry, meta)
                    if is_best:
                        ckpts.save(done, state, carry, meta, best=True)
                    if not adapted:  # a resumed run adapts at its first step: so do we here
                        model = model.adapt_to(state.params)
                        step_fn = step_fn_for(model)
                t0 = time.perf_counter() if (done == last_logged) else t0
                if stop:
                    signum = interrupt.signum or signal.SIGTERM  # a peer host was signalled
                    bar.write(f"stopped by signal {signum}; saved step {done}")
                    summary["interrupted"] = signum
                    break
    finally:
        bar.close()
        ckpts.wait()  # an async save in flight completes, so the last checkpoint is whole
        ckpts.close()
        writer.close()
    summary["step"] = int(sharding.to_host(state.step))
    return summary
