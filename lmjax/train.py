"""The one trainer: `train_and_evaluate(config, workdir)` for every model family.

`train_step` is a module-level pure function, jitted once with shardings and buffer donation over
a mesh of all devices: parameters and optimizer state replicated, the batch and the carried
recurrent state split along the batch axis. Windows of each split are read in order, so the state
carried into step k is the true history of every row (truncated backpropagation through time).
Metrics leave the device as sums and counts and are divided on the host.
"""

import functools
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from lmjax import checkpoint, evaluate, losses, models, optim, sharding, writers
from lmjax import state as state_lib
from lmjax.data import corpora, lm
from lmjax.errors import UserError


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message names the step window."""


def _split_micro(x, k):
    # Micro-batch j takes rows j, j+k, j+2k, ...: with rows split over devices in contiguous
    # blocks, every micro-batch still spans all devices.
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def _join_micro(x):
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def train_step(state, carry, batch, *, model, tx, grad_accum_steps=1):
    """One optimizer update on a [b, t] window. Returns (state, carry, metric sums).

    With grad_accum_steps = k the rows are split into k micro-batches (each with its own rows'
    carry) whose gradients are summed: the same update as the full batch without dropout.
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    carry = jax.lax.stop_gradient(carry)
    total = jnp.maximum(jnp.sum(batch["weights"]), 1.0)

    def loss_fn(params, carry, mb, rng):
        # Cross-entropy from logits, or the model's own `nll` when it has one (see losses.py).
        loss_sum, count, carry, aux = losses.lm_loss(
            model, params, mb, carry, train=True, rngs={"dropout": rng}
        )
        aux_loss = sum(aux.values()) / grad_accum_steps if aux else 0.0
        return loss_sum / total + aux_loss, (carry, loss_sum, count)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (_, (carry, loss_sum, count)), grads = grad_fn(state.params, carry, batch, rng)
    else:
        k = grad_accum_steps
        micro = jax.tree.map(lambda x: _split_micro(x, k), (batch, carry))

        def body(acc, xs):
            mb, c, i = xs
            (_, (c, ls, n)), g = grad_fn(state.params, c, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, (g, ls, n)), c

        zeros = (jax.tree.map(jnp.zeros_like, state.params), 0.0, 0.0)
        (grads, loss_sum, count), carry = jax.lax.scan(body, zeros, (*micro, jnp.arange(k)))
        carry = jax.tree.map(_join_micro, carry)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if hasattr(model, "post_update"):  # e.g. Adaptive-Span clamps its spans to [0, 1]
        params = model.post_update(params)
    metrics = {
        "loss_sum": loss_sum,
        "count": count,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, carry, metrics


def make_train_step(model, tx, mesh, state, carry, grad_accum_steps):
    repl = sharding.replicated(mesh)
    state_sh = jax.tree.map(lambda _: repl, state)
    carry_sh = jax.tree.map(lambda _: sharding.batch_sharded(mesh), carry)
    step = functools.partial(train_step, model=model, tx=tx, grad_accum_steps=grad_accum_steps)
    return jax.jit(
        step,
        in_shardings=(state_sh, carry_sh, sharding.batch_sharded(mesh)),
        out_shardings=(state_sh, carry_sh, repl),
        donate_argnums=(0, 1),
    )


def _check_config(config, mesh):
    t = config.train
    for field in ("num_steps", "seq_len", "log_every", "eval_every", "checkpoint_every"):
        if t[field] <= 0:
            raise UserError(f"train.{field}={t[field]} must be positive")
    if t.grad_accum_steps <= 0:
        raise UserError(f"train.grad_accum_steps={t.grad_accum_steps} must be positive")
    sharding.check_batch("train.batch_size", t.batch_size, mesh, t.grad_accum_steps)
    sharding.check_batch("eval.batch_size", config.eval.batch_size, mesh)


class _Interrupt:
    """Turns SIGTERM / Ctrl-C into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _flush(pending, step, last_logged):
    """Sums device metrics since the last log; raises if the loss went non-finite."""
    host = sharding.to_host(pending)
    loss_sum = sum(float(m["loss_sum"]) for m in host)
    count = sum(float(m["count"]) for m in host)
    loss = loss_sum / max(count, 1.0)
    if not np.isfinite(loss) or any(not np.isfinite(float(m["grad_norm"])) for m in host):
        raise TrainingDiverged(
            f"loss is not finite in steps {last_logged + 1}-{step}; the last checkpoint "
            f"(step <= {last_logged}) is intact"
        )
    grad_norm = float(np.mean([float(m["grad_norm"]) for m in host]))
    return loss, grad_norm, float(host[-1]["param_norm"])


def train_and_evaluate(config, workdir, *, devices=None):
    """Trains (or resumes) `config` in `workdir`. Returns a summary dict of the last events."""
    mesh = sharding.make_mesh(devices)
    _check_config(config, mesh)
    model = models.get_model(config)
    vocab = model.config.vocab_size
    # Every check on the user's input happens before any checkpoint is opened.
    splits = corpora.load_corpus(config.data)
    corpora.check_vocab_size(config.data, vocab)
    word = corpora.level(config.data) == "word"  # reports ppl instead of bpc
    score = "ppl" if word else "bpc"
    b, t = config.train.batch_size, config.train.seq_len
    corpora.check_split("train", splits["train"], batch_size=b, seq_len=t, vocab_size=vocab)
    corpora.check_split(
        "valid",
        splits["valid"],
        batch_size=config.eval.batch_size,
        seq_len=config.eval.seq_len,
        vocab_size=vocab,
    )
    proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_stream = lm.LMStream(splits["train"], b, t, **proc)
    valid_stream = lm.LMStream(splits["valid"], config.eval.batch_size, config.eval.seq_len, **proc)
    tx, schedule = optim.make_optimizer(config.optim)

    ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    target = state_lib.sharded_train_state(config, model, tx, mesh, abstract=True)
    carry = state_lib.zero_carry(model, b, mesh)
    restored = ckpts.restore_latest(target, carry)
    best = float("inf")
    if restored is not None:
        state, carry, meta, path = restored
        best = meta.get("best_valid_bpc", best)
        print(f"resuming from {path} (step {meta['step']})")
    else:
        state = state_lib.sharded_train_state(config, model, tx, mesh)
        if config.init_from:
            init = checkpoint.Checkpoints(config.init_from, read_only=True)
            loaded, meta, path = init.restore_for_eval(target)
            init.close()
            state = state.replace(params=loaded.params)
            print(f"initialised parameters from {path} (step {meta['step']})")
    start = int(sharding.to_host(state.step))

    compiled = {}  # model -> (train step, eval step); a model's static shapes may follow params

    def step_fns(model):
        if model not in compiled:
            compiled[model] = (
                make_train_step(model, tx, mesh, state, carry, config.train.grad_accum_steps),
                evaluate.make_eval_step(
                    model, mesh, carry=state_lib.zero_carry(model, config.eval.batch_size, mesh)
                ),
            )
        return compiled[model]

    if hasattr(model, "adapt_to"):  # e.g. Adaptive-Span: trims from the (restored) spans
        model = model.adapt_to(state.params)
    step_fn, eval_fn = step_fns(model)

    def validate(params):
        carry0 = state_lib.zero_carry(model, config.eval.batch_size, mesh)
        loss_sum, count = evaluate.evaluate_stream(
            eval_fn, params, valid_stream, carry0, mesh, config.train.eval_steps
        )
        return loss_sum / count

    writer = writers.MetricWriter(workdir)
    summary = {"start_step": start}
    pending, last_logged, t0, stop = [], start, time.perf_counter(), False
    bar = tqdm.tqdm(
        total=config.train.num_steps,
        initial=start,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        with _Interrupt() as interrupt:
            for step in range(start, config.train.num_steps):
                window, reset = train_stream.train_window(step)
                if reset:  # a new pass over the split starts from empty state, as the references
                    carry = state_lib.zero_carry(model, b, mesh)
                batch = sharding.shard_host_batch(mesh, window)
                state, carry, metrics = step_fn(state, carry, batch)
                if hasattr(model, "adapt_to"):  # reads a few scalars back to the host
                    model = model.adapt_to(state.params)
                    step_fn, eval_fn = step_fns(model)
                pending.append(metrics)
                done = step + 1
                bar.update(1)
                last = done == config.train.num_steps
                if done % config.train.log_every == 0 or last:
                    loss, grad_norm, param_norm = _flush(pending, done, last_logged)
                    tok_s = b * t * (done - last_logged) / (time.perf_counter() - t0)
                    writer.write(
                        done,
                        "train",
                        loss=loss,
                        **losses.scores(loss, word),
                        tokens_per_sec=tok_s,
                        learning_rate=float(schedule(done - 1)),
                        grad_norm=grad_norm,
                        param_norm=param_norm,
                    )
                    value = losses.scores(loss, word)[score]
                    bar.set_postfix(
                        loss=f"{loss:.3f}", **{score: f"{value:.3f}"}, tok_s=f"{tok_s:.0f}"
                    )
                    summary.update(train_loss=loss, **{f"train_{score}": value})
                    pending, last_logged = [], done
                is_best = False
                if done % config.train.eval_every == 0 or last:
                    vloss = validate(state.params)
                    value = losses.scores(vloss, word)[score]
                    writer.write(done, "valid", loss=vloss, **{score: value})
                    bar.write(f"step {done}: valid {score} {value:.4f}")
                    summary.update(**{f"valid_{score}": value})
                    # Ranked by bpc (loss / ln 2) at either level: the checkpoint key predates ppl.
                    is_best, best = losses.bpc(vloss) < best, min(best, losses.bpc(vloss))
                # Under several processes the stop flag is agreed at log steps (one all-gather),
                # so every host saves and stops at the same step.
                if jax.process_count() == 1 or done == last_logged:
                    stop = sharding.any_process(interrupt.signum)
                save = done % config.train.checkpoint_every == 0 or last or stop
                if save or is_best:
                    if pending:  # never checkpoint a state whose loss has not been checked
                        _flush(pending, done, last_logged)
                    meta = {"step": done, "best_valid_bpc": best, "model_name": config.model_name}
                    if save:
                        ckpts.save(done, state, carry, meta)
                    if is_best:
                        ckpts.save(done, state, carry, meta, best=True)
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
