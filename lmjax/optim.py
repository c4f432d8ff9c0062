"""Optimizers and learning-rate schedules, built from the `optim` config section.

`make_optimizer(config.optim)` returns `(tx, schedule)`; gradient accumulation lives in the train
step, not here. Beyond optax's stock optimizers, two papers need their own update rules:

* LAMB with a minimum trust ratio (Smerity/pytorch-lamb, the variant SHA-RNN trains with;
  Merity 2019, "Single Headed Attention RNN", arXiv 1911.11423) -> `lamb_min_trust`. For every
  parameter tensor w with gradient g:
      m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2        (no bias correction)
      u  = m / (sqrt(v) + eps) + wd w                       (weight decay inside the trust ratio)
      phi = clamp(|w|, 0, max_weight_norm)
      r  = 1 if phi == 0 or |u| == 0 else phi / |u|;  r = max(r, min_trust)
      w <- w - lr r u
  `optax.lamb` is not used because it bias-corrects m and v, does not clamp |w|, and has no
  minimum trust ratio; each changes the early steps SHA-RNN's recipe depends on.
* Adagrad with a per-tensor step-size clip (Adaptive-Span, Sukhbaatar et al. 2019,
  arXiv 1905.07799, `adagrad_with_grad_clip.py`) -> `adagrad_per_tensor_clip`. Each tensor's
  step size is scaled by c / |g| when |g| > c; there is no global-norm clip.

* RAdam with decoupled weight decay (LiyuanLucasLiu/RAdam `radam.py` as of early 2021, which
  the SRU++ scripts import; Liu et al. 2020, arXiv 1908.03265) -> `radam_decoupled`. Per tensor,
  at step t (1-based):
      m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
      rho_inf = 2/(1-b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
      rho_t >= 5:  s = sqrt((1-b2^t)(rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
                       / (1-b1^t);   w <- w - lr wd w - lr s m / (sqrt(v) + eps)
      otherwise:   w <- w - lr wd w - lr m / (1-b1^t)      (SGD with momentum, t <= 5)
  `optax.radam` differs: eps is added to the bias-corrected sqrt(v), the first steps are
  Adam's bias-corrected momentum, and it has no decoupled decay.

Schedules (`make_schedule`) all start with a linear warmup, then `constant`, `cosine`, `rsqrt`
or `cosine_torch`: the SRU++ recipe, where the warmup overrides the learning rate and PyTorch's
recursive CosineAnnealingLR (T = decay_steps, eta_min = 0) continues from the last overridden
value, lr(t) = lr_max (1 + cos(pi t / T)) / (1 + cos(pi (W-1) / T)) for t >= W.
`cosine_torch_wt103` is SRU++'s train_wt103.py, whose warmup counts from 0 (lr_max t / W, so
the first update uses lr 0) and whose cosine therefore continues from lr_max (W-1) / W (B7).
`cosine_txl` is Transformer-XL's train.py as lmtool-fwms runs it (specs/attention.md B.8): the
lr is written *after* each update, so update 0 uses the full lr_max, update c < W uses
lr_max c / W, and from W on lr_max (1 + cos(pi c / T)) / 2 with T = decay_steps counted from
update 0 (the warmup is not subtracted) and floor 0.
"""

import fnmatch
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmjax.errors import UserError

SCHEDULES = ("constant", "cosine", "rsqrt", "cosine_torch", "cosine_torch_wt103", "cosine_txl")
OPTIMIZERS = ("lamb", "adam", "adamw", "adagrad", "sgd", "radam")


