"""Linear attention as fast weight programming: feature maps and the sum and delta rules.

Papers: Katharopoulos et al. 2020, "Transformers are RNNs" (arXiv 2006.16236: φ = elu + 1);
Choromanski et al. 2021, "Rethinking Attention with Performers" (arXiv 2009.14794: FAVOR+);
Schlag, Irie & Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers"
(arXiv 2102.11174: DPFP, the delta rule); Yang et al. 2024, "Parallelizing Linear Transformers
with the Delta Rule over Sequence Length" (arXiv 2406.06484: the chunkwise WY/UT form). The
definitions follow the reference code as specs/attention.md B.4-B.5 describe it.

Shape legend: b batch, h heads, t time, k feature (key) width d_k, v value width d_v,
n chunks, c / s positions within a chunk, m Performer features, d head width.

A fast weight W [b, h, k, v] is written by keys and values and read by queries:

  sum rule    W_t = W_{t-1} + k_t v_tᵀ                                    o_t = W_tᵀ q_t
  delta rule  u_t = β_t (v_t - W_{t-1}ᵀ k_t),  W_t = W_{t-1} + k_t u_tᵀ     o_t = W_tᵀ q_t

(read after write, as the reference's kernels do). Each rule has two computations with equal
numbers (tests/layers/linear_attention_test.py checks both against a float64 loop):

  recurrent   `lax.scan` over t on the [b, h, k, v] state. The custom VJPs walk time backwards
              and rebuild W_{t-1} from W_t by undoing the write (the reference's CUDA backward
              does the same), so the backward keeps O(1) matrices instead of one per step
              (the paper's appendix F). The delta rule saves the retrieved v̄_t = W_{t-1}ᵀ k_t
              (one [v] vector per step) to undo its write exactly.
  chunkwise   chunks of c positions: inside a chunk masked [c, c] matmuls, across chunks the
              state. The sum rule's chunk states are one cumulative sum (no loop at all); the
              delta rule's pseudo-values come from the UT transform
              T = (I + tril(diag(β) K Kᵀ, -1))⁻¹ diag(β) (one triangular solve per chunk, all
              chunks at once), then a `lax.scan` over chunks carries W with three matmuls each.
              Gradients by autodiff (one state per chunk is saved).

`impl="auto"` resolves per backend and rule from `AUTO_IMPL` (measured; see there).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

FEATURE_MAPS = ("softmax", "linear", "performer", "dpfp")
UPDATE_RULES = ("sum", "delta")
IMPLS = ("recurrent", "chunkwise")
# Measured on this project's 2-core CPU (forward + backward of one [8, 8, 256, 32] layer, jitted,
# the `cpu` shape; 2026-12-02): sum rule recurrent 17.4 ms, chunkwise 13.9 / 9.2 / 7.5 / 15.3 ms
# at chunk 16 / 32 / 64 / 128; delta rule recurrent 19.4 ms, chunkwise 41 / 58 / 120 ms at
# chunk 16 / 32 / 64 (the [c, c] UT products cost more than the scan saves on two cores). No
# GPU/TPU measurement yet: there the chunkwise form (matmuls, t/c sequential steps) is the
# known winner (Yang et al. 2024, Table 4), and it stays the choice until a benchmark says
# otherwise.
AUTO_IMPL = {
    "cpu": {"sum": "chunkwise", "delta": "recurrent"},
    "gpu": {"sum": "chunkwise", "delta": "chunkwise"},
    "tpu": {"sum": "chunkwise", "delta": "chunkwise"},
}


def resolve_impl(impl, rule):
    """'auto' -> the measured default of `rule` on the current backend; else checks the name."""
    if impl == "auto":
        return AUTO_IMPL.get(jax.default_backend(), AUTO_IMPL["gpu"])[rule]
    if impl not in IMPLS:
        raise ValueError(f"unknown fast-weight impl {impl!r}; allowed: auto, {', '.join(IMPLS)}")
    return impl


def scan_groups(num_heads):
    """'auto' number of independent recurrent scans per layer: on CPU the largest divisor of
    the head count up to the cores this process may use, elsewhere 1.

    XLA:CPU runs each scan's per-step matvecs as small single-threaded loops, but it runs
    independent loops at the same time: two scans of four heads each took the `cpu` delta
    model's training step from 465 to 446 ms on the 2-core CPU (in-process A/B, 16 steps each,
    2026-12-03; the layer alone at unroll 1: 34.1 to 25.9 ms, at unroll 8 no change, so the
    gain is the scans overlapping the rest of the step). GPU/TPU run the chunkwise forms.
    """
    if jax.default_backend() != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(g for g in range(1, min(num_heads, cores or 1) + 1) if num_heads % g == 0)


def _time_major_by_groups(scan, groups, w0, *xs):
    """Runs a recurrent form `scan(*xs_g, w0_g) -> (o_g, w_g)`, whose inputs are time-major
    ([t, b, h_g, ...]), on `groups` equal slices of the heads; xs are [b, h, t, ...], w0 and the
    returned state [b, h, ...], o [b, h, t, v]. One transpose per input at this boundary puts
    every group's slice contiguous ([g, t, b, h_g, ...]), and the custom VJPs' residuals and
    cotangents stay time-major (no transposes inside their forward and backward). The rules
    are independent per head, so any grouping is the same computation."""
    b, h, t = xs[0].shape[:3]
    groups = scan_groups(h) if groups is None else groups
    if h % groups:
        raise ValueError(f"{groups} scan groups do not divide {h} heads")
    hg = h // groups
    split = lambda x: x.reshape(b, groups, hg, *x.shape[2:])
    xs = [jnp.moveaxis(split(x), (1, 3), (0, 1)) for x in xs]  # [g, t, b, h_g, ...]
    w0 = jnp.moveaxis(split(w0), 1, 0)  # [g, b, h_g, ...]
    outs = [scan(*(x[i] for x in xs), w0[i]) for i in range(groups)]
    o, w = (jnp.stack(parts) for parts in zip(*outs, strict=True))
    o = jnp.moveaxis(o, (0, 1), (1, 3)).reshape(b, h, t, *o.shape[4:])
    return o, jnp.moveaxis(w, 0, 1).reshape(b, h, *w.shape[3:])


# -- feature maps (B.4) ------------------------------------------------------------------------


def feature_dim(feature_map, head_dim, proj_dim=16, n_roll=2):
    """dim φ: d (linear), 2m (performer), 2dν (dpfp)."""
    if feature_map == "linear":
        return head_dim
    if feature_map == "performer":
        return 2 * proj_dim
    if feature_map == "dpfp":
        return 2 * head_dim * n_roll
    raise ValueError(f"feature map {feature_map!r} has no feature dimension")


def elu_p1(x):
    """φ(x) = elu(x) + 1 (Katharopoulos et al.)."""
    return jax.nn.elu(x) + 1.0


def dpfp(x, n_roll):
    """Deterministic parameter-free projection: u = [relu(x); relu(-x)] ∈ ℝ^{2d},
    φ = concat_{i=1..ν} u ⊙ roll(u, i) ∈ ℝ^{2dν} (roll with wrap-around, torch.roll's sense:
    roll(u, i)_j = u_{(j - i) mod 2d}).

    Computed as relu(x A) ⊙ relu(x B) with constant signed-selection matrices A, B [d, 2dν]
    (every column picks one ±x_j, so the product is exact at HIGHEST precision): the
    concatenate-and-roll form is the same numbers, but XLA:CPU fuses those slices into every
    consumer of φ and its backward, forward and backward, and recomputes them there; the whole
    training step of `fast_weights.py:cpu,attn=dpfp` took 742 ms with it, 556 ms with the
    matmul (in-process A/B on the 2-core CPU, 2026-12-03)."""
    d = x.shape[-1]
    eye = np.eye(d, dtype=np.float32)
    signed = np.concatenate([eye, -eye], axis=1)  # u = relu(x @ signed)
    a = np.concatenate([signed] * n_roll, axis=1)
    b = np.concatenate([np.roll(signed, i, axis=1) for i in range(1, n_roll + 1)], axis=1)
    sel = jnp.asarray(np.concatenate([a, b], axis=1), x.dtype)
    y = jax.nn.relu(jnp.einsum("...d,df->...f", x, sel, precision=jax.lax.Precision.HIGHEST))
    return y[..., : a.shape[1]] * y[..., a.shape[1] :]


def favor_plus(x, proj):
    """FAVOR+ positive random features as the reference's `prime` computes them.

    φ(x) = (2m)^{-1/2} ([exp(xP - ‖x‖²/2); exp(-xP - ‖x‖²/2)] + 1e-4): no d^{-1/4} prescale
    of x, so φ(q)·φ(k) approximates exp(q·k), not exp(q·k/√d).

    Args:
      x: [..., d]; proj: P [d, m].
    Returns:
      [..., 2m] float32.
    """
    m = proj.shape[-1]
    offset = -0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    u = jnp.einsum("...d,dm->...m", x, proj)
    out = jnp.concatenate([jnp.exp(offset + u), jnp.exp(offset - u)], axis=-1) + 1e-4
    return out * (2 * m) ** -0.5


def orthogonal_random_matrix(key, d, m):
    """P [d, m] as the reference's `draw_orthogonal_random_matrix(d, m)` builds it.

    ⌊d/m⌋ blocks Qᵀ (Q the QR factor of an m x m Gaussian), then the first d mod m rows of one
    more, stacked to d rows; row i is then scaled by ‖g_i‖, g_i ~ N(0, I_m) (the χ_m norms scale
    the input dimensions, not the features). The draws differ from torch's for the same seed.
    """
    full, rest = divmod(d, m)
    keys = jax.random.split(key, full + 2)
    blocks = []
    for i in range(full + (rest > 0)):
        q, _ = jnp.linalg.qr(jax.random.normal(keys[i], (m, m), jnp.float32))
        blocks.append(q.T)
    mat = jnp.concatenate(blocks, axis=0)[:d]
    scale = jnp.linalg.norm(jax.random.normal(keys[-1], (d, m), jnp.float32), axis=1)
    return scale[:, None] * mat


def sum_norm(x):
    """x / Σx over the feature axis (no eps, as the reference's delta layers)."""
    return x / jnp.sum(x, axis=-1, keepdims=True)


# -- the sum rule ------------------------------------------------------------------------------


# The recurrent forms below take and return time-major sequences ([t, b, h, ...]: what
# `lax.scan` walks), so the custom VJPs' residuals and cotangents need no transposes of their
# own; `_time_major_by_groups` transposes once at the boundary.


def _sum_forward(q, k, v, w0, unroll=1):
    def step(w, x):
        q_t, k_t, v_t = x
        w = w + jnp.einsum("bhk,bhv->bhkv", k_t, v_t)
        return w, jnp.einsum("bhk,bhkv->bhv", q_t, w)

    w, o = jax.lax.scan(step, w0, (q, k, v), unroll=unroll)
    return o, w


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sum_recurrent(q, k, v, w0, unroll):
    return _sum_forward(q, k, v, w0, unroll)


def _sum_fwd(q, k, v, w0, unroll):
    o, w = _sum_forward(q, k, v, w0, unroll)
    return (o, w), (q, k, v, w)  # the final state only: the backward rebuilds the others


def _sum_bwd(unroll, res, cot):
    q, k, v, w_last = res
    do, dw_last = cot

    def step(state, x):
        w, dw = state  # W_t and ∂L/∂W_t from the steps after t
        q_t, k_t, v_t, do_t = x
        dq = jnp.einsum("bhkv,bhv->bhk", w, do_t)
        dw = dw + jnp.einsum("bhk,bhv->bhkv", q_t, do_t)
        dk = jnp.einsum("bhkv,bhv->bhk", dw, v_t)
        dv = jnp.einsum("bhkv,bhk->bhv", dw, k_t)
        w = w - jnp.einsum("bhk,bhv->bhkv", k_t, v_t)  # undo the write: W_{t-1}
        return (w, dw), (dq, dk, dv)

    (_, dw0), (dq, dk, dv) = jax.lax.scan(
        step, (w_last, dw_last), (q, k, v, do), reverse=True, unroll=unroll
    )
    return dq, dk, dv, dw0


_sum_recurrent.defvjp(_sum_fwd, _sum_bwd)


def _pad_time(chunk, *xs):
    t = xs[0].shape[2]
    pad = -t % chunk
    if not pad:
        return xs
    return tuple(jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3)) for x in xs)


