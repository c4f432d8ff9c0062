"""Two processes with 4 devices each train exactly like one process with 8 devices."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def one_process_losses(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    cmd = [sys.executable, "-m", "lmjax.main", *ARGS, f"--workdir={workdir}"]
    one = subprocess.run(cmd, cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert len(_losses(workdir)) == 3
    return _losses(workdir)


def _two_processes(workdir, flags, envs):
    """Runs two processes (4 devices each) to the end; output goes to files: a pipe that one
    process fills while we wait on the other would block it inside a collective and deadlock
    both."""
    cmd = [sys.executable, "-m", "lmjax.main", *ARGS, f"--workdir={workdir}"]
    procs, logs = [], [workdir.parent / f"{workdir.name}.log{i}" for i in range(2)]
    for i in range(2):
        with open(logs[i], "w") as log:
            procs.append(
                subprocess.Popen(
                    [*cmd, *flags(i)],
                    cwd=ROOT,
                    env=envs(i),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
    try:
        for p in procs:
            p.wait(timeout=600)  # a loaded CI machine: two processes of 4 fake devices on 2 cores
    except subprocess.TimeoutExpired:
        pass  # the logs below say where they stood; neither is left running into later tests
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i}: {log.read_text()[-3000:]}"
    assert (workdir / "checkpoints" / "3").is_dir()
    return _losses(workdir)


def test_two_processes_equal_one(tmp_path, one_process_losses):
    address = f"127.0.0.1:{_free_port()}"
    flags = lambda i: [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"]
    two = _two_processes(tmp_path / "two", flags, lambda i: _env(4))
    np.testing.assert_allclose(two, one_process_losses, rtol=1e-6)


def test_two_slurm_tasks_equal_one(tmp_path, one_process_losses):
    """What launch/slurm.sbatch's srun starts: no coordinator flags, --distributed=auto, and
    SLURM's environment for jax.distributed.initialize() to read (here one node, localhost;
    a free port instead of the one jax derives from the job id)."""
    port = str(_free_port())
    slurm = lambda i: dict(
        _env(4), SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
        SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_STEP_NUM_NODES="1",
        JAX_COORDINATOR_PORT=port,
    )  # fmt: skip
    two = _two_processes(tmp_path / "slurm", lambda i: ["--distributed=auto"], slurm)
    np.testing.assert_allclose(two, one_process_losses, rtol=1e-6)


def test_one_process_checkpoint_resumes_on_two(tmp_path, one_process_losses):
    """Elastic resume across processes: 2 steps in one process (8 devices), then the same
    workdir in two processes (4 devices each) to step 3: the uninterrupted run's losses."""
    workdir = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "lmjax.main", *ARGS, "--config.train.num_steps=2"]
    one = subprocess.run([*cmd, f"--workdir={workdir}"], cwd=ROOT, env=_env(8),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    address = f"127.0.0.1:{_free_port()}"
    flags = lambda i: [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"]
    two = _two_processes(workdir, flags, lambda i: _env(4))
    np.testing.assert_allclose(two, one_process_losses, rtol=1e-6)
