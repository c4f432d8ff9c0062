"""Fast weights through the trainer and the LM task: exact resume with the carried fast weights,
one device = eight, the Performer matrix in the checkpoint, and the evaluation protocols
(sliding = a per-window loop, carry over two halves = one pass, segments, bad settings)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fast_weights as fw_config
from lmjax import evaluate, models, sharding, tasks, train, writers
from lmjax.errors import UserError
from tests.models import family

_TEXT = (
    "A fast weight is written by keys and values and read by queries. "
    "The delta rule replaces what a key retrieved; the sum rule only adds. "
) * 6


def _config(tmp_path, attn="delta_linear", **model):
    config = fw_config.get_config(f"tiny,attn={attn}")
    for split, text in (("train", _TEXT), ("valid", _TEXT[:301]), ("test", _TEXT[7:290])):
        path = tmp_path / f"{split}.txt"
        path.write_text(text)
        config.data[f"{split}_path"] = str(path)
    config.data.name = "text"
    config.train.num_steps = 4
    config.train.checkpoint_every = 2
    config.train.eval_every = 2
    config.eval.batch_size = 8
    config.model.update(model)
    return config


def _losses(workdir):
    return [e["loss"] for e in writers.read_metrics(workdir) if e["split"] == "train"]


def test_carried_fast_weights_resume_exactly_and_one_device_equals_eight(tmp_path):
    config = _config(tmp_path, carry_over_fast_weight=True, no_pos=True)
    train.train_and_evaluate(config, tmp_path / "whole")
    whole = _losses(tmp_path / "whole")
    first = _config(tmp_path, carry_over_fast_weight=True, no_pos=True)
    first.train.num_steps = 2
    train.train_and_evaluate(first, tmp_path / "split")
    assert train.train_and_evaluate(config, tmp_path / "split")["start_step"] == 2
    np.testing.assert_array_equal(_losses(tmp_path / "split"), whole)
    config.train.num_steps = 3
    train.train_and_evaluate(config, tmp_path / "one", devices=jax.devices()[:1])
    train.train_and_evaluate(config, tmp_path / "eight")
    np.testing.assert_allclose(_losses(tmp_path / "one"), _losses(tmp_path / "eight"), rtol=1e-5)


def test_performer_matrix_is_checkpointed_and_used_after_restart(tmp_path):
    config = _config(tmp_path, attn="delta_performer")
    model = models.get_model(config)
    task = tasks.get_task(config)
    mesh = sharding.make_mesh(jax.devices()[:1])
    train.train_and_evaluate(config, tmp_path / "run")
    _, _, params, _, _ = evaluate.restore_for_inference(config, tmp_path / "run", mesh)
    stored = np.asarray(params["layer_0"]["attn"]["proj_matrix"])
    # Not the initial matrix: the last training step's (and a resumed run reproduces it).
    fresh = model.init(jax.random.PRNGKey(config.seed), *task.init_inputs(), train=False)
    assert not np.allclose(stored, fresh["params"]["layer_0"]["attn"]["proj_matrix"])
    first = _config(tmp_path, attn="delta_performer")
    first.train.num_steps = 2
    train.train_and_evaluate(first, tmp_path / "split")
    train.train_and_evaluate(config, tmp_path / "split")
    np.testing.assert_array_equal(_losses(tmp_path / "split"), _losses(tmp_path / "run"))
    _, _, resumed, _, _ = evaluate.restore_for_inference(config, tmp_path / "split", mesh)
    np.testing.assert_array_equal(resumed["layer_0"]["attn"]["proj_matrix"], stored)
    # Evaluation after the restart uses it: two evaluations agree to the bit.
    a = evaluate.run_eval(config, tmp_path / "run")
    b = evaluate.run_eval(config, tmp_path / "split")
    assert a == b


def _task_and_params(config, seed=0):
    model = models.get_model(config)
    task = tasks.get_task(config)
    task.prepare(model, ("valid", "test"))
    params = family.perturbed_params(model, task.init_inputs()[0], seed=seed, scale=0.1)
    return task, model, params


@pytest.mark.parametrize("attn", ["delta_linear", "softmax"])
def test_sliding_equals_a_per_window_loop(tmp_path, attn):
    config = _config(tmp_path, attn=attn)
    config.eval.protocol = "sliding"
    config.eval.seq_len = 16
    config.eval.batch_size = 4
    task, model, params = _task_and_params(config)
    mesh = sharding.make_mesh(jax.devices()[:2])
    got = task.evaluate(model, params, "valid", mesh=mesh)
    data = np.asarray(task._splits["valid"], np.int32)
    L, n = 16, len(data)
    apply = jax.jit(lambda x, y: model.apply({"params": params}, x, y, None, train=False,
                                             method=model.nll)[0])  # fmt: skip
    total, count = 0.0, 0
    for i in range(n - L):  # windows 0 .. N-L-1
        nll = np.asarray(apply(data[None, i : i + L], data[None, i + 1 : i + L + 1]))[0]
        scored = nll if i == 0 else nll[-1:]
        total, count = total + float(scored.sum()), count + scored.size
    assert count == n - 1 == got["targets"] == got["split_targets"]
    np.testing.assert_allclose(got["loss"], total / count, rtol=1e-5)
    # Every 5th position: the first window in full, then windows 5, 10, ...
    config.eval.sliding_stride = 5
    strided = tasks.get_task(config)
    strided.prepare(model, ("valid",))
    part = strided.evaluate(model, params, "valid", mesh=mesh)
    assert part["targets"] == L + len(range(5, n - L, 5)) and part["sliding_stride"] == 5
    assert "every 5th position" in strided.eval_note(part)


def test_carry_protocol_over_two_halves_equals_one_pass(tmp_path):
    """With the fast weights carried (and no positions), windows of 8 = windows of 16 = one
    pass; `segments` restarts every window and scores worse context."""
    config = _config(tmp_path, carry_over_fast_weight=True, no_pos=True)
    config.eval.batch_size = 1
    task, model, params = _task_and_params(config)
    mesh = sharding.make_mesh(jax.devices()[:1])
    data = np.asarray(task._splits["test"], np.int32)
    n = len(data) - 1
    nll = model.apply({"params": params}, data[None, :-1], data[None, 1:], model.init_carry(1),
                      train=False, method=model.nll)[0]  # fmt: skip
    one_pass = float(jnp.mean(nll))
    results = {}
    for seq_len in (8, 16, n):
        config.eval.seq_len = seq_len
        t = tasks.get_task(config)
        t.prepare(model, ("test",))
        results[seq_len] = t.evaluate(model, params, "test", mesh=mesh)
        assert results[seq_len]["targets"] == n
    for r in results.values():
        np.testing.assert_allclose(r["loss"], one_pass, rtol=1e-5)
    config.eval.seq_len, config.eval.protocol = 8, "segments"
    seg = tasks.get_task(config)
    seg.prepare(model, ("test",))
    assert not np.isclose(seg.evaluate(model, params, "test", mesh=mesh)["loss"], one_pass)
    assert seg.eval_label("test") == "test_segments"


def test_eval_prints_the_protocol_and_logs_it(tmp_path, capsys):
    config = _config(tmp_path)
    config.train.num_steps = 2
    train.train_and_evaluate(config, tmp_path / "run")
    config.eval.protocol = "sliding"
    config.eval.sliding_stride = 3
    config.eval.seq_len = 16
    evaluate.run_eval(config, tmp_path / "run")
    out = capsys.readouterr().out
    assert "test bpc" in out and "(sliding window 16, every 3th position:" in out
    splits = {e["split"] for e in writers.read_metrics(tmp_path / "run")}
    assert {"valid_sliding", "test_sliding"} <= splits


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("protocol", "wholesome", "eval.protocol='wholesome' is unknown"),
        ("sliding_stride", 0, "eval.sliding_stride=0 must be"),
    ],
)
def test_bad_eval_settings_are_one_line(tmp_path, field, value, message):
    config = _config(tmp_path)
    config.eval[field] = value
    with pytest.raises(UserError, match=message):
        tasks.get_task(config)


def test_window_longer_than_split_is_one_line(tmp_path):
    config = _config(tmp_path)
    config.eval.protocol = "sliding"
    config.eval.seq_len = 300  # valid has 301 bytes: fits; test has 283
    config.eval.batch_size = 1
    task = tasks.get_task(config)
    model = models.get_model(config)
    with pytest.raises(UserError, match="test split has 283 tokens.*seq_len=300") as err:
        task.prepare(model, ("valid", "test"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="eval.seq_len=300: the sliding window is longer"):
        task._sliding_starts("test")  # the protocol's own check, for a batch that fits


@pytest.mark.parametrize("accum", [1, 2])
def test_trainer_stores_the_matrix_its_forward_drew(tmp_path, accum):
    """post_update gets the streams of the step's last forward: with lr 0 and no dropout, the
    training loss of that forward's rows equals the evaluation loss under the stored P."""
    from lmjax import optim
    from lmjax import state as state_lib

    config = _config(tmp_path, attn="delta_performer", dropout_rate=0.0)
    config.optim.learning_rate = 0.0
    model, task = models.get_model(config), tasks.get_task(config)
    task.prepare(model, ("train",))
    mesh = sharding.make_mesh(jax.devices()[:1])
    tx, _ = optim.make_optimizer(config.optim)
    state = state_lib.sharded_train_state(config, model, tx, mesh, task.init_inputs())
    batch = jax.tree.map(jnp.asarray, task.train_batch(0)[0])
    new, _, metrics = jax.jit(
        lambda s, b: train.train_step(
            s, None, b, task=task, model=model, tx=tx, grad_accum_steps=accum
        )  # fmt: skip
    )(state, batch)
    rows = config.train.batch_size // accum
    last = jax.tree.map(lambda x: x[-rows:], batch)  # the last micro-batch
    old_p = state.params["layer_0"]["attn"]["proj_matrix"]
    assert not np.allclose(new.params["layer_0"]["attn"]["proj_matrix"], old_p)
    eval_sum, count, _, _ = task.loss(model, new.params, last, None, train=False)
    if accum == 1:
        np.testing.assert_allclose(eval_sum, metrics["loss_sum"], rtol=1e-5)
    else:  # the last micro-batch's own training loss, with that micro-batch's key
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        rngs = train._rngs(model, jax.random.fold_in(rng, accum - 1))
        train_sum, _, _, _ = task.loss(model, state.params, last, None, train=True, rngs=rngs)
        np.testing.assert_allclose(eval_sum, train_sum, rtol=1e-5)
    assert count == rows * config.train.seq_len
