"""The command line: every user mistake is one line on stderr and exit status 2, no traceback,
and existing checkpoints are left as they were."""

import os
import pathlib
import re
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
    """Every file and its modification time, but the trainer's lock file (bookkeeping)."""
    paths = (p for p in pathlib.Path(workdir).rglob("*") if p.name != ".lock")
    return sorted((str(p), p.stat().st_mtime_ns) for p in paths)


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
        "another global batch": (
            [*_text_args(root), "--config.train.batch_size=16", "--config.train.num_steps=9"],
            "was trained with train.batch_size=8, the config says 16",
        ),
        "missing config file": (["--config=configs/no_such.py", w], "no such file"),
        "unknown config variant": (["--config=configs/sha_rnn.py:bogus", w], "'bogus'"),
        "workdir is a file": ([f"--workdir={root / 'train.txt'}"], "is a file"),
        "URL workdir": (["--workdir=gs://bucket/run"], "URL workdirs are not supported yet"),
        "negative temperature": (
            [*_text_args(root), "--mode=generate", "--temperature=-1"],
            "--temperature=-1.0",
        ),
        "top_k above the vocabulary": (
            [*_text_args(root), "--mode=generate", "--top_k=1000"],
            "--top_k=1000 must be in [0, 128]",
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
    "another global batch",
    "missing config file",
    "unknown config variant",
    "workdir is a file",
    "URL workdir",
    "negative temperature",
    "top_k above the vocabulary",
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
    assert "\\" not in lines[0]  # no escaped text
    assert _snapshot(trained / "work") == before
    assert not (trained / "never_trained").exists()


def test_eval_and_generate(trained):
    proc = _run(*_text_args(trained), "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "valid bpc" in proc.stdout and "test bpc" in proc.stdout
    assert "valid:" in proc.stderr and "test:" in proc.stderr  # a progress bar per split
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


def test_help_and_show_config_from_another_directory(tmp_path):
    """--help exits 0 and points at show_config; a config given by absolute path from another
    directory just works."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "lmjax.main", *a], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    proc = run("--help")
    assert proc.returncode == 0 and "--mode=show_config" in proc.stdout
    proc = run(f"--config={ROOT / 'configs' / 'sha_rnn.py'}:tiny", "--mode=show_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Variants" in proc.stdout and "batch_size: 8" in proc.stdout


def _long_run(workdir, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable, "-m", "lmjax.main", "--config=configs/sha_rnn.py:tiny",
        f"--workdir={workdir}", "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=5", "--config.train.eval_every=100000", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path, timeout=240):
    import time

    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert path.exists(), f"{path} never appeared"


def test_a_second_trainer_on_a_workdir_is_refused(tmp_path):
    """Two real processes: the second exits 2 naming the workdir and the holder's pid, and
    touches nothing; the lock goes with the holder (a third run after it resumes)."""
    import signal

    first = _long_run(tmp_path)
    try:
        _wait_for(tmp_path / "checkpoints" / "5")
        second = _run(f"--workdir={tmp_path}")
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in second.stderr
        assert str(tmp_path) in lines[0] and f"pid {first.pid}" in lines[0], lines
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: the OS releases the lock
        first.wait(timeout=60)
    third = _run(f"--workdir={tmp_path}", "--config.train.num_steps=1")
    assert third.returncode == 0 and "resuming from" in third.stdout, third.stderr[-2000:]


def test_ctrl_c_says_so_at_once_and_a_second_exits_without_saving(tmp_path):
    import signal
    import time

    proc = _long_run(tmp_path / "once", "--config.train.checkpoint_every=100000")
    _wait_for(tmp_path / "once" / "metrics.jsonl")
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert time.time() - sent < 30  # a step or two, one save (not a log interval's backlog)
    assert "stopping: saving a checkpoint after step" in err and "saved step" in out

    # The second signal must land while the first one's save runs. Too soon and the two are
    # one to Python (a signal that arrives again before its handler ran is delivered once); too
    # late and the save (tens of ms for the tiny model) is done. The gap that lands depends on
    # this machine's speed, so a few are tried, each on a fresh run.
    errs = []
    for i, gap in enumerate((0.05, 0.02, 0.15, 0.3)):
        proc = _long_run(tmp_path / f"twice{i}")
        _wait_for(tmp_path / f"twice{i}" / "checkpoints" / "5")
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
        assert "Traceback" not in err
        if "exiting now without saving; the last checkpoint is step" in err:
            break
        errs.append(err[-500:])
    else:
        raise AssertionError("no second signal exited without saving:\n" + "\n".join(errs))


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("train.keep_checkpoints", 0, "train.keep_checkpoints=0 must be at least 1"),
        ("train.eval_steps", 0, "train.eval_steps=0 must be positive, or -1"),
        ("eval.seq_len", 0, "eval.seq_len=0 must be positive"),
        ("model.dropout_rate", 1.0, "model.dropout_rate=1.0 must be in [0, 1)"),
        ("model.dropout_hidden", -0.1, "model.dropout_hidden=-0.1 must be in [0, 1)"),
        ("optim.learning_rate", -1e-3, "optim.learning_rate=-0.001 must be >= 0"),
        ("optim.learning_rate", float("nan"), "optim.learning_rate=nan must be >= 0"),
        ("eval.batch_size", 8 * 64, "the test split has"),  # test split shorter than a window
    ],
)
def test_values_that_would_lose_work_later_are_refused_first(tmp_path, field, value, needle):
    from lmjax.errors import UserError

    config = sha_config.get_config("tiny")
    if field == "eval.batch_size":  # valid passes, test does not: a text corpus built so
        for split, n in (("train", 2000), ("valid", 9000), ("test", 300)):
            (tmp_path / f"{split}.txt").write_text("abcdefgh" * n)
        config.data.update(name="text", train_path=str(tmp_path / "train.txt"))
        config.data.update(valid_path=str(tmp_path / "valid.txt"))
        config.data.update(test_path=str(tmp_path / "test.txt"))
        config.eval.seq_len = 16
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(UserError, match=re.escape(needle)):
        train.train_and_evaluate(config, tmp_path / "work")
    assert not (tmp_path / "work").exists()  # nothing was created


def test_generate_options_are_checked_before_the_checkpoint(tmp_path):
    from lmjax import generate
    from lmjax.errors import UserError

    config = sha_config.get_config("tiny")
    for options, needle in (
        ({"temperature": float("nan")}, "--temperature=nan"),
        ({"top_k": -1}, "--top_k=-1"),
        ({"length": 0}, "--length=0"),
        ({"num_samples": 0}, "--num_samples=0"),
    ):
        options = {"prompt": "a", "length": 4, "temperature": 1.0, "top_k": 0, **options}
        with pytest.raises(UserError, match=re.escape(needle)):
            generate.run_generate(config, tmp_path / "never", **options)


def test_read_only_workdir_is_one_line_for_train_and_eval(trained, monkeypatch, tmp_path):
    """(Simulated: the tests run as root, for whom every directory is writable.)"""
    from lmjax import evaluate
    from lmjax.errors import UserError

    real = os.access
    work = str(trained / "work")
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).startswith(work) else real(p, m))
    config = sha_config.get_config("tiny")
    config.data.update(name="text", valid_fraction=0.2)
    config.data.update(train_path=str(trained / "train.txt"), test_path=str(trained / "test.txt"))
    config.model.vocab_size = 128
    before = _snapshot(work)
    with pytest.raises(UserError, match="is not writable"):
        train.train_and_evaluate(config, work)
    with pytest.raises(UserError, match="is not writable: eval appends its results"):
        evaluate.run_eval(config, work)
    assert _snapshot(work) == before


def test_export_mistakes_are_one_line(trained, tmp_path):
    """lmjax.export: a model with nothing to prune, an --out that exists or has no directory;
    and a workdir whose config_overrides.json is broken: one line, exit 2, nothing written."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    before = _snapshot(trained / "work")
    base = [sys.executable, "-m", "lmjax.export", "--config=configs/sha_rnn.py:tiny"]
    base += _text_args(trained)
    cases = [
        (["--prune", f"--out={tmp_path / 'a'}"], "has nothing to prune"),
        (["--prune", f"--out={tmp_path}"], "exists; give a new directory"),
        ([f"--out={tmp_path}"], "exists; give a new file name"),
        ([f"--out={tmp_path / 'no' / 'a.npz'}"], "no directory"),
        ([f"--out={tmp_path / 'a'}", "--platforms=cpu,abacus"], "--platforms=cpu,abacus"),
    ]
    for extra, message in cases:
        r = subprocess.run(base + extra, cwd=ROOT, env=env, capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "a").exists() and _snapshot(trained / "work") == before
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config_overrides.json").write_text("{not json")
    r = _run(f"--workdir={bad}", "--mode=eval")
    assert r.returncode == 2 and "config_overrides.json: unreadable" in r.stderr.strip()
    assert len(r.stderr.strip().splitlines()) == 1


def test_exported_decoder_generates_what_the_workdir_generates(trained, tmp_path):
    """lmjax.export (no --prune) writes the one-step decoder; --mode=generate --exported=FILE
    needs no --config and prints the checkpoint's own greedy continuation; a file that is not
    a decoder is one line."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = tmp_path / "sha.npz"
    cmd = [sys.executable, "-m", "lmjax.export", "--config=configs/sha_rnn.py:tiny"]
    r = subprocess.run(cmd + _text_args(trained) + [f"--out={out}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "for cpu, cuda, tpu" in r.stdout and out.is_file(), r.stderr
    options = ["--mode=generate", "--prompt=the cat", "--length=50", "--temperature=0"]
    own = _run(*_text_args(trained), *options)
    gen = [sys.executable, "-m", "lmjax.main", f"--exported={out}", *options]
    exported = subprocess.run(gen, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert own.returncode == 0 and exported.returncode == 0, exported.stderr
    assert exported.stdout == own.stdout and exported.stdout.startswith("the cat")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    r = subprocess.run([*gen[:3], f"--exported={bad}", "--mode=generate"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "is not an lmjax decoder file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*gen, "--num_samples=2"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "an exported decoder samples one sequence" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
