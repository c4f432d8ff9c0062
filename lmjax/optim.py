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

Schedules (`make_schedule`) all start with a linear warmup, then `constant`, `cosine` or `rsqrt`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lmjax.errors import UserError

SCHEDULES = ("constant", "cosine", "rsqrt")
OPTIMIZERS = ("lamb", "adam", "adamw", "adagrad", "sgd")


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
    if name == "cosine":
        if "decay_steps" not in optim_cfg:
            raise UserError(
                "optim.schedule='cosine' needs optim.decay_steps (the step at which "
                "the learning rate reaches learning_rate * min_lr_ratio)"
            )
        decay_steps = int(optim_cfg.decay_steps)
        if decay_steps <= warmup:
            raise UserError(
                f"optim.decay_steps ({decay_steps}) must exceed optim.warmup_steps ({warmup})"
            )
        min_ratio = float(optim_cfg.min_lr_ratio)

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        # W = 0 means no warmup: the factor is 1 from the first step.
        ramp = jnp.minimum(step, warmup) / warmup if warmup > 0 else jnp.float32(1.0)
        if name == "constant":
            after = jnp.float32(1.0)
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
        return adagrad_per_tensor_clip(schedule, grad_clip=clip), schedule
    elif name == "sgd":
        tx = optax.sgd(schedule)
    else:
        raise UserError(f"unknown optim.name {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule
