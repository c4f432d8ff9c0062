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
    assert "checkpoints/2 is unreadable" in capsys.readouterr().out

    for step in (1, 2, 3):
        if (tmp_path / "checkpoints" / str(step)).exists():
            _truncate(tmp_path / "checkpoints" / str(step))
    with pytest.raises(UserError, match="no earlier intact one"):
        train.train_and_evaluate(_config(4), tmp_path)


def test_incompatible_checkpoint_is_an_error_naming_it(tmp_path):
    train.train_and_evaluate(_config(1), tmp_path)
    config = _config(2)
    config.model.d_model = 16
    with pytest.raises(UserError, match=r"checkpoints/1 does not match the config: params/"):
        train.train_and_evaluate(config, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
