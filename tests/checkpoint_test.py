"""Checkpoints: fall-back past an unreadable one, clear errors for incompatible or all-broken."""

import pathlib

import pytest

from configs import sha_rnn as sha_config
from lmjax import train
from lmjax.errors import UserError


def _config(num_steps=2):
    config = sha_config.get_config("tiny")
    config.train.num_steps = num_steps
    config.train.checkpoint_every = 1
    config.train.eval_every = 100
    return config


def _truncate(step_dir):
    files = [
        p for p in pathlib.Path(step_dir, "state").rglob("*") if p.is_file() and "/d/" in str(p)
    ]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def test_unreadable_checkpoint_falls_back_then_errors(tmp_path, capsys):
    train.train_and_evaluate(_config(2), tmp_path)
    _truncate(tmp_path / "checkpoints" / "2")
    summary = train.train_and_evaluate(_config(3), tmp_path)
    assert summary["start_step"] == 1 and summary["step"] == 3
    assert "checkpoints/2 is unreadable" in capsys.readouterr().err

    for step in (1, 2, 3):
        if (tmp_path / "checkpoints" / str(step)).exists():
            _truncate(tmp_path / "checkpoints" / str(step))
    with pytest.raises(UserError, match="no earlier intact one"):
        train.train_and_evaluate(_config(4), tmp_path)


def test_incompatible_checkpoint_is_an_error_naming_it(tmp_path):
    train.train_and_evaluate(_config(1), tmp_path)
    config = _config(2)
    config.model.d_model = 16
    with pytest.raises(UserError, match=r"checkpoints/1 does not match the config: model.d_model"):
        train.train_and_evaluate(config, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


# ---------------------------------------------------------------------------------------------
# Config mismatches, corrupted bytes, divergence after a restore, superseded metrics


def _tree(workdir):
    """`ls -R` of a workdir's checkpoints, with sizes and modification times."""
    root = pathlib.Path(workdir)
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for d in ("checkpoints", "best")
        for p in (root / d).rglob("*")
    )


@pytest.mark.parametrize(
    "field,value,named",
    [
        ("optim.name", "adam", "optim.name is 'lamb' in the run's config, 'adam' now"),
        # the global batch is checked before the shapes: it decides what every step reads
        ("train.batch_size", 16, "was trained with train.batch_size=8, the config says 16"),
        ("model.mem_len", 8, "model.mem_len is 24 in the run's config, 8 now"),
    ],
)
def test_config_mismatch_names_the_field_and_touches_nothing(tmp_path, field, value, named):
    from lmjax import evaluate

    train.train_and_evaluate(_config(2), tmp_path)
    before = _tree(tmp_path)
    config = _config(3)
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(UserError, match="^checkpoint ") as info:
        train.train_and_evaluate(config, tmp_path)
    assert named in str(info.value) and "nothing was changed" in str(info.value)
    assert _tree(tmp_path) == before and not (tmp_path / "unreadable").exists()
    if section != "model":  # eval needs only the parameters: optimizer and batch do not matter
        assert set(evaluate.run_eval(config, tmp_path)) == {"valid", "test"}
    summary = train.train_and_evaluate(_config(3), tmp_path)  # the right config resumes at 2
    assert summary["start_step"] == 2 and summary["step"] == 3


def _largest_array_file(step_dir):
    files = [p for p in pathlib.Path(step_dir, "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_corrupted_bytes_fall_back_to_the_previous_step_with_identical_losses(tmp_path, capsys):
    import numpy as np

    from lmjax import writers

    train.train_and_evaluate(_config(5), tmp_path / "whole")
    whole = [e["loss"] for e in writers.read_metrics(tmp_path / "whole") if e["split"] == "train"]

    work = tmp_path / "work"
    train.train_and_evaluate(_config(3), work)
    victim = _largest_array_file(work / "checkpoints" / "3")
    data = bytearray(victim.read_bytes())
    # 64 random bytes at 15 places: an OCDBT data file also holds bytes no array reads back.
    rng = np.random.default_rng(0)
    for k in range(1, 16):
        at = len(data) * k // 16
        data[at : at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    summary = train.train_and_evaluate(_config(5), work)
    err = capsys.readouterr().err
    assert summary["start_step"] == 2 and summary["step"] == 5
    assert err.count("checkpoints/3 is unreadable") == 1, err  # once, no logging echo
    assert list((work / "unreadable").iterdir())
    events = [e for e in writers.read_metrics(work) if e["split"] == "train"]
    # Each step once: the rows of step 3 logged before the corruption were set aside.
    assert [e["step"] for e in events] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal([e["loss"] for e in events], whole)
    assert (work / "metrics.superseded.jsonl").exists()


def test_nonfinite_loss_after_a_restore_names_the_checkpoint(tmp_path):
    train.train_and_evaluate(_config(2), tmp_path)
    config = _config(4)
    config.optim.learning_rate = float("inf")
    config.optim.warmup_steps = 0
    with pytest.raises(train.TrainingDiverged, match=r"resuming from .*checkpoints/2.*suspect"):
        train.train_and_evaluate(config, tmp_path)


def test_a_checkpoint_written_before_the_task_seam_still_resumes(tmp_path):
    """Pre-seam meta: {"step", "best_valid_bpc", "model_name"}, no checksums, no config."""
    import json
    import math

    from lmjax import checkpoint

    train.train_and_evaluate(_config(2), tmp_path)
    meta_file = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    legacy = {"step": 2, "best_valid_bpc": 1.0, "model_name": meta["model_name"]}
    meta_file.write_text(json.dumps(legacy))
    upgraded = checkpoint.upgrade_meta(legacy)
    assert upgraded["best"] == {"metric": "loss", "value": math.log(2)}
    summary = train.train_and_evaluate(_config(3), tmp_path)
    assert summary["start_step"] == 2 and summary["step"] == 3
    # A validation loss above ln 2 (1 bpc) does not beat the legacy best: best/ stays at 2.
    assert summary["valid_loss"] > math.log(2)
    assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == ["2"]
