"""The real training loop on tiny data: resume exactness, device-count equivalence, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sha_rnn as sha_config
from lmjax import train, writers


def _config(**train_overrides):
    config = sha_config.get_config("tiny")
    config.train.num_steps = 4
    config.train.checkpoint_every = 2
    config.train.eval_every = 2
    config.train.log_every = 1
    for k, v in train_overrides.items():
        config.train[k] = v
    return config


def _train_losses(workdir):
    return [e["loss"] for e in writers.read_metrics(workdir) if e["split"] == "train"]


def test_resume_reproduces_uninterrupted_losses(tmp_path):
    config = _config()
    train.train_and_evaluate(config, tmp_path / "whole")
    whole = _train_losses(tmp_path / "whole")
    assert len(whole) == 4

    first = _config(num_steps=2)
    train.train_and_evaluate(first, tmp_path / "split")
    summary = train.train_and_evaluate(config, tmp_path / "split")  # same command again
    assert summary["start_step"] == 2 and summary["step"] == 4
    np.testing.assert_array_equal(_train_losses(tmp_path / "split"), whole)
    assert whole[-1] < whole[0]
    # Byte level: the metrics.jsonl keys are the same as before word level existed.
    keys = {"step", "split", "loss", "bpc", "tokens_per_sec", "learning_rate", "grad_norm"}
    train_events = [e for e in writers.read_metrics(tmp_path / "whole") if e["split"] == "train"]
    assert all(set(e) == keys | {"param_norm"} for e in train_events)


def test_one_device_equals_eight(tmp_path):
    assert jax.device_count() == 8
    config = _config(num_steps=3)
    train.train_and_evaluate(config, tmp_path / "one", devices=jax.devices()[:1])
    train.train_and_evaluate(config, tmp_path / "eight")
    np.testing.assert_allclose(
        _train_losses(tmp_path / "one"), _train_losses(tmp_path / "eight"), rtol=1e-6
    )


@pytest.mark.parametrize("family", ["transformer_xl", "adaptive_span"])
def test_attention_families_one_device_equals_eight(family, tmp_path):
    """SHA-RNN is checked above and SRU/SRU++ in tests/models/sru_test.py."""
    import importlib

    config = importlib.import_module(f"configs.{family}").get_config("tiny")
    config.train.num_steps = 2
    train.train_and_evaluate(config, tmp_path / "one", devices=jax.devices()[:1])
    train.train_and_evaluate(config, tmp_path / "eight")
    np.testing.assert_allclose(
        _train_losses(tmp_path / "one"), _train_losses(tmp_path / "eight"), rtol=1e-5
    )


@pytest.mark.parametrize("family", ["sha_rnn", "transformer_xl"])
def test_fsdp_equals_replicated(family, tmp_path):
    """train.param_sharding='fsdp' splits parameters and optimizer state over the 8 devices
    (a device holds about 1/8 of them) and gives the replicated run's losses; it resumes from
    its own checkpoint, and one device is the replicated run."""
    import importlib

    from lmjax import checkpoint, sharding

    def config(mode, steps):
        c = importlib.import_module(f"configs.{family}").get_config("tiny")
        c.train.num_steps, c.train.checkpoint_every = steps, 2
        c.train.param_sharding = mode
        return c

    train.train_and_evaluate(config("replicated", 3), tmp_path / "repl")
    train.train_and_evaluate(config("fsdp", 2), tmp_path / "fsdp")
    train.train_and_evaluate(config("fsdp", 3), tmp_path / "fsdp")  # resumes at step 2
    np.testing.assert_allclose(
        _train_losses(tmp_path / "fsdp"), _train_losses(tmp_path / "repl"), rtol=1e-5
    )
    mesh = sharding.make_mesh()
    shapes = {
        "w": jax.ShapeDtypeStruct((48, 256), jnp.float32),
        "b": jax.ShapeDtypeStruct((3,), jnp.float32),
    }
    specs = sharding.state_shardings(mesh, shapes, "fsdp")
    assert tuple(specs["w"].spec) == (None, "data") and tuple(specs["b"].spec) == ()
    ckpts = checkpoint.Checkpoints(tmp_path / "fsdp", read_only=True)
    params = ckpts.latest.restore(3).state["params"]
    ckpts.close()
    total = sum(x.size for x in jax.tree.leaves(params))
    split = sum(
        x.size for x in jax.tree.leaves(params)
        if sharding.state_sharding(mesh, x.shape, "fsdp").spec != ()
    )  # fmt: skip
    assert split > 0.5 * total  # most of the parameters are split, even in a tiny model
    # init_from a replicated run into an fsdp one: the stored arrays take the new layout.
    warm = config("fsdp", 1)
    warm.init_from = str(tmp_path / "repl")
    warm.optim.learning_rate = 0.0
    train.train_and_evaluate(warm, tmp_path / "warm")
    ckpts = checkpoint.Checkpoints(tmp_path / "warm", read_only=True)
    warm_params = ckpts.latest.restore(1).state["params"]
    ckpts.close()
    ckpts = checkpoint.Checkpoints(tmp_path / "repl", read_only=True)
    repl_params = ckpts.latest.restore(3).state["params"]
    ckpts.close()
    jax.tree.map(np.testing.assert_array_equal, warm_params, repl_params)
    train.train_and_evaluate(config("fsdp", 3), tmp_path / "one", devices=jax.devices()[:1])
    np.testing.assert_allclose(
        _train_losses(tmp_path / "one"), _train_losses(tmp_path / "repl"), rtol=1e-5
    )


@pytest.mark.parametrize("param_sharding", ["replicated", "fsdp"])
def test_resume_on_another_device_count(param_sharding, tmp_path):
    """Elastic resume: a run checkpointed on 8 devices goes on on 4 (same global batch) with
    the uninterrupted run's losses: orbax restores every array into the new layout, the
    carried state's rows move with their data (the stream is a function of the step and the
    global row), and fsdp's split follows the new device count."""
    config = _config(num_steps=4)
    config.train.checkpoint_every = 2
    config.train.param_sharding = param_sharding
    train.train_and_evaluate(config, tmp_path / "whole")
    config.train.num_steps = 2
    train.train_and_evaluate(config, tmp_path / "moved")
    config.train.num_steps = 4
    train.train_and_evaluate(config, tmp_path / "moved", devices=jax.devices()[:4])
    np.testing.assert_allclose(
        _train_losses(tmp_path / "moved"), _train_losses(tmp_path / "whole"), rtol=1e-5
    )


