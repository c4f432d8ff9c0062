"""Tests for lmjax/optim.py: update rules against numpy hand computations, schedules, wiring."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from lmjax import optim
from lmjax.errors import UserError


def _cfg(**overrides):
    cfg = ml_collections.ConfigDict(common.base_config().optim.to_dict())
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _run(tx, params, grads_seq):
    """Applies tx for each grads dict in turn (jitted update); returns the final params."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _grads(rng, shapes, scale=1.0):
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def _lamb_numpy(params, grads_seq, lrs, b1, b2, eps, wd, min_trust, max_norm):
    """Smerity/pytorch-lamb min-trust step in float64; also returns every (raw r, clamped?)."""
    w = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    seen = []
    for grads, lr in zip(grads_seq, lrs, strict=True):
        for k in w:
            g = grads[k].astype(np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            u = m[k] / (np.sqrt(v[k]) + eps) + wd * w[k]
            w_norm = np.linalg.norm(w[k])
            phi = min(w_norm, max_norm)
            u_norm = np.linalg.norm(u)
            r = 1.0 if phi == 0 or u_norm == 0 else phi / u_norm
            seen.append((k, r, w_norm > max_norm))
            w[k] = w[k] - lr * max(r, min_trust) * u
    return w, seen


def test_lamb_min_trust_matches_numpy():
    rng = np.random.default_rng(0)
    shapes = {"bias": (3,), "big": (4, 5), "kernel": (2, 3)}
    params = {
        "bias": np.zeros(3, np.float32),  # step 1: phi = 0 -> r = 1
        "big": (4.0 * rng.standard_normal((4, 5))).astype(np.float32),  # |w| > 10: clamped
        "kernel": rng.standard_normal((2, 3)).astype(np.float32),
    }
    grads_seq = [_grads(rng, shapes) for _ in range(3)]
    hp = dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, min_trust=0.25, max_weight_norm=10.0)
    # A schedule checks that the update reads lr at count 0, 1, 2.
    tx = optim.lamb_min_trust(lambda count: 0.1 * (count + 1), **hp)
    got = _run(tx, {k: jnp.asarray(v) for k, v in params.items()}, grads_seq)
    want, seen = _lamb_numpy(
        params,
        grads_seq,
        [0.1, 0.2, 0.3],
        hp["b1"],
        hp["b2"],
        hp["eps"],
        hp["weight_decay"],
        hp["min_trust"],
        hp["max_weight_norm"],
    )
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)
    # The cases the test is meant to exercise all occur.
    assert seen[0] == ("bias", 1.0, False)
    assert any(big for _, _, big in seen)
    assert any(r < hp["min_trust"] for _, r, _ in seen)  # the floor binds
    assert any(hp["min_trust"] < r < 1.0 for _, r, _ in seen)  # plain phi / |u|


def test_lamb_requires_params():
    tx = optim.lamb_min_trust(0.1)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


def test_adagrad_per_tensor_clip_matches_numpy():
    rng = np.random.default_rng(1)
    c, lr = 1.0, 0.5
    params = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }
    # "a" gets |g| > c (step size clipped), "b" gets |g| < c (not clipped).
    grads_seq = [
        {"a": _grads(rng, {"a": (3, 4)}, 3.0)["a"], "b": _grads(rng, {"b": 5}, 0.1)["b"]}
        for _ in range(2)
    ]
    got = _run(
        optim.adagrad_per_tensor_clip(lr, grad_clip=c),
        {k: jnp.asarray(v) for k, v in params.items()},
        grads_seq,
    )

    w = {k: v.astype(np.float64) for k, v in params.items()}
    s = {k: np.zeros_like(v) for k, v in w.items()}
    for grads in grads_seq:
        for k in w:
            g = grads[k].astype(np.float64)
            norm = np.linalg.norm(g)
            assert (norm > c) == (k == "a")
            s[k] += g * g
            step = lr * min(1.0, c / (norm + 1e-10))
            w[k] -= step * g / (np.sqrt(s[k]) + 1e-10)
    for k in params:
        np.testing.assert_allclose(got[k], w[k], rtol=1e-6, atol=1e-6, err_msg=k)


def _lrs(cfg, counts):
    schedule = optim.make_schedule(cfg)
    return np.array([schedule(jnp.asarray(n, jnp.int32)) for n in counts])


