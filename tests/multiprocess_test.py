"""Two processes with 4 devices each train exactly like one process with 8 devices."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from lmjax import writers

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/sha_rnn.py:tiny", "--config.train.num_steps=3"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices):
    flags = f"--xla_force_host_platform_device_count={devices}"
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)


def _losses(workdir):
    return [e["loss"] for e in writers.read_metrics(workdir) if e["split"] == "train"]


def test_two_processes_equal_one(tmp_path):
    cmd = [sys.executable, "-m", "lmjax.main", *ARGS]
    one = subprocess.run(
        [*cmd, f"--workdir={tmp_path / 'one'}"],
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]

    address = f"127.0.0.1:{_free_port()}"
    # Output goes to files: a pipe that one process fills while we wait on the other would
    # block it inside a collective and deadlock both.
    flags = [f"--workdir={tmp_path / 'two'}", f"--coordinator_address={address}"]
    procs, logs = [], [tmp_path / f"log{i}" for i in range(2)]
    for i in range(2):
        with open(logs[i], "w") as log:
            procs.append(
                subprocess.Popen(
                    [*cmd, *flags, "--num_processes=2", f"--process_id={i}"],
                    cwd=ROOT,
                    env=_env(4),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    for p, log in zip(procs, logs, strict=True):
        p.wait(timeout=300)
        assert p.returncode == 0, log.read_text()[-3000:]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-6)
    assert len(_losses(tmp_path / "one")) == 3
    assert (tmp_path / "two" / "checkpoints" / "3").is_dir()