def _chunks(chunk, *xs):
    """[b, h, t, ...] -> [b, h, n, c, ...] (t already a multiple of c)."""
    return tuple(x.reshape(x.shape[0], x.shape[1], -1, chunk, *x.shape[3:]) for x in xs)


def _sum_chunkwise(q, k, v, w0, chunk, z0=None):
    t = q.shape[2]
    q, k, v = _chunks(chunk, *_pad_time(chunk, q, k, v))  # zero keys/values write nothing
    kv = jnp.einsum("bhnck,bhncv->bhnkv", k, v)
    total = jnp.cumsum(kv, axis=2)
    states = w0[:, :, None] + total - kv  # the state each chunk starts from
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))  # read after write: s <= c
    scores = jnp.where(causal, jnp.einsum("bhnck,bhnsk->bhncs", q, k), 0.0)
    o = jnp.einsum("bhnck,bhnkv->bhncv", q, states) + jnp.einsum("bhncs,bhnsv->bhncv", scores, v)
    o = o.reshape(o.shape[0], o.shape[1], -1, o.shape[-1])[:, :, :t]
    if z0 is None:
        return o, w0 + total[:, :, -1]
    return (o, w0 + total[:, :, -1], *_chunk_normaliser(q, k, scores, z0, t))


def _chunk_normaliser(q, k, scores, z0, t):
    """q_t·z_t, z_t = z0 + Σ_{τ≤t} k_τ, from chunked q, k [b, h, n, c, k] and their causal
    scores [b, h, n, c, c]: q_t·z_t = q_t·z_(chunk start) + Σ_{s≤c} q_c·k_s (the row sums).
    Returns (qz [b, h, t], z_T [b, h, k])."""
    k_sum = jnp.sum(k, axis=3)  # [b, h, n, k]
    z_total = jnp.cumsum(k_sum, axis=2)
    qz = jnp.einsum("bhnck,bhnk->bhnc", q, z0[:, :, None] + z_total - k_sum) + scores.sum(-1)
    return qz.reshape(qz.shape[0], qz.shape[1], -1)[:, :, :t], z0 + z_total[:, :, -1]


