"""lmjax.export's one-step decoder (jax.export): deserialised, 50 steps of it equal the model's
own generation, for every family with an O(1) decoding state."""

import jax
import numpy as np
import pytest

from configs import adaptive_span, fast_weights, sha_rnn, sru, sru_pp, transformer_xl
from lmjax import evaluate, export, generate, sharding, train
from lmjax.errors import UserError

FAMILIES = {
    "sha_rnn": lambda: sha_rnn.get_config("tiny"),
    "sru": lambda: sru.get_config("tiny"),
    "sru_pp": lambda: sru_pp.get_config("tiny"),
    "transformer_xl": lambda: transformer_xl.get_config("tiny"),
    "adaptive_span": lambda: adaptive_span.get_config("tiny"),
    "fast_weights_delta": lambda: fast_weights.get_config("tiny,attn=delta_linear"),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_exported_steps_equal_the_models_generation(name, tmp_path):
    config = FAMILIES[name]()
    config.train.num_steps = config.train.checkpoint_every = 2
    train.train_and_evaluate(config, tmp_path / "work")
    s = export.export_decoder(config, tmp_path / "work", tmp_path / "dec.npz")
    assert s["platforms"] == ["cpu", "cuda", "tpu"] and s["state"]
    mesh = sharding.make_mesh(jax.devices()[:1])
    _, model, params, _, _ = evaluate.restore_for_inference(config, tmp_path / "work", mesh)
    prompt = np.asarray([[10, 104, 101, 32]], np.int32)
    for temperature in (0.0, 1.0):  # greedy, and sampling with the same random stream
        own = generate.sample(params, prompt, jax.random.PRNGKey(0), model=model, length=50,
                              temperature=temperature)[0]  # fmt: skip
        tokens, info = generate.sample_exported(
            tmp_path / "dec.npz", prompt, 50, temperature=temperature
        )
        np.testing.assert_array_equal(tokens, np.asarray(own))
    assert info["model_name"] == config.model_name and info["vocab"] is None


def test_a_model_without_decoding_state_has_nothing_to_export(tmp_path):
    config = fast_weights.get_config("tiny,attn=softmax")
    config.train.num_steps = config.train.checkpoint_every = 1
    train.train_and_evaluate(config, tmp_path / "work")
    with pytest.raises(UserError, match="has no decoding state"):
        export.export_decoder(config, tmp_path / "work", tmp_path / "dec.npz")
    assert not (tmp_path / "dec.npz").exists()
