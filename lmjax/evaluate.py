"""Evaluation over whole splits, carrying recurrent state and memory across the stream.

Loss is Σ cross-entropy / #targets over every target of the split exactly once (the last,
partial window is padded and masked), reported in nats per token and bits per character, or,
at word level, perplexity exp(loss) (the references' ppl: SRU++ B9, Adaptive-Span A.7).
"""

import functools

import jax

from lmjax import losses, sharding
from lmjax import state as state_lib
from lmjax.data import corpora, lm


def eval_step(params, carry, batch, *, model):
    loss_sum, count, carry, _ = losses.lm_loss(model, params, batch, carry, train=False)
    return carry, {"loss_sum": loss_sum, "count": count}


def make_eval_step(model, mesh, carry):
    carry_sh = jax.tree.map(lambda _: sharding.batch_sharded(mesh), carry)
    return jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(sharding.replicated(mesh), carry_sh, sharding.batch_sharded(mesh)),
        out_shardings=(carry_sh, sharding.replicated(mesh)),
        donate_argnums=(1,),
    )


def evaluate_stream(step_fn, params, stream, carry, mesh, max_windows=-1):
    """Runs `stream` from its first window with `carry`. Returns (nats summed, targets)."""
    n = stream.num_windows if max_windows < 0 else min(max_windows, stream.num_windows)
    loss_sum, count = 0.0, 0.0
    for i in range(n):
        batch = sharding.shard_host_batch(mesh, stream.window(i))
        carry, metrics = step_fn(params, carry, batch)
        metrics = sharding.to_host(metrics)
        loss_sum += float(metrics["loss_sum"])
        count += float(metrics["count"])
    return loss_sum, count


def run_eval(config, workdir, *, devices=None, writer=None):
    """--mode=eval: best (else latest) checkpoint on the full valid and test splits.

    Returns {"valid": x, "test": y}: bits per byte, or perplexity at word level.
    """
    from lmjax import checkpoint, models, optim, writers

    splits = corpora.load_corpus(config.data)
    model = models.get_model(config)
    corpora.check_vocab_size(config.data, model.config.vocab_size)
    word = corpora.level(config.data) == "word"
    score = "ppl" if word else "bpc"
    mesh = sharding.make_mesh(devices)
    b, t = config.eval.batch_size, config.eval.seq_len
    sharding.check_batch("eval.batch_size", b, mesh)
    for name in ("valid", "test"):
        corpora.check_split(
            name, splits[name], batch_size=b, seq_len=t, vocab_size=model.config.vocab_size
        )
    tx, _ = optim.make_optimizer(config.optim)
    target = state_lib.sharded_train_state(config, model, tx, mesh, abstract=True)
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    state, meta, path = ckpts.restore_for_eval(target)
    if hasattr(model, "adapt_to"):  # e.g. Adaptive-Span: attend only as far as the learned spans
        model = model.adapt_to(state.params)
    writer = writer or writers.MetricWriter(workdir, tensorboard=False)
    results = {}
    for name in ("valid", "test"):
        stream = lm.LMStream(
            splits[name], b, t, process_index=jax.process_index(), process_count=jax.process_count()
        )
        carry = state_lib.zero_carry(model, b, mesh)
        step_fn = make_eval_step(model, mesh, carry)
        loss_sum, count = evaluate_stream(step_fn, state.params, stream, carry, mesh)
        loss = loss_sum / count
        results[name] = losses.scores(loss, word)[score]
        print(f"{name} {score} {results[name]:.4f}")
        writer.write(meta["step"], name, loss=loss, **{score: results[name]}, targets=count, full=1)
    print(f"(checkpoint {path}, step {meta['step']})")
    ckpts.close()
    return results
