"""Batched sampling (`generate.sample` on [b, p] prompts, `--num_samples`): each row of a
greedy batch is the sequence that row decodes alone, for every language-model family (with a
decoding state, and the softmax baseline that reruns its window); at b = 1 the sampled stream is
the one-sequence stream `sample_exported` replays."""

import jax
import numpy as np
import pytest

from configs import adaptive_span, fast_weights, sha_rnn, sru, sru_pp, transformer_xl
from lmjax import generate
from tests.models import family

CONFIGS = {
    "sha_rnn": sha_rnn,
    "sru": sru,
    "sru_pp": sru_pp,
    "transformer_xl": transformer_xl,
    "adaptive_span": adaptive_span,
    "fast_weights_delta": (fast_weights, "tiny,attn=delta_linear"),
    "fast_weights_softmax": (fast_weights, "tiny,attn=softmax"),
}


def _model_and_params(name):
    from lmjax import models

    module, variant = CONFIGS[name] if isinstance(CONFIGS[name], tuple) else (CONFIGS[name], "tiny")
    model = models.get_model(module.get_config(variant))
    return model, family.perturbed_params(model, family.random_tokens(1, 8))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_greedy_row_is_that_prompt_decoded_alone(name):
    model, params = _model_and_params(name)
    prompts = np.asarray(family.random_tokens(3, 4, seed=1))
    batch = generate.sample(params, prompts, jax.random.PRNGKey(0), model=model, length=6,
                            temperature=0.0)  # fmt: skip
    assert batch.shape == (3, 6) and batch.dtype == np.int32
    for row in range(3):
        alone = generate.sample(params, prompts[row : row + 1], jax.random.PRNGKey(0),
                                model=model, length=6, temperature=0.0)  # fmt: skip
        np.testing.assert_array_equal(batch[row], alone[0])
    assert len({tuple(r) for r in np.asarray(batch)}) > 1  # the prompts lead apart


def test_sampled_rows_differ_and_one_row_keeps_the_single_stream():
    model, params = _model_and_params("sha_rnn")
    prompt = np.asarray(family.random_tokens(1, 4, seed=2))
    many = generate.sample(params, np.repeat(prompt, 4, axis=0), jax.random.PRNGKey(3),
                           model=model, length=12, top_k=20)  # fmt: skip
    assert len({tuple(r) for r in np.asarray(many)}) == 4  # independent draws, one prompt
    one = generate.sample(params, prompt, jax.random.PRNGKey(3), model=model, length=12, top_k=20)
    tokens, rngs = [], jax.random.split(jax.random.PRNGKey(3), 12)  # the stream, step by step
    logits, carry, _ = model.apply({"params": params}, prompt, model.decode_carry(1, 16),
                                   train=False)  # fmt: skip
    for rng_t in rngs:
        token = generate._pick(logits[:, -1], rng_t, 1.0, 20)
        tokens.append(int(token[0]))
        logits, carry, _ = model.apply({"params": params}, token[:, None], carry, train=False)
    np.testing.assert_array_equal(one[0], tokens)