def test_grad_accumulation_equals_full_batch(tmp_path):
    def run(name, accum):
        config = _config(num_steps=2, grad_accum_steps=accum)
        for k in ("dropout_rate", "dropout_hidden", "dropout_input"):
            config.model[k] = 0.0
        train.train_and_evaluate(config, tmp_path / name, devices=jax.devices()[:2])
        return _train_losses(tmp_path / name)

    np.testing.assert_allclose(run("full", 1), run("accum", 2), rtol=1e-5)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    config = _config(num_steps=2)
    train.train_and_evaluate(config, tmp_path)
    config = _config(num_steps=4)
    config.optim.learning_rate = float("inf")
    # Step 3's loss is finite but its update is not: caught at step 3 by the parameter norm.
    with pytest.raises(train.TrainingDiverged, match="steps 3-3"):
        train.train_and_evaluate(config, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2]


def test_trainer_hooks_clamp_and_trim_adaptive_span(tmp_path):
    """The trainer clamps the spans after every update (post_update) and re-traces the step
    with the trims the learned spans allow (adapt_to)."""
    from configs import adaptive_span
    from lmjax import evaluate, sharding

    config = adaptive_span.get_config("tiny")
    config.train.num_steps = 2
    config.optim.learning_rate = 100.0  # drives span_z far outside [0, 1] without the clamp
    train.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    mesh = sharding.make_mesh(jax.devices()[:1])
    _, _, params, _, _ = evaluate.restore_for_inference(config, tmp_path, mesh)
    zs = [np.asarray(v["attn"]["span_z"]) for k, v in params.items() if "layer_" in k]
    assert zs and all(((z >= 0) & (z <= 1)).all() for z in zs)
    # Every aux scalar is logged: the span penalty (a loss) and the two span diagnostics.
    events = [e for e in writers.read_metrics(tmp_path) if e["split"] == "train"]
    assert all({"span_penalty", "span_mean", "span_overflow"} <= set(e) for e in events)