def make_schedule(optim_cfg) -> optax.Schedule:
    """Returns `count -> lr` (float32), where optax's `count` is 0 for the first update.

    Internally step = count + 1, so the first update gets learning_rate / warmup_steps. This
    matches both references: SHA-RNN's step counter starts at 1, and Adaptive-Span's LambdaLR
    `scheduler.step()` runs before `optimizer.step()`.
    """
    lr_max = float(optim_cfg.learning_rate)
    warmup = int(optim_cfg.warmup_steps)
    name = optim_cfg.schedule
    if name not in SCHEDULES:
        raise UserError(f"unknown optim.schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    torch_cos = name in ("cosine_torch", "cosine_torch_wt103")
    if name in ("cosine", "cosine_txl") or torch_cos:
        if "decay_steps" not in optim_cfg:
            raise UserError(
                f"optim.schedule={name!r} needs optim.decay_steps (the step at which "
                "the cosine reaches its floor)"
            )
        decay_steps = int(optim_cfg.decay_steps)
        if decay_steps <= warmup:
            raise UserError(
                f"optim.decay_steps ({decay_steps}) must exceed optim.warmup_steps ({warmup})"
            )
        min_ratio = float(optim_cfg.min_lr_ratio)
        # cosine_torch: the recursion's value at t = W - 1 is the warmup's last lr (B7).
        torch_norm = 1.0 + math.cos(math.pi * (warmup - 1) / decay_steps) if warmup else 2.0

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        # W = 0 means no warmup: the factor is 1 from the first step.
        ramp = jnp.minimum(step, warmup) / warmup if warmup > 0 else jnp.float32(1.0)
        if name == "cosine_torch_wt103" and warmup > 0:
            ramp = (step - 1.0) / warmup  # lr_max t / W with t = count: the first update is 0
        if name == "cosine_txl":
            c = jnp.asarray(count, jnp.float32)
            ramp = jnp.where(c == 0, 1.0, c / max(warmup, 1))  # update 0: the initial lr
            cos = 2.0 * jnp.cos(jnp.pi * jnp.minimum(c, decay_steps) / (2 * decay_steps)) ** 2
            factor = jnp.where(c < warmup, ramp, 0.5 * cos)
            return (lr_max * factor).astype(jnp.float32)
        if name == "constant":
            after = jnp.float32(1.0)
        elif torch_cos:
            t = jnp.asarray(count, jnp.float32)
            # 1 + cos(x) as 2 cos(x/2)^2: no cancellation in float32 as x -> pi.
            after = 2.0 * jnp.cos(jnp.pi * t / (2 * decay_steps)) ** 2 / torch_norm
            if name == "cosine_torch_wt103" and warmup > 0:
                after = after * (warmup - 1) / warmup  # continues from the last warmup lr
        elif name == "cosine":
            progress = jnp.clip((step - warmup) / (decay_steps - warmup), 0.0, 1.0)
            after = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        else:  # rsqrt, continuous with the warmup at step W; with W = 0 it is 1/sqrt(step).
            after = jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1)))
        factor = jnp.where(step <= warmup, ramp, after)
        return (lr_max * factor).astype(jnp.float32)

    return schedule


def _lr_at(learning_rate, count):
    return learning_rate(count) if callable(learning_rate) else learning_rate


class LambMinTrustState(NamedTuple):
    count: jax.Array  # [] int32, number of updates applied so far
    mu: optax.Updates  # first moment, like params
    nu: optax.Updates  # second moment, like params


def lamb_min_trust(
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.0,
    min_trust=0.25,
    max_weight_norm=10.0,
) -> optax.GradientTransformation:
    """LAMB with clamped weight norm and a minimum trust ratio, per tensor (see module docstring).

    Args:
      learning_rate: a float or an optax schedule `count -> lr`.
    Returns:
      A GradientTransformation whose `update(grads, state, params)` needs `params` and returns
      the deltas for `optax.apply_updates`.
    """

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)
        return LambMinTrustState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
        )

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("lamb_min_trust needs params: call tx.update(grads, state, params)")
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        lr = _lr_at(learning_rate, state.count)

        def delta(m, v, w):
            u = m / (jnp.sqrt(v) + eps) + weight_decay * w
            phi = jnp.clip(jnp.linalg.norm(w.ravel()), 0.0, max_weight_norm)
            u_norm = jnp.linalg.norm(u.ravel())
            # A fresh zero tensor (bias) or a zero step has no scale to trust: use r = 1.
            safe = (phi > 0) & (u_norm > 0)
            r = jnp.where(safe, phi / jnp.where(safe, u_norm, 1.0), 1.0)
            # The floor keeps small tensors (gains, biases near 0) from freezing early on.
            r = jnp.maximum(r, min_trust)
            return (-lr * r * u).astype(w.dtype)

        updates = jax.tree.map(delta, mu, nu, params)
        count = optax.safe_int32_increment(state.count)
        return updates, LambMinTrustState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


class AdagradClipState(NamedTuple):
    count: jax.Array  # [] int32
    sum_of_squares: optax.Updates  # S, like params