def normaliser(q, k, z0, *, chunk=64, time_major=False):
    """The linear-attention normaliser alone: (q_t·z_t [b, h, t], z_T [b, h, k]) with
    z_t = z0 + Σ_{τ≤t} k_τ (read after write), for rules whose own state is not the sum
    rule's (the delta rule's normaliser sums the unweighted keys). With `time_major`, q and k
    are [t, b, h, k] and q_t·z_t comes back [t, b, h].

    z_t itself, chunkwise: inside a chunk a running sum as one matmul with a lower-triangular
    ones matrix, across chunks a cumulative sum of the chunk totals; then q_t·z_t elementwise.
    (The [c, c] scores and their row sums, as `_sum_chunkwise` has them for free, cost 3.9 ms
    forward + backward at [8, 8, 256, 32] against 2.2 ms for this on the 2-core CPU; a plain
    `jnp.cumsum` over t 3.2 ms.)"""
    q, k, z0 = (x.astype(jnp.float32) for x in (q, k, z0))
    ax = 0 if time_major else 2  # the time axis; it becomes (chunk n, position c) at ax, ax + 1
    t = q.shape[ax]
    pad = [(0, -t % chunk) if i == ax else (0, 0) for i in range(q.ndim)]  # zero keys add nothing
    q, k = (jnp.pad(x, pad).reshape(*x.shape[:ax], -1, chunk, *x.shape[ax + 1 :]) for x in (q, k))
    ones = jnp.tril(jnp.ones((chunk, chunk), jnp.float32))
    if time_major:  # chunks as a batch dimension of both operands: no transposes around the dot
        ones = jnp.broadcast_to(ones, (k.shape[0], chunk, chunk))
        running = jnp.einsum("ncs,nsbhk->ncbhk", ones, k)  # Σ_{s≤c} k_s inside each chunk
    else:
        running = jnp.einsum("cs,bhnsk->bhnck", ones, k)
    totals = jax.lax.index_in_dim(running, chunk - 1, ax + 1, keepdims=False)
    start = jnp.expand_dims(z0, ax) + jnp.cumsum(totals, axis=ax) - totals  # z before each chunk
    qz = jnp.einsum("...k,...k->...", q, running + jnp.expand_dims(start, ax + 1))
    qz = jax.lax.slice_in_dim(qz.reshape(*qz.shape[:ax], -1, *qz.shape[ax + 2 :]), 0, t, axis=ax)
    last = lambda x: jax.lax.index_in_dim(x, x.shape[ax] - 1, ax, keepdims=False)
    return qz, last(start) + last(totals)