def test_warmup_constant():
    cfg = _cfg(learning_rate=0.5, warmup_steps=4, schedule="constant")
    # counts 0..3 are steps 1..4: the first update uses lr / W.
    np.testing.assert_allclose(
        _lrs(cfg, [0, 1, 3, 4, 100]), [0.125, 0.25, 0.5, 0.5, 0.5], rtol=1e-6
    )
    assert optim.make_schedule(cfg)(0).dtype == jnp.float32
    no_warmup = _cfg(learning_rate=0.5, warmup_steps=0, schedule="constant")
    np.testing.assert_allclose(_lrs(no_warmup, [0, 7]), [0.5, 0.5], rtol=1e-6)


def test_warmup_cosine():
    cfg = _cfg(learning_rate=0.5, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    cfg.decay_steps = 12
    # steps 2, 4 (peak), 8 (half way), 12 (floor), 20 (stays at floor).
    want = [0.25, 0.5, 0.5 * (0.1 + 0.9 * 0.5), 0.05, 0.05]
    np.testing.assert_allclose(_lrs(cfg, [1, 3, 7, 11, 19]), want, rtol=1e-6)
    with pytest.raises(UserError, match="decay_steps"):
        optim.make_schedule(_cfg(schedule="cosine"))


def test_cosine_txl_writes_the_lr_after_each_update():
    """Transformer-XL / lmtool-fwms train.py (B.8): update 0 at the full lr, then lr c / W while
    c < W, then lr (1 + cos(pi c / T)) / 2 with T counted from update 0."""
    cfg = _cfg(learning_rate=0.5, warmup_steps=4, schedule="cosine_txl")
    cfg.decay_steps = 12
    counts = [0, 1, 3, 4, 6, 12, 20]
    cos = lambda c: 0.25 * (1 + np.cos(np.pi * c / 12))
    want = [0.5, 0.125, 0.375, cos(4), cos(6), 0.0, 0.0]
    np.testing.assert_allclose(_lrs(cfg, counts), want, rtol=1e-6, atol=1e-7)


def test_warmup_rsqrt():
    cfg = _cfg(learning_rate=0.5, warmup_steps=4, schedule="rsqrt")
    np.testing.assert_allclose(_lrs(cfg, [0, 3, 15, 63]), [0.125, 0.5, 0.25, 0.125], rtol=1e-6)
    no_warmup = _cfg(learning_rate=0.5, warmup_steps=0, schedule="rsqrt")
    np.testing.assert_allclose(_lrs(no_warmup, [0, 3]), [0.5, 0.25], rtol=1e-6)


def test_unknown_names_raise():
    with pytest.raises(UserError, match="optim.schedule"):
        optim.make_schedule(_cfg(schedule="linear"))
    with pytest.raises(UserError, match="optim.name"):
        optim.make_optimizer(_cfg(name="adafactor"))


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_steps(name):
    tx, _ = optim.make_optimizer(_cfg(name=name, grad_clip=0.5, weight_decay=0.01, warmup_steps=2))
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.full((2, 3), 2.0), "b": jnp.ones(3)}
    new = _run(tx, params, [grads, grads])
    for k in params:
        assert np.all(np.isfinite(new[k])) and not np.allclose(new[k], params[k]), k


def test_global_clip_is_chained():
    params = {"w": jnp.zeros(4)}
    huge = {"w": jnp.array([3e6, -4e6, 0.0, 0.0])}  # |g| = 5e6
    clipped = {"w": jnp.array([0.6, -0.8, 0.0, 0.0])}  # the same direction at |g| = 1
    # eps = 1 makes adam's step depend on the gradient scale, so a missing clip would show.
    cfg = _cfg(name="adam", grad_clip=1.0, eps=1.0, learning_rate=0.1)
    tx, schedule = optim.make_optimizer(cfg)
    want = optax.adam(schedule, eps=1.0)
    np.testing.assert_allclose(
        _run(tx, params, [huge])["w"], _run(want, params, [clipped])["w"], rtol=1e-6
    )
    assert not np.allclose(_run(want, params, [huge])["w"], _run(want, params, [clipped])["w"])