# ---------------------------------------------------------------------------------------------
# Word level through a model's `nll` (SRU++ with tied adaptive input and softmax)


def _word_config(tmp_path, **train_overrides):
    from configs import sru_pp
    from lmjax.data import corpora

    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("test", 60)):
        path = tmp_path / f"{split}.txt"
        if not path.exists():  # Zipf-like words, so the frequency-sorted clusters are uneven
            lines = [" ".join(f"w{int(i)}" for i in rng.zipf(1.5, 6) % 40) for _ in range(n)]
            path.write_text("\n".join(lines) + "\n")
    config = sru_pp.get_config("wt103_tiny")
    config.data.update(name="text", level="word", valid_fraction=0.2)
    config.data.train_path = str(tmp_path / "train.txt")
    config.data.test_path = str(tmp_path / "test.txt")
    config.model.vocab_size = corpora.vocab_size(config.data)
    config.model.adaptive_cutoffs = (4, 12, 24)
    config.train.update(num_steps=4, checkpoint_every=2, eval_every=2, log_every=1)
    config.train.update(train_overrides)
    return config


def test_word_level_nll_resumes_exactly_and_reports_ppl(tmp_path, capsys):
    from lmjax import evaluate, generate
    from lmjax.errors import UserError

    config = _word_config(tmp_path)
    assert 24 < config.model.vocab_size <= 41
    train.train_and_evaluate(config, tmp_path / "whole")
    events = writers.read_metrics(tmp_path / "whole")
    whole = _train_losses(tmp_path / "whole")
    assert len(whole) == 4 and whole[-1] < whole[0]
    for e in events:  # word level: perplexity beside the loss, no bits per byte
        assert "bpc" not in e and np.isclose(e["ppl"], np.exp(e["loss"]), rtol=1e-9)
    assert [e["step"] for e in events if e["split"] == "valid"] == [2, 4]

    train.train_and_evaluate(_word_config(tmp_path, num_steps=2), tmp_path / "split")
    summary = train.train_and_evaluate(config, tmp_path / "split")
    assert summary["start_step"] == 2 and "valid_ppl" in summary
    np.testing.assert_array_equal(_train_losses(tmp_path / "split"), whole)

    results = evaluate.run_eval(config, tmp_path / "whole")
    out = capsys.readouterr().out
    assert f"valid ppl {results['valid']:.4f}" in out and f"test ppl {results['test']:.4f}" in out
    text = generate.run_generate(
        config, tmp_path / "whole", prompt="w1 w2", length=5, temperature=1.0, top_k=0
    )
    assert len(text.split()) <= 5 and all(w.startswith("w") for w in text.split())
    capsys.readouterr()
    texts = generate.run_generate(
        config, tmp_path / "whole", prompt="w1 w2", length=5, num_samples=3
    )  # one batch of three continuations, each printed under its own header
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(f"=== sample {i} of 3" in out for i in (1, 2, 3))
    assert all(w.startswith("w") for t in texts for w in t.split())

    config.model.vocab_size += 1
    with pytest.raises(UserError, match=f"model.vocab_size={config.model.vocab_size} but"):
        train.train_and_evaluate(config, tmp_path / "other")


def test_word_level_grad_accumulation_equals_full_batch(tmp_path):
    def run(name, accum):
        config = _word_config(tmp_path, num_steps=2, grad_accum_steps=accum)
        config.model.update(dropout_rate=0.0, attn_dropout=0.0, emb_dropout=0.0)
        train.train_and_evaluate(config, tmp_path / name, devices=jax.devices()[:2])
        return _train_losses(tmp_path / name)

    np.testing.assert_allclose(run("full", 1), run("accum", 2), rtol=1e-5)