def adagrad_per_tensor_clip(learning_rate, grad_clip, eps=1e-10) -> optax.GradientTransformation:
    """Adagrad whose step size is clipped per tensor (Adaptive-Span's AdagradWithGradClip).

    For each tensor: S += g*g; lr_p = lr * (c / (|g| + 1e-10) if |g| > c else 1);
    p -= lr_p * g / (sqrt(S) + eps). `grad_clip` <= 0 disables the clip.

    Args:
      learning_rate: a float or an optax schedule `count -> lr`.
      grad_clip: c, the per-tensor gradient-norm bound.
    """

    def init(params):
        return AdagradClipState(
            count=jnp.zeros([], jnp.int32),
            sum_of_squares=jax.tree.map(jnp.zeros_like, params),
        )

    def update(grads, state, params=None):
        del params
        # The accumulator sees the raw gradient; only the step size is clipped.
        sums = jax.tree.map(lambda s, g: s + g * g, state.sum_of_squares, grads)
        lr = _lr_at(learning_rate, state.count)

        def delta(s, g):
            step = lr
            if grad_clip > 0:
                norm = jnp.linalg.norm(g.ravel())
                step = lr * jnp.where(norm > grad_clip, grad_clip / (norm + 1e-10), 1.0)
            return (-step * g / (jnp.sqrt(s) + eps)).astype(g.dtype)

        updates = jax.tree.map(delta, sums, grads)
        count = optax.safe_int32_increment(state.count)
        return updates, AdagradClipState(count=count, sum_of_squares=sums)

    return optax.GradientTransformation(init, update)


class RAdamState(NamedTuple):
    count: jax.Array  # [] int32, number of updates applied so far
    mu: optax.Updates  # first moment m, like params
    nu: optax.Updates  # second moment v, like params


_RADAM_TABLE_STEPS = 2048


def _radam_table(b1, b2, threshold, degenerated_to_sgd):
    """Float64 (adaptive?, step size s_t) for t = 1..N, as radam.py computes them in Python.

    Early on rho_t is a small difference of two numbers near rho_inf (~2000), which float32
    would get wrong by ~1e-4 relative; past N steps the float32 formula is accurate.
    """
    t = np.arange(1, _RADAM_TABLE_STEPS + 1, dtype=np.float64)
    b2t = b2**t
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2t / (1 - b2t)
    adaptive = rho >= threshold
    ratio = (1 - b2t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2)
    rect = np.sqrt(np.where(adaptive, ratio, 1.0)) / (1 - b1**t)
    sgd = 1 / (1 - b1**t) if degenerated_to_sgd else np.zeros_like(t)
    return adaptive, np.where(adaptive, rect, sgd).astype(np.float32)