def sum_rule(q, k, v, w0=None, *, impl="auto", chunk=64, unroll=1, z0=None, groups=None):
    """The sum rule: o_t = W_tᵀ q_t, W_t = W_{t-1} + k_t v_tᵀ.

    Args:
      q, k: [b, h, t, k] features; v: [b, h, t, v]; w0: [b, h, k, v] initial state (None: 0).
      impl: 'recurrent', 'chunkwise' or 'auto'; chunk: positions per chunk (chunkwise);
      unroll: time steps per loop iteration of the recurrent form's scans.
      groups: independent scans over slices of the heads (recurrent form; None: `scan_groups`).
      z0: None, or [b, h, k], the normaliser's state: then also q_t·z_t with
        z_t = z0 + Σ_{τ≤t} k_τ. Chunkwise, it reuses the chunk's scores (row sums); recurrent,
        it is one more value column of ones. (A column of ones in the chunkwise matmuls too
        makes them 33 wide at head_dim 32, which XLA:CPU runs markedly slower.)
    Returns:
      (o [b, h, t, v], W_t [b, h, k, v]), float32; with z0 also qz [b, h, t] and z_t [b, h, k].
    """
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    if w0 is None:
        w0 = jnp.zeros((*q.shape[:2], q.shape[-1], v.shape[-1]), jnp.float32)
    if resolve_impl(impl, "sum") == "chunkwise":
        return _sum_chunkwise(q, k, v, w0, chunk, z0)
    scan = lambda *xs: _sum_recurrent(*xs, unroll)
    if z0 is None:
        return _time_major_by_groups(scan, groups, w0, q, k, v)
    ones = jnp.ones((*v.shape[:3], 1), jnp.float32)
    w0 = jnp.concatenate([w0, z0.astype(jnp.float32)[..., None]], axis=-1)
    o, w = _time_major_by_groups(scan, groups, w0, q, k, jnp.concatenate([v, ones], -1))
    return o[..., :-1], w[..., :-1], o[..., -1], w[..., -1]


