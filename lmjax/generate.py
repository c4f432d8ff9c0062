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
    """logits: [b, v] float32 -> [b] int32 sampled at `temperature`, among the top_k if > 0;
    one key draws every row's token (independently: categorical over the last axis)."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "temperature", "top_k"))
def sample(params, prompt, rng, *, model, length, temperature=1.0, top_k=0):
    """prompt: [b, p] int32 (b sequences decoded together). Returns [b, length] int32.

    The state starts from `model.decode_carry(b, p + length)`. A family without one (a plain
    causal Transformer) is decoded by rerunning the window of all p + length positions, the
    unsampled ones still zero, and reading the logits at the last sampled position: causal, so
    the numbers are those of one forward over the final text, at O(length) per token.

    One key a step (`jax.random.split(rng, length)`) draws the whole batch's tokens, so at
    b = 1 the stream is the one `sample_exported` replays; greedy rows (temperature 0) equal
    each row decoded alone.
    """
    b, p = prompt.shape
    carry = model.decode_carry(b, p + length)
    rngs = jax.random.split(rng, length)
    if carry is None:
        window = jnp.zeros((b, p + length), jnp.int32).at[:, :p].set(prompt)

        def window_step(window, xs):
            i, rng_t = xs
            logits, _, _ = model.apply({"params": params}, window, None, train=False)
            last = jax.lax.dynamic_index_in_dim(logits, p - 1 + i, axis=1, keepdims=False)
            token = _pick(last, rng_t, temperature, top_k)
            return jax.lax.dynamic_update_index_in_dim(window, token[:, None], p + i, 1), token

        _, tokens = jax.lax.scan(window_step, window, (jnp.arange(length), rngs))
        return tokens.T
    logits, carry, _ = model.apply({"params": params}, prompt, carry, train=False)

    def step(state, rng_t):
        logits, carry = state
        token = _pick(logits, rng_t, temperature, top_k)
        logits, carry, _ = model.apply({"params": params}, token[:, None], carry, train=False)
        return (logits[:, -1], carry), token

    _, tokens = jax.lax.scan(step, (logits[:, -1], carry), rngs)
    return tokens.T  # [length, b] -> [b, length]


def load_exported(path):
    """(info, init, step, params) of a decoder file written by `lmjax.export` (no --prune):
    `init(total_len)` and `step(params, token, state)` are the deserialised jax.export
    functions, jitted. A file that is not one is a UserError naming it."""
    import json
    import os
    import zipfile

    import numpy as np

    from lmjax.errors import UserError

    if not os.path.isfile(path):
        raise UserError(f"--exported: no file {path}")
    try:
        with np.load(path) as f:
            info = json.loads(str(f["meta"]))
            if info.get("format") != "lmjax-decoder-1":
                raise ValueError(f"format {info.get('format')!r}")
            init = jax.export.deserialize(bytearray(f["init"].tobytes()))
            step = jax.export.deserialize(bytearray(f["step"].tobytes()))
            params = [f[f"param_{i}"] for i in range(len(step.in_avals) - 1 - len(info["state"]))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"--exported={path} is not an lmjax decoder file ({e})") from None
    platform = jax.devices()[0].platform
    if platform not in info["platforms"] and not (
        platform == "gpu" and "cuda" in info["platforms"]
    ):
        raise UserError(
            f"--exported={path} was exported for {', '.join(info['platforms'])}, not {platform}"
        )
    return info, jax.jit(init.call), jax.jit(step.call), params


def sample_exported(path, prompt_ids, length, *, temperature=1.0, top_k=0, seed=0):
    """Samples `length` tokens after prompt_ids [1, p] from a decoder file, one step a token:
    the prompt is fed token by token into the state from `init(p + length)`, then each sample
    is fed back. The random stream is `sample`'s (one split key a sampled token). Returns
    (tokens [length] int32, info)."""
    import numpy as np

    info, init, step, params = load_exported(path)
    prompt_ids = np.asarray(prompt_ids, np.int32).reshape(1, -1)
    state = init(np.int32(prompt_ids.shape[1] + length))
    for t in range(prompt_ids.shape[1]):
        logits, state = step(params, prompt_ids[:, t : t + 1], state)
    out = []
    for rng_t in jax.random.split(jax.random.PRNGKey(seed), length):
        token = _pick(logits, rng_t, temperature, top_k)
        out.append(int(token[0]))
        logits, state = step(params, token[:, None], state)
    return np.asarray(out, np.int32), info


def run_exported(path, *, prompt="", length=200, temperature=1.0, top_k=0, seed=0):
    """--mode=generate --exported=FILE: prints the prompt and a continuation sampled from the
    decoder file alone (no config, no model code). Returns the generated text."""
    from lmjax.data import words
    from lmjax.tasks import lm

    info, *_ = load_exported(path)
    v = info["vocab_size"]
    if not (length > 0 and temperature >= 0 and 0 <= top_k <= v):
        from lmjax.errors import UserError

        raise UserError(
            f"--length={length} must be positive, --temperature={temperature} >= 0 and "
            f"--top_k={top_k} in [0, {v}]"
        )
    vocab = info["vocab"]
    ids = lm.encode_prompt(prompt, v) if vocab is None else lm.encode_word_prompt(prompt, vocab)
    tokens, _ = sample_exported(
        path, ids, length, temperature=float(temperature), top_k=int(top_k), seed=seed
    )
    if vocab is None:
        text = bytes(int(x) for x in tokens).decode("utf-8", errors="replace")
    else:
        text = words.decode(tokens, tuple(vocab))
        text = text if not prompt or text.startswith("\n") else " " + text
    print(prompt + text)
    return text


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