def radam_decoupled(
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    threshold=5.0,
    degenerated_to_sgd=True,
) -> optax.GradientTransformation:
    """RAdam with decoupled weight decay, per tensor, exactly as radam.py (module docstring).

    Args:
      learning_rate: a float or an optax schedule `count -> lr`.
      threshold: the SMA length rho_t from which the adaptive (rectified) step is used.
      degenerated_to_sgd: below the threshold take an SGD-with-momentum step (radam.py until
        mid-2021, which SRU++ used); False skips the update and the decay there (later radam.py).
    Returns:
      A GradientTransformation whose `update(grads, state, params)` needs `params`.
    """
    table_adaptive, table_step = _radam_table(b1, b2, threshold, degenerated_to_sgd)
    rho_inf = 2 / (1 - b2) - 1

    def coefficients(t):
        """(adaptive?, apply?, s_t) for the 1-based int32 step t."""
        i = jnp.minimum(t, _RADAM_TABLE_STEPS) - 1
        tf = t.astype(jnp.float32)
        one_minus_b2t = -jnp.expm1(tf * math.log(b2))
        rho = rho_inf - 2 * tf * (1 - one_minus_b2t) / one_minus_b2t
        ratio = one_minus_b2t * (rho - 4) * (rho - 2) * rho_inf
        ratio = ratio / ((rho_inf - 4) * (rho_inf - 2) * rho)
        late_step = jnp.sqrt(jnp.maximum(ratio, 0.0)) / -jnp.expm1(tf * math.log(b1))
        late = t > _RADAM_TABLE_STEPS
        adaptive = jnp.where(late, rho >= threshold, jnp.asarray(table_adaptive)[i])
        step = jnp.where(late, late_step, jnp.asarray(table_step)[i])
        return adaptive, adaptive | degenerated_to_sgd, step

    def init(params):
        return RAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("radam_decoupled needs params: call tx.update(grads, state, params)")
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        count = optax.safe_int32_increment(state.count)
        adaptive, apply, step = coefficients(count)
        lr = _lr_at(learning_rate, state.count)

        def delta(m, v, w):
            # eps goes on the un-corrected sqrt(v), as radam.py; s carries the corrections.
            direction = jnp.where(adaptive, m / (jnp.sqrt(v) + eps), m)
            d = -lr * (weight_decay * w + step * direction)
            return jnp.where(apply, d, 0.0).astype(w.dtype)

        updates = jax.tree.map(delta, mu, nu, params)
        return updates, RAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(optim_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds `(tx, schedule)` from the `optim` config section.

    Every optimizer but adagrad is preceded by a global-norm clip when grad_clip > 0 (SHA-RNN's
    `--clip` is clip_grad_norm_ over all parameters); adagrad uses grad_clip per tensor instead.
    """
    schedule = make_schedule(optim_cfg)
    name = optim_cfg.name
    clip = float(optim_cfg.grad_clip)
    b1, b2, eps = float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps)
    wd = float(optim_cfg.weight_decay)
    if name == "lamb":
        tx = lamb_min_trust(
            schedule,
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=wd,
            min_trust=float(optim_cfg.min_trust),
            max_weight_norm=float(optim_cfg.max_weight_norm),
        )
    elif name == "adam":
        tx = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    elif name == "adagrad":
        tx, clip = adagrad_per_tensor_clip(schedule, grad_clip=clip), 0.0  # its clip is its own
    elif name == "sgd":
        tx = optax.sgd(schedule)
    elif name == "radam":
        tx = radam_decoupled(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    else:
        raise UserError(f"unknown optim.name {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    tx = _scaled(tx, dict(optim_cfg.get("lr_scale", {}) or {}))
    return _only_trainable(tx, tuple(optim_cfg.get("trainable", ()) or ())), schedule


def param_path(path):
    """'layer_0/attn/gate/log_a' for a tree_map_with_path key path of the params."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _matching(params, pattern, field):
    """A tree of bools: which parameter paths match the fnmatch `pattern` (one must)."""
    paths = jax.tree_util.tree_map_with_path(lambda p, _: param_path(p), params)
    if not any(fnmatch.fnmatchcase(x, pattern) for x in jax.tree.leaves(paths)):
        raise UserError(
            f"{field} pattern {pattern!r} matches no parameter (paths look like "
            f"{jax.tree.leaves(paths)[0]!r})"
        )
    return jax.tree.map(lambda x: fnmatch.fnmatchcase(x, pattern), paths)


def _scaled(tx, factors):
    """`optim.lr_scale` {fnmatch pattern: factor}: the updates of the matching parameters
    multiplied by factor after `tx`, i.e. their learning rate (and nothing else: Adam's update
    does not depend on the gradient's scale) times factor. The Story of Heads' CPU-scale
    pruning runs use it for the gates' log_a; the reference has one learning rate."""
    for pattern, factor in factors.items():
        tx = optax.chain(
            tx,
            optax.masked(
                optax.scale(float(factor)),
                functools.partial(_matching, pattern=pattern, field="optim.lr_scale"),
            ),
        )
    return tx


def _only_trainable(tx, patterns):
    """`tx` on the parameters whose path matches one of the fnmatch `patterns`
    (`optim.trainable`; empty: all of them), zero updates and no optimizer state for the rest.
    The Story of Heads' encoder-only pruning trains `['emb_inp*', 'enc*']` this way (C.4: the
    reference's optimizer `variables` patterns), so the global-norm clip, when there is one,
    sees the trained gradients only, as TF's optimizer over a variable list does."""
    if not patterns:
        return tx

    def labels(params):
        paths = jax.tree_util.tree_map_with_path(lambda p, _: param_path(p), params)
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(x, pattern) for x in jax.tree.leaves(paths)):
                raise UserError(
                    f"optim.trainable pattern {pattern!r} matches no parameter (paths look like "
                    f"{jax.tree.leaves(paths)[0]!r})"
                )
        return jax.tree.map(
            lambda x: "train" if any(fnmatch.fnmatchcase(x, p) for p in patterns) else "frozen",
            paths,
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
