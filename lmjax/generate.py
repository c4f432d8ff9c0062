"""Decoding: sampling through the family interface, and --mode=generate.

`sample` runs a prompt through the model in one call, then a `lax.scan` of `length` steps
feeds each sampled token back as a [1, 1] input with the carried state, so generation costs one
compiled program regardless of length. What a prompt and a token are (bytes, words) is the
task's (tasks/lm.py `LMTask.generate`); `run_generate` restores the parameters and hands over.
"""

import functools

import jax
import jax.numpy as jnp


def _pick(logits, rng, temperature, top_k):
    """logits: [1, v] float32 -> [1] int32 sampled at `temperature`, among the top_k if > 0."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "temperature", "top_k"))
def sample(params, prompt, rng, *, model, length, temperature=1.0, top_k=0):
    """prompt: [1, p] int32. Returns [length] int32 sampled continuation."""
    logits, carry, _ = model.apply({"params": params}, prompt, None, train=False)

    def step(state, rng_t):
        logits, carry = state
        token = _pick(logits, rng_t, temperature, top_k)
        logits, carry, _ = model.apply({"params": params}, token[:, None], carry, train=False)
        return (logits[:, -1], carry), token[0]

    rngs = jax.random.split(rng, length)
    _, tokens = jax.lax.scan(step, (logits[:, -1], carry), rngs)
    return tokens


def run_generate(config, workdir, **options):
    """--mode=generate: the task decodes from the best (else latest) checkpoint; `options` are
    the command line's (prompt, length, temperature, top_k). Returns the generated text."""
    from lmjax import evaluate, models, sharding, tasks

    task, model = tasks.get_task(config), models.get_model(config)
    task.check_generate_options(model, **options)  # before any checkpoint is read
    mesh = sharding.make_mesh(jax.devices()[:1])
    task, model, params, _, _ = evaluate.restore_for_inference(
        config, workdir, mesh, task=task, model=model
    )
    return task.generate(model, params, **options)