# -- the delta rule ----------------------------------------------------------------------------


def _delta_forward(q, k, v, beta, w0, unroll=1):
    def step(w, x):
        q_t, k_t, v_t, b_t = x
        v_old = jnp.einsum("bhk,bhkv->bhv", k_t, w)  # retrieve, then replace by β
        w = w + jnp.einsum("bhk,bhv->bhkv", k_t, b_t[..., None] * (v_t - v_old))
        return w, (jnp.einsum("bhk,bhkv->bhv", q_t, w), v_old)

    w, (o, v_old) = jax.lax.scan(step, w0, (q, k, v, beta), unroll=unroll)
    return o, w, v_old


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _delta_recurrent(q, k, v, beta, w0, unroll):
    o, w, _ = _delta_forward(q, k, v, beta, w0, unroll)
    return o, w


def _delta_fwd(q, k, v, beta, w0, unroll):
    o, w, v_old = _delta_forward(q, k, v, beta, w0, unroll)
    return (o, w), (q, k, v, beta, v_old, w)


def _delta_bwd(unroll, res, cot):
    q, k, v, beta, v_old, w_last = res
    do, dw_last = cot

    def step(state, x):
        w, dw = state  # W_t and ∂L/∂W_t from the steps after t
        q_t, k_t, v_t, b_t, vo_t, do_t = x
        diff = v_t - vo_t
        u = b_t[..., None] * diff
        dq = jnp.einsum("bhkv,bhv->bhk", w, do_t)
        dw = dw + jnp.einsum("bhk,bhv->bhkv", q_t, do_t)  # ∂L/∂W_t, all of it
        du = jnp.einsum("bhkv,bhk->bhv", dw, k_t)
        w_prev = w - jnp.einsum("bhk,bhv->bhkv", k_t, u)  # undo the write: W_{t-1}
        dv_old = -b_t[..., None] * du
        dk = jnp.einsum("bhkv,bhv->bhk", dw, u) + jnp.einsum("bhkv,bhv->bhk", w_prev, dv_old)
        dw = dw + jnp.einsum("bhk,bhv->bhkv", k_t, dv_old)
        return (w_prev, dw), (dq, dk, b_t[..., None] * du, jnp.sum(du * diff, axis=-1))

    (_, dw0), (dq, dk, dv, dbeta) = jax.lax.scan(
        step, (w_last, dw_last), (q, k, v, beta, v_old, do), reverse=True, unroll=unroll
    )
    return dq, dk, dv, dbeta, dw0


_delta_recurrent.defvjp(_delta_fwd, _delta_bwd)


