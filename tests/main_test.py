"""The command line: every user mistake is one line on stderr and exit status 2, no traceback,
and existing checkpoints are left as they were."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import sha_rnn as sha_config
from lmjax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, env=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    cmd = [sys.executable, "-m", "lmjax.main", "--config=configs/sha_rnn.py:tiny", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _snapshot(workdir):
    return sorted((str(p), p.stat().st_mtime_ns) for p in pathlib.Path(workdir).rglob("*"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint trained on ASCII text with a 128-byte vocabulary."""
    root = tmp_path_factory.mktemp("trained")
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("the cat sat on the mat. " * 40)
    config = sha_config.get_config("tiny")
    config.data.name = "text"
    config.data.train_path = str(root / "train.txt")
    config.data.test_path = str(root / "test.txt")
    config.data.valid_fraction = 0.2
    config.model.vocab_size = 128
    train.train_and_evaluate(config, root / "work")
    return root


def _text_args(root, **extra):
    args = [
        "--config.data.name=text",
        f"--config.data.train_path={root / 'train.txt'}",
        f"--config.data.test_path={root / 'test.txt'}",
        "--config.data.valid_fraction=0.2",
        "--config.model.vocab_size=128",
        f"--workdir={root / 'work'}",
    ]
    return args + [f"--{k}={v}" for k, v in extra.items()]


def _bad_cases(root):
    short = root / "short.txt"
    short.write_text("tiny")
    w = f"--workdir={root / 'work'}"
    return {
        "missing data file": (
            [
                "--config.data.name=text",
                "--config.data.train_path=/no/such/file.txt",
                f"--config.data.test_path={root / 'test.txt'}",
                w,
            ],
            "data.train_path",
        ),
        "too-short corpus": (
            [
                "--config.data.name=text",
                f"--config.data.train_path={short}",
                f"--config.data.valid_path={short}",
                f"--config.data.test_path={short}",
                w,
            ],
            "train",
        ),
        "unknown dataset": (["--config.data.name=wikitext9", w], "data.name"),
        "indivisible batch": (["--config.train.batch_size=12", w], "train.batch_size=12"),
        "mistyped field": (["--config.train.batch_sise=8", w], "batch_sise"),
        "prompt outside vocabulary": (
            [*_text_args(root), "--mode=generate", "--prompt=café"],
            "outside the model's vocab",
        ),
        "eval without a checkpoint": (
            ["--mode=eval", f"--workdir={root / 'never_trained'}"],
            "no checkpoint in",
        ),
        "incompatible checkpoint": (
            [*_text_args(root), "--config.model.d_model=16"],
            "does not match the config",
        ),
    }


CASES = [
    "missing data file",
    "too-short corpus",
    "unknown dataset",
    "indivisible batch",
    "mistyped field",
    "prompt outside vocabulary",
    "incompatible checkpoint",
    "eval without a checkpoint",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(trained, case):
    before = _snapshot(trained / "work")
    args, needle = _bad_cases(trained)[case]
    proc = _run(*args, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert _snapshot(trained / "work") == before
    assert not (trained / "never_trained").exists()


def test_eval_and_generate(trained):
    proc = _run(*_text_args(trained), "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "valid bpc" in proc.stdout and "test bpc" in proc.stdout
    proc = _run(
        *_text_args(trained),
        "--mode=generate",
        "--prompt=the ",
        "--length=20",
        "--temperature=0.8",
        "--top_k=5",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("the ") and len(proc.stdout.rstrip("\n")) >= 20


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    import signal
    import time

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "lmjax.main",
        "--config=configs/sha_rnn.py:tiny",
        f"--workdir={tmp_path}",
        "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=100000",
        "--config.train.eval_every=100000",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    saved = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and int(saved[0]) >= 1
    assert f"saved step {saved[0]}" in out.decode()
