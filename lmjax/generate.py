"""Decoding: sampling through the family interface, and --mode=generate.

`sample` runs a prompt through the model in one call, then a `lax.scan` of `length` steps
feeds each sampled token back as a [1, 1] input with the carried state, so generation costs one
compiled program regardless of length (a family without a decoding state reruns its window).
What a prompt and a token are (bytes, words) is the task's (tasks/lm.py `LMTask.generate`);
`run_generate` restores the parameters and hands over.
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
    """prompt: [1, p] int32. Returns [length] int32 sampled continuation.

    The state starts from `model.decode_carry(1, p + length)`. A family without one (a plain
    causal Transformer) is decoded by rerunning the window of all p + length positions, the
    unsampled ones still zero, and reading the logits at the last sampled position: causal, so
    the numbers are those of one forward over the final text, at O(length) per token.
    """
    p = prompt.shape[1]
    carry = model.decode_carry(1, p + length)
    rngs = jax.random.split(rng, length)
    if carry is None:
        window = jnp.zeros((1, p + length), jnp.int32).at[:, :p].set(prompt)

        def window_step(window, xs):
            i, rng_t = xs
            logits, _, _ = model.apply({"params": params}, window, None, train=False)
            last = jax.lax.dynamic_index_in_dim(logits, p - 1 + i, axis=1, keepdims=False)
            token = _pick(last, rng_t, temperature, top_k)
            return jax.lax.dynamic_update_index_in_dim(window, token, p + i, axis=1), token[0]

        _, tokens = jax.lax.scan(window_step, window, (jnp.arange(length), rngs))
        return tokens
    logits, carry, _ = model.apply({"params": params}, prompt, carry, train=False)

    def step(state, rng_t):
        logits, carry = state
        token = _pick(logits, rng_t, temperature, top_k)
        logits, carry, _ = model.apply({"params": params}, token[:, None], carry, train=False)
        return (logits[:, -1], carry), token[0]

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


def run_translate(config, workdir, *, input):
    """--mode=translate: the task translates the lines of `input` (a file, or '-' for stdin)
    with the best (else latest) checkpoint; prints and returns the translations."""
    from lmjax import evaluate, models, sharding, tasks

    task, model = tasks.get_task(config), models.get_model(config)
    task.check_translate_options(model, input)  # before any checkpoint is read
    mesh = sharding.make_mesh(jax.devices()[:1])
    task, model, params, _, _ = evaluate.restore_for_inference(
        config, workdir, mesh, task=task, model=model
    )
    return task.translate(model, params, input)