def _unit_lower_inverse(n):
    """(I + N)⁻¹ for strictly lower-triangular N [..., c, c], by matmuls only.

    N is nilpotent (N^c = 0), so (I + N)⁻¹ = Σ_i (-N)^i = Π_j (I + (-N)^(2^j)), j < ⌈log₂ c⌉:
    2⌈log₂ c⌉ batched [c, c] matmuls, which every backend runs well. (XLA:CPU's batched
    triangular solve is a loop over tiny matrices: 3-4x slower for the whole delta-rule
    step at the `cpu` shape.)"""
    c = n.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(c, dtype=n.dtype), n.shape)
    power = -n
    out = eye + power
    for _ in range(max(0, (c - 1).bit_length() - 1)):
        power = jnp.einsum("...ij,...jk->...ik", power, power)
        out = jnp.einsum("...ij,...jk->...ik", out, eye + power)
    return out


def _delta_chunkwise(q, k, v, beta, w0, chunk):
    t = q.shape[2]
    q, k, v, beta = _chunks(chunk, *_pad_time(chunk, q, k, v, beta))  # β = 0 writes nothing
    # Inside a chunk from state S: u = T (V - K S) with T = (I + tril(diag(β) K Kᵀ, -1))⁻¹ diag(β),
    # so T V and T K are the same for every S and are computed for all chunks at once.
    strict = jnp.tril(jnp.ones((chunk, chunk), bool), -1)
    kk = jnp.einsum("bhnck,bhnsk->bhncs", k, k)
    inv = _unit_lower_inverse(jnp.where(strict, beta[..., None] * kk, 0.0))
    rhs = beta[..., None] * jnp.concatenate([v, k], axis=-1)  # diag(β) [V | K]
    solved = jnp.einsum("bhncs,bhnsx->bhncx", inv, rhs)
    tv, tk = solved[..., : v.shape[-1]], solved[..., v.shape[-1] :]
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))
    scores = jnp.where(causal, jnp.einsum("bhnck,bhnsk->bhncs", q, k), 0.0)

    def step(w, x):
        q_n, k_n, tv_n, tk_n, s_n = x  # one chunk: [b, h, c, ...]
        u = tv_n - jnp.einsum("bhck,bhkv->bhcv", tk_n, w)
        o = jnp.einsum("bhck,bhkv->bhcv", q_n, w) + jnp.einsum("bhcs,bhsv->bhcv", s_n, u)
        return w + jnp.einsum("bhck,bhcv->bhkv", k_n, u), o

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, tv, tk, scores))
    w, o = jax.lax.scan(step, w0, xs)
    o = jnp.moveaxis(o, 0, 2)
    return o.reshape(o.shape[0], o.shape[1], -1, o.shape[-1])[:, :, :t], w


def delta_rule(
    q, k, v, beta, w0=None, *, impl="auto", chunk=64, unroll=1, groups=None, time_major=False
):
    """The delta rule: u_t = β_t (v_t - W_{t-1}ᵀ k_t), W_t = W_{t-1} + k_t u_tᵀ, o_t = W_tᵀ q_t.

    Args:
      q, k: [b, h, t, k] features; v: [b, h, t, v]; beta: [b, h, t] write strengths;
      w0: [b, h, k, v] initial state (None: 0).
      impl: 'recurrent', 'chunkwise' or 'auto'; chunk: positions per chunk (chunkwise);
      unroll: time steps per loop iteration of the recurrent form's scans.
      groups: independent scans over slices of the heads (recurrent form; None: `scan_groups`).
      time_major: q, k, v, beta and o are [t, b, h, ...] instead (w0 and W_t are not): what
        the recurrent scan walks, for callers that produce that layout directly; the recurrent
        form then runs one scan over all the given heads (the caller groups them).
    Returns:
      (o [b, h, t, v], W_t [b, h, k, v]), float32.
    """
    q, k, v, beta = (x.astype(jnp.float32) for x in (q, k, v, beta))
    b_axis, h_axis = (1, 2) if time_major else (0, 1)
    if w0 is None:
        w0 = jnp.zeros((q.shape[b_axis], q.shape[h_axis], q.shape[-1], v.shape[-1]), jnp.float32)
    recurrent = resolve_impl(impl, "delta") == "recurrent"
    if time_major and recurrent:
        return _delta_recurrent(q, k, v, beta, w0, unroll)
    if time_major:
        q, k, v, beta = (jnp.moveaxis(x, 0, 2) for x in (q, k, v, beta))
        o, w = _delta_chunkwise(q, k, v, beta, w0, chunk)
        return jnp.moveaxis(o, 2, 0), w
    if recurrent:
        scan = lambda *xs: _delta_recurrent(*xs, unroll)
        return _time_major_by_groups(scan, groups, w0, q, k, v, beta)
    return _delta_chunkwise(q, k, v, beta, w0, chunk)
