"""Matmul FLOPs of a step, counted from its jaxpr with every `lax.scan` body times its length,
and the machine's measured float32 matmul peak (`python -m lmjax.bench --peak`, cached).

Why not XLA's cost analysis (`compiled.cost_analysis()["flops"]`): it counts a while loop's
body once, whatever the trip count. Measured here (jax 0.10.2, CPU): a 100-step scan of an
[8, 256] x [256, 256] matmul reports 1.26 MFLOP, one step's worth of the 105 MFLOP it runs. Every
recurrent family (LSTM, SRU, fast weights) runs its time steps in a scan, so XLA's figure would
make them look 100x cheaper than they are. The jaxpr still has the scans with their lengths.

What is counted: `dot_general` (2 x output elements x contracted size), the work a matmul peak
measures; elementwise and reduction work is not (it is cheap in FLOPs, though not always in
time: the peak fraction of a recurrence is low for that reason). A `while_loop` (unknown trip
count; beam search, never in a training step) counts its body once and says so in `loops`.
"""

import json
import math
import os
import time

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from lmjax import machine


def _dot_flops(eqn):
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _subjaxprs(value):
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def count(jaxpr, loops=None):
    """Matmul FLOPs of one run of `jaxpr` (a Jaxpr); `loops` (a list) collects the while loops
    counted once."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * count(eqn.params["jaxpr"].jaxpr, loops)
        elif name == "cond":  # the costlier branch
            total += max(count(b.jaxpr, loops) for b in eqn.params["branches"])
        else:
            if name == "while" and loops is not None:
                loops.append(str(eqn.source_info.name_stack) or "while")
            for value in eqn.params.values():  # pjit, remat, custom_jvp/vjp, shard_map, while
                for sub in _subjaxprs(value):
                    total += count(sub, loops)
    return total


def step_flops(fn, *args):
    """(matmul FLOPs of one call of `fn(*args)`, while loops counted once)."""
    loops = []
    closed = jax.make_jaxpr(fn)(*args)
    return count(closed.jaxpr, loops), loops


def _cache_path():
    root = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return os.path.join(root, "lmjax", "matmul_peak.json")


def _machine_key():
    """backend/device kind/CPUs, and on the CPU backend the CPU's model and vector unit: a home
    directory that moves to another CPU (this project's machines have been both AVX-512 and
    AVX2 parts, 4x apart) must not read the other one's peak."""
    d = jax.devices()[0]
    key = f"{jax.default_backend()}/{d.device_kind}/{os.cpu_count()} cpus"
    return f"{key}/{machine.cpu_name()}" if jax.default_backend() == "cpu" else key


def measure_peak(n=2048, repeats=7):
    """The best float32 GFLOP/s of an n x n x n matmul on the default device (one device: the
    fake CPU devices of the tests share the same cores), after a compile and a warm-up."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(mm(a, b))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def peak_gflops(measure=False):
    """The cached peak of this machine (backend, device kind, CPU count), measuring and caching
    it when asked or when none is cached."""
    path, key = _cache_path(), _machine_key()
    cache = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
    if measure or key not in cache:
        cache[key] = round(measure_peak(), 1)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f, indent=1)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: the figure is still measured, just not kept
    return cache[key], key