def test_adagrad_has_no_global_clip():
    # Two tensors each under the per-tensor bound but over it together: nothing is clipped.
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    grads = {"a": jnp.array([0.6, 0.0]), "b": jnp.array([0.0, 0.8])}
    tx, schedule = optim.make_optimizer(_cfg(name="adagrad", grad_clip=0.9, learning_rate=0.1))
    want = optim.adagrad_per_tensor_clip(schedule, grad_clip=0.9)
    got, ref = _run(tx, params, [grads]), _run(want, params, [grads])
    for k in params:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-7)
    # Adagrad's first step is lr * sign(g) where g != 0.
    np.testing.assert_allclose(got["a"], [0.9, 1.0], rtol=1e-6)


def _radam_numpy(params, grads_seq, lrs, b1, b2, eps, wd, degenerated_to_sgd=True):
    """LiyuanLucasLiu radam.py (early 2021), float64, one tensor at a time."""
    w = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for step, (grads, lr) in enumerate(zip(grads_seq, lrs, strict=True), start=1):
        b2t = b2**step
        sma_max = 2 / (1 - b2) - 1
        sma = sma_max - 2 * step * b2t / (1 - b2t)
        for k in w:
            g = grads[k].astype(np.float64)
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m[k] = b1 * m[k] + (1 - b1) * g
            if sma >= 5:
                s = math.sqrt(
                    (1 - b2t)
                    * (sma - 4)
                    / (sma_max - 4)
                    * (sma - 2)
                    / sma
                    * sma_max
                    / (sma_max - 2)
                ) / (1 - b1**step)
                w[k] = w[k] - wd * lr * w[k]
                w[k] = w[k] - s * lr * m[k] / (np.sqrt(v[k]) + eps)
            elif degenerated_to_sgd:
                w[k] = w[k] - wd * lr * w[k]
                w[k] = w[k] - lr / (1 - b1**step) * m[k]
    return w


