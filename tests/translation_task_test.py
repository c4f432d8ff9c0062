"""The translation task through the shared trainer: a tiny gated model learns toy pairs, resumes
exactly, evaluates BLEU with greedy decoding, and reports its open heads."""

import pytest

from configs import story_of_heads as soh_config
from lmjax import cli, export, generate, train, writers
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

    # The pruned export (the heads' gates are not yet closed at this length: it is the path
    # through the CLI's pieces that is checked here; the surgery is tested in
    # tests/models/story_of_heads_test.py): the same translations from the new workdir.
    summary = export.export_pruned(config, tmp_path / "whole", tmp_path / "pruned")
    assert summary["params_after"] <= summary["params_before"]
    pruned_config = cli.apply_workdir_overrides(config, tmp_path / "pruned")
    assert pruned_config.model.concrete_heads == () and "enc-self" in pruned_config.model.kept_heads
    again = generate.run_translate(
        pruned_config, tmp_path / "pruned", input=str(tmp_path / "in.en")
    )
    assert again == out
    # The open heads as fixed masks, for the from-scratch comparison (`*_fixed,heads=FILE`).
    fixed = soh_config.get_config(f"multi30k_fixed,heads={summary['alive_heads']}")
    masks = fixed.model.alive_heads
    assert sorted(masks) == ["dec-enc", "enc-self"] and len(masks["enc-self"]) == 2
    assert all(x in (0, 1) for row in masks["enc-self"] for x in row)
    with pytest.raises(ValueError, match="heads=nowhere.json: No such file"):
        soh_config.get_config("multi30k_fixed,heads=nowhere.json")
    with pytest.raises(UserError, match="exists; give a new directory"):
        export.export_pruned(config, tmp_path / "whole", tmp_path / "pruned")
    config.model.concrete_heads = ()
    with pytest.raises(UserError, match="does not match the config|nothing to prune"):
        export.export_pruned(config, tmp_path / "whole", tmp_path / "pruned2")
    assert not (tmp_path / "pruned2").exists()


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


def test_one_device_equals_eight(tmp_path):
    """The token-count batches are split over 8 (fake CPU) devices: the same losses as on one."""
    import jax
    import numpy as np

    config = _config(tmp_path, concrete_heads=("dec-enc",))
    config.train.num_steps = config.train.log_every = 6
    config.train.eval_every = config.train.checkpoint_every = 6
    config.train.eval_steps = 1
    assert jax.device_count() == 8
    train.train_and_evaluate(config, tmp_path / "one", devices=jax.devices()[:1])
    train.train_and_evaluate(config, tmp_path / "eight")
    losses = lambda w: [e["loss"] for e in writers.read_metrics(w) if e["split"] == "train"]
    np.testing.assert_allclose(losses(tmp_path / "one"), losses(tmp_path / "eight"), rtol=1e-5)


def test_pruning_run_starts_from_a_baseline_without_gates(tmp_path, capsys):
    """init_from a baseline with no gates (C.3's pre-init): every shared parameter comes from
    the baseline, the gates keep their fresh init and the run says so; a checkpoint of
    another architecture is a one-line error."""
    import numpy as np

    from lmjax import checkpoint

    config = _config(tmp_path)
    config.train.num_steps = config.train.checkpoint_every = 3
    config.train.eval_every, config.train.eval_steps = 100, 1
    train.train_and_evaluate(config, tmp_path / "base")
    prune = _config(tmp_path, concrete_heads=("enc-self", "dec-self", "dec-enc"))
    prune.train.num_steps = prune.train.checkpoint_every = 1
    prune.train.eval_every, prune.train.eval_steps = 100, 1
    prune.optim.learning_rate = 0.0  # the step leaves the parameters as they were loaded
    prune.init_from = str(tmp_path / "base")
    train.train_and_evaluate(prune, tmp_path / "prune")
    out = capsys.readouterr().out
    assert "6 parameters kept their fresh init: dec_0/enc_attn/gate/log_a" in out
    base = checkpoint.Checkpoints(tmp_path / "base", read_only=True)
    pruned = checkpoint.Checkpoints(tmp_path / "prune", read_only=True)
    a = base.latest.restore(3).state["params"]
    b = pruned.latest.restore(1).state["params"]
    np.testing.assert_array_equal(
        b["enc_0"]["ffn"]["conv1"]["kernel"], a["enc_0"]["ffn"]["conv1"]["kernel"]
    )
    assert "log_a" in b["enc_0"]["self_attn"]["gate"]
    base.close(), pruned.close()
    wide = _config(tmp_path)
    wide.model.d_ff = 128
    wide.init_from = str(tmp_path / "base")
    with pytest.raises(
        UserError, match="init_from .*: parameter .*/conv1/.* in the checkpoint, .* in the model"
    ):
        train.train_and_evaluate(wide, tmp_path / "wide")
