"""The timing loop and timing fields the reference drivers' `bench` modes share (torch side)."""

import math
import resource
import statistics
import sys
import time


def add_timing_args(ap):
    """The timing flags every driver's bench mode takes, with the same defaults."""
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, help="profile this many extra steps (stderr)")


def set_threads(n):
    """torch.set_num_threads(n), or torch's own default for 0."""
    if n:
        import torch

        torch.set_num_threads(n)


def time_steps(step, batches, warmup, steps, profile=0, label=""):
    """Runs `step(batch)` on warmup + steps batches, timing the last `steps`, then `profile`
    more under torch.profiler (its table to stderr). Exits on a non-finite loss.

    Returns (step times in seconds, the last timed step's loss as a float)."""
    times, loss = [], math.nan
    for i, batch in enumerate(batches[: warmup + steps]):
        t0 = time.perf_counter()
        loss = float(step(batch))  # torch on CPU is synchronous: the step is done here
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if not math.isfinite(loss):
            sys.exit(f"{label}non-finite loss at step {i}: {loss}")
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches[warmup + steps : warmup + steps + profile]:
                step(batch)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        print(f"{label}{profile} steps:\n{table}", file=sys.stderr)
    return times, loss


def timing_fields(times, tokens_per_step, loss):
    """The JSON fields every driver prints: median and min step, tokens/s, peak RSS, loss."""
    median = statistics.median(times)
    return {
        "step_ms_median": round(1000 * median, 2),
        "step_ms_min": round(1000 * min(times), 2),
        "tokens_per_sec": round(tokens_per_step / median, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_loss": round(loss, 4),
    }
