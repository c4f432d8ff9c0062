"""The translation task through the shared trainer: a tiny gated model learns toy pairs, resumes
exactly, evaluates BLEU with greedy decoding, and reports its open heads."""

import pytest

from configs import story_of_heads as soh_config
from lmjax import generate, train, writers
from lmjax.errors import UserError
from tests.data.translation_test import _corpus, _write


def _config(tmp_path, **model):
    src, tgt = _corpus(400)
    config = soh_config.get_config("tiny")
    config.data.cache_dir = str(tmp_path / "spm")
    for split, (a, b) in {"train": (0, 300), "valid": (300, 350), "test": (350, 400)}.items():
        config.data[f"{split}_src"] = _write(tmp_path / f"{split}.en", src[a:b])
        config.data[f"{split}_tgt"] = _write(tmp_path / f"{split}.de", tgt[a:b])
    config.train.num_steps = 30
    config.train.log_every = 10
    config.train.eval_every = config.train.checkpoint_every = 15
    for k, v in model.items():
        config.model[k] = v
    return config


def test_tiny_translation_trains_resumes_and_scores_bleu(tmp_path):
    config = _config(tmp_path, concrete_heads=("enc-self", "dec-enc"))
    train.train_and_evaluate(config, tmp_path / "whole")
    events = writers.read_metrics(tmp_path / "whole")
    train_rows = [e for e in events if e["split"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert all(0 <= e["open_enc_self"] <= 8 and "l0_penalty" in e for e in train_rows)
    valid = [e for e in events if e["split"] == "valid"]
    assert len(valid) == 2 and all(0 <= e["bleu"] <= 100 and "bleu_tok" in e for e in valid)
    # Resume: the same command after a run cut at step 15 gives the same losses.
    config.train.num_steps = 15
    train.train_and_evaluate(config, tmp_path / "split")
    config.train.num_steps = 30
    train.train_and_evaluate(config, tmp_path / "split")
    # (logged losses are interval means; the cut adds a row at 15, so compare 10 and 30.)
    again = {
        e["step"]: e["loss"]
        for e in writers.read_metrics(tmp_path / "split")
        if e["split"] == "train"
    }
    whole = {e["step"]: e["loss"] for e in train_rows}
    assert again[10] == whole[10] and again[30] == whole[30]

    # --mode=translate: one detokenised line per input line, as the task's own decoder gives.
    lines = _corpus(5, seed=3)[0] + [""]
    out = generate.run_translate(
        config, tmp_path / "whole", input=_write(tmp_path / "in.en", lines)
    )
    assert len(out) == len(lines) and all(isinstance(x, str) for x in out)
    with pytest.raises(UserError, match="--mode=translate needs --input"):
        generate.run_translate(config, tmp_path / "whole", input=None)


def test_vocabulary_must_match_the_model(tmp_path):
    config = _config(tmp_path)
    config.model.tgt_vocab_size = 65
    with pytest.raises(UserError, match="model.tgt_vocab_size=65 but data.vocab_size=64"):
        train.train_and_evaluate(config, tmp_path / "w")
    config = _config(tmp_path)
    config.data.valid_tgt = _write(tmp_path / "short.de", ["x"])
    with pytest.raises(UserError, match="has 50 lines but .*short.de has 1"):
        train.train_and_evaluate(config, tmp_path / "w")


def test_language_models_have_no_translate_mode(tmp_path):
    from configs import sha_rnn

    with pytest.raises(UserError, match="task LMTask has no --mode=translate"):
        generate.run_translate(sha_rnn.get_config("tiny"), tmp_path, input="x")
