"""Metric output: one JSON object per event in `metrics.jsonl`, plus TensorBoard event files.

TensorBoard files are written with tensorboardX, which needs no TensorFlow (clu's and flax's
summary writers import TensorFlow, which lmjax does not depend on).
"""

import json
import os

import jax


class MetricWriter:
    """Appends events to workdir/metrics.jsonl and workdir/tensorboard/ (process 0 only)."""

    def __init__(self, workdir, tensorboard=True, resume_step=None):
        """With `resume_step` (a run resuming from that step's checkpoint), rows of later steps,
        logged by the run that was cut short and about to be logged again, move from
        metrics.jsonl to metrics.superseded.jsonl, so each step appears once."""
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if resume_step is not None:
                _set_aside_after(self.path, resume_step)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

    def write(self, step, split, **scalars):
        if not self.enabled:
            return
        event = {"step": int(step), "split": split}
        event.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def close(self):
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir):
    """The events of workdir/metrics.jsonl as a list of dicts."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _set_aside_after(path, step):
    """Moves the rows of metrics.jsonl with a step above `step` to metrics.superseded.jsonl."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep, later = [], []
    for line in lines:
        try:
            row_step = json.loads(line).get("step", 0)
        except ValueError:  # a torn last line from a killed run
            row_step = step + 1
        (later if row_step > step else keep).append(line)
    if not later:
        return
    with open(path.replace("metrics.jsonl", "metrics.superseded.jsonl"), "a") as f:
        f.writelines(later)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)