@pytest.mark.parametrize("degenerated_to_sgd", [True, False])
def test_radam_decoupled_matches_numpy(degenerated_to_sgd):
    rng = np.random.default_rng(2)
    shapes = {"w": (3, 4), "b": (4,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    # 8 steps cross the SMA threshold (rho_t >= 5 from t = 6); gradients of different scales
    # make eps = 1e-3 visible, so its placement (on the un-corrected sqrt(v)) is checked.
    grads_seq = [_grads(rng, shapes, scale=0.01 * (i + 1)) for i in range(8)]
    lrs = [0.05 * (i + 1) for i in range(8)]
    tx = optim.radam_decoupled(
        lambda count: 0.05 * (count + 1),
        eps=1e-3,
        weight_decay=0.1,
        degenerated_to_sgd=degenerated_to_sgd,
    )
    got = _run(tx, {k: jnp.asarray(v) for k, v in params.items()}, grads_seq)
    want = _radam_numpy(params, grads_seq, lrs, 0.9, 0.999, 1e-3, 0.1, degenerated_to_sgd)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_radam_late_steps_use_the_float32_formula():
    """Past the float64 table, the in-graph step size still equals radam.py's."""
    tx = optim.radam_decoupled(1.0)
    params = {"w": jnp.ones(1)}
    grads = {"w": jnp.full(1, 0.5)}
    state = tx.init(params)._replace(count=jnp.asarray(4999, jnp.int32))
    state = state._replace(mu=grads, nu={"w": jnp.full(1, 0.25)})  # m = g, v = g^2: fixed point
    updates, _ = tx.update(grads, state, params)
    t, b1, b2 = 5000, 0.9, 0.999
    sma_max = 2 / (1 - b2) - 1
    sma = sma_max - 2 * t * b2**t / (1 - b2**t)
    s = math.sqrt(
        (1 - b2**t) * (sma - 4) / (sma_max - 4) * (sma - 2) / sma * sma_max / (sma_max - 2)
    ) / (1 - b1**t)
    np.testing.assert_allclose(updates["w"], [-s * 0.5 / (0.5 + 1e-8)], rtol=1e-6)


def test_cosine_torch_follows_the_recursive_scheduler():
    """Warmup overrides, then torch's recursive CosineAnnealingLR from the last override."""
    lr_max, warmup, total = 0.3, 5, 40
    cfg = _cfg(learning_rate=lr_max, warmup_steps=warmup, schedule="cosine_torch")
    cfg.decay_steps = total
    want, lr = [], lr_max
    for t in range(total):  # SRU++'s loop: override (t < W), optimizer.step(), scheduler.step()
        if t < warmup:
            lr = lr_max * (t + 1) / warmup
        want.append(lr)
        e = t + 1  # the scheduler's last_epoch after its step
        lr = (1 + math.cos(math.pi * e / total)) / (1 + math.cos(math.pi * (e - 1) / total)) * lr
    np.testing.assert_allclose(_lrs(cfg, range(total)), want, rtol=2e-6)
    # Not the textbook cosine: slightly above lr_max (1 + cos(pi t / T)) / 2 (B7: about x1.004).
    assert want[warmup] > lr_max * (1 + math.cos(math.pi * warmup / total)) / 2


def test_cosine_torch_wt103_warms_up_from_zero():
    """train_wt103.py: the override is lr_max t / W for t < W (the first update uses 0), and
    the recursive cosine continues from lr_max (W - 1) / W (B7)."""
    lr_max, warmup, total = 0.3, 5, 40
    cfg = _cfg(learning_rate=lr_max, warmup_steps=warmup, schedule="cosine_torch_wt103")
    cfg.decay_steps = total
    want, lr = [], lr_max
    for t in range(total):
        if t < warmup:
            lr = lr_max * t / warmup
        want.append(lr)
        e = t + 1
        lr = (1 + math.cos(math.pi * e / total)) / (1 + math.cos(math.pi * (e - 1) / total)) * lr
    np.testing.assert_allclose(_lrs(cfg, range(total)), want, rtol=2e-6, atol=1e-9)
    assert want[0] == 0.0


def test_trainable_patterns_freeze_the_rest():
    """optim.trainable (C.4's freezing): matched parameters follow the optimizer as if they were
    the only ones (the global-norm clip included), the rest never move and hold no moments."""
    params = {"enc": {"w": jnp.ones(3)}, "dec": {"w": jnp.ones(3), "b": jnp.zeros(2)}}
    grads = {"enc": {"w": jnp.array([3.0, 0.0, 4.0])}, "dec": {"w": jnp.ones(3), "b": jnp.ones(2)}}
    cfg = _cfg(name="adam", grad_clip=1.0, eps=1.0, learning_rate=0.1, trainable=("enc/*",))
    tx, _ = optim.make_optimizer(cfg)
    new = _run(tx, params, [grads, grads])
    alone, _ = optim.make_optimizer(_cfg(name="adam", grad_clip=1.0, eps=1.0, learning_rate=0.1))
    want = _run(alone, {"enc": params["enc"]}, [{"enc": grads["enc"]}] * 2)
    np.testing.assert_allclose(new["enc"]["w"], want["enc"]["w"], rtol=1e-7)
    for k in ("w", "b"):
        np.testing.assert_array_equal(new["dec"][k], params["dec"][k])
    moments = sum(x.size for x in jax.tree.leaves(tx.init(params)) if getattr(x, "ndim", 0) > 0)
    assert moments == 2 * 3  # m and v of enc/w only
    with pytest.raises(UserError, match="optim.trainable pattern 'emb_inp\\*' matches no"):
        optim.make_optimizer(_cfg(name="adam", trainable=("emb_inp*",)))[0].init(params)


def test_lr_scale_multiplies_the_matched_learning_rates():
    """optim.lr_scale: matched parameters move as with factor x the learning rate (Adam with
    the lr scaled), the rest as without it."""
    params = {"gate": {"log_a": jnp.zeros(4)}, "w": jnp.ones(3)}
    grads = {"gate": {"log_a": jnp.array([1.0, -2.0, 0.5, 3.0])}, "w": jnp.array([1.0, 2.0, 3.0])}
    scaled, _ = optim.make_optimizer(
        _cfg(name="adam", learning_rate=0.01, lr_scale={"gate/*": 10.0})
    )
    new = _run(scaled, params, [grads] * 3)
    plain = _run(
        optim.make_optimizer(_cfg(name="adam", learning_rate=0.01))[0], params, [grads] * 3
    )
    fast = _run(optim.make_optimizer(_cfg(name="adam", learning_rate=0.1))[0], params, [grads] * 3)
    np.testing.assert_allclose(new["w"], plain["w"], rtol=1e-7)
    np.testing.assert_allclose(new["gate"]["log_a"], fast["gate"]["log_a"], rtol=1e-6)
    with pytest.raises(UserError, match="optim.lr_scale pattern 'nope' matches no"):
        optim.make_optimizer(_cfg(name="adam", lr_scale={"nope": 2.0}))[0].init(params)
