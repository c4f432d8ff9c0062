"""Sampling from a trained checkpoint, carrying the recurrent state token by token.

The prompt runs through the model in one call; then a `lax.scan` of `length` steps feeds each
sampled token back as a [1, 1] window with the carried state, so generation costs one compiled
program regardless of length. Tokens are bytes, or at word level (data.level = "word") words of
the data's vocabulary: the prompt is split on whitespace and `<eos>` prints as a line break.
"""

import functools

import jax
import jax.numpy as jnp

from lmjax.errors import UserError


def encode_prompt(prompt, vocab_size):
    """UTF-8 bytes of `prompt` as token ids; a byte outside the vocabulary is a UserError."""
    data = prompt.encode("utf-8") or b"\n"  # an empty prompt starts a new line
    for i, byte in enumerate(data):
        if byte >= vocab_size:
            raise UserError(
                f"--prompt byte {byte} (0x{byte:02x}) at position {i} is outside the model's "
                f"vocabulary of {vocab_size} bytes"
            )
    return jnp.asarray(list(data), jnp.int32)[None, :]


def encode_word_prompt(prompt, vocab):
    """The prompt's words as ids [1, p] (unknown words -> <unk> if the vocabulary has one); an
    empty prompt starts a new line (<eos>)."""
    from lmjax.data import words

    index = {w: i for i, w in enumerate(vocab)}
    ids = []
    for w in prompt.split():
        i = index.get(w, index.get(words.UNK))
        if i is None:
            raise UserError(f"--prompt word {w!r} is not in the data's vocabulary (no <unk>)")
        ids.append(i)
    return jnp.asarray(ids or [index[words.EOS]], jnp.int32)[None, :]


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


def run_generate(config, workdir, *, prompt, length, temperature, top_k, seed=0):
    """--mode=generate: prints the prompt and its sampled continuation."""
    from lmjax import checkpoint, models, optim, sharding
    from lmjax import state as state_lib
    from lmjax.data import corpora, words

    if length <= 0:
        raise UserError(f"--length={length} must be positive")
    model = models.get_model(config)
    vocab = corpora.load_vocab(config.data)  # None at byte level
    if vocab is None:
        tokens = encode_prompt(prompt, model.config.vocab_size)
    else:
        corpora.check_vocab_size(config.data, model.config.vocab_size)
        tokens = encode_word_prompt(prompt, vocab)
    mesh = sharding.make_mesh(jax.devices()[:1])
    tx, _ = optim.make_optimizer(config.optim)
    target = state_lib.sharded_train_state(config, model, tx, mesh, abstract=True)
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    state, _, _ = ckpts.restore_for_eval(target)
    ckpts.close()
    if hasattr(model, "adapt_to"):  # e.g. Adaptive-Span: attend only as far as the learned spans
        model = model.adapt_to(state.params)
    out = sample(
        state.params,
        tokens,
        jax.random.PRNGKey(seed),
        model=model,
        length=length,
        temperature=float(temperature),
        top_k=int(top_k),
    )
    if vocab is None:
        text = bytes(int(x) for x in jax.device_get(out)).decode("utf-8", errors="replace")
    else:
        text = words.decode(jax.device_get(out), vocab)
        text = text if not prompt or text.startswith("\n") else " " + text
    print(prompt + text)
    return text
