"""Hard-Concrete head gates against the distribution's closed forms (C.3) and fixed masks (C.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from lmjax.layers import gates

LOW, HIGH = gates.STRETCH


def _cdf_interior(y, log_a):
    """P(g <= y) for 0 <= y < 1: s = σ((L + log_a)/β), L logistic, so
    P(s <= x) = σ(β logit(x) - log_a), and g = clip(s (r - l) + l, 0, 1)."""
    x = (y - LOW) / (HIGH - LOW)
    return special.expit(gates.BETA * special.logit(x) - log_a)


@pytest.mark.parametrize("log_a", [-2.0, 0.0, 0.7, 3.0])
def test_samples_follow_the_hard_concrete_distribution(log_a):
    n = 200_000
    draws = np.asarray(gates.sample(jax.random.PRNGKey(0), jnp.full((n,), log_a)))
    p_zero = _cdf_interior(0.0, log_a)
    p_one = 1.0 - _cdf_interior(1.0 - 1e-12, log_a)
    mean = integrate.quad(lambda y: 1.0 - _cdf_interior(y, log_a), 0.0, 1.0)[0]  # E g = ∫ P(g > y)
    tol = 4 * np.sqrt(0.25 / n)  # four standard errors of a proportion
    assert abs(np.mean(draws == 0.0) - p_zero) < tol
    assert abs(np.mean(draws == 1.0) - p_one) < tol
    assert abs(np.mean(draws) - mean) < tol
    for y in (0.1, 0.5, 0.9):  # the interior of the CDF
        assert abs(np.mean(draws <= y) - _cdf_interior(y, log_a)) < tol
    # The L0 term is the probability of a non-zero gate: σ(log_a - β ln(-l/r)) = σ(log_a + 0.7913).
    assert float(gates.prob_open(jnp.float32(log_a))) == pytest.approx(1.0 - p_zero, abs=1e-6)
    assert float(gates.prob_open(jnp.float32(log_a))) == pytest.approx(
        special.expit(log_a + 0.7913), abs=1e-4
    )


def test_eval_gate_is_deterministic_and_saturates():
    log_a = jnp.array([-5.0, -1.8, 0.0, 1.8, 5.0])
    g = gates.eval_gate(log_a)
    np.testing.assert_allclose(
        g, np.clip(special.expit(np.asarray(log_a)) * 1.2 - 0.1, 0, 1), rtol=1e-6
    )
    assert g[0] == 0.0 and g[-1] == 1.0  # exactly closed / open far from 0


def test_head_gate_layer():
    layer = gates.HeadGate(num_heads=4)
    x = jnp.ones((3, 5, 4, 2))
    params = layer.init({"params": jax.random.PRNGKey(0)}, x, train=False)
    log_a = params["params"]["log_a"]
    assert log_a.shape == (4,) and float(jnp.max(jnp.abs(log_a))) <= np.sqrt(3 / 4)
    # Eval: the deterministic gate, whatever the RNG.
    y, stats = layer.apply(params, x, train=False)
    np.testing.assert_allclose(y[0, 0, :, 0], gates.eval_gate(log_a), rtol=1e-6)
    np.testing.assert_allclose(stats.l0, jnp.sum(gates.prob_open(log_a)), rtol=1e-6)
    assert int(stats.open) == int(jnp.sum(gates.eval_gate(log_a) != 0))
    # Train: one sample per head, shared by every row and position; a new key draws anew.
    draws = [
        layer.apply(params, x, train=True, rngs={gates.RNG_STREAM: jax.random.PRNGKey(s)})[0]
        for s in (1, 2)
    ]
    for y in draws:
        np.testing.assert_array_equal(y, jnp.broadcast_to(y[:1, :1], y.shape))
    assert not np.array_equal(draws[0], draws[1])


def test_fixed_mask_zeroes_exactly_the_dead_heads():
    alive = (1, 0, 1, 0)
    layer = gates.HeadGate(num_heads=4, alive=alive)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5))
    variables = layer.init(jax.random.PRNGKey(0), x, train=True)
    assert not variables  # no parameter
    for train in (False, True):
        y, stats = layer.apply(variables, x, train=train)
        np.testing.assert_array_equal(y[:, :, [1, 3]], 0.0)
        np.testing.assert_array_equal(y[:, :, [0, 2]], x[:, :, [0, 2]])
        assert int(stats.open) == 2 and float(stats.l0) == 0.0
    with pytest.raises(ValueError, match="heads"):
        gates.HeadGate(num_heads=4, alive=(1, 0)).init(jax.random.PRNGKey(0), x, train=False)


def test_l0_penalty_is_the_mean_over_gated_layers():
    stats = [gates.GateStats(jnp.float32(a), jnp.int32(0), jnp.zeros(8)) for a in (2.0, 4.0, 6.0)]
    assert float(gates.l0_penalty(stats + [None])) == pytest.approx(4.0)
    assert float(gates.l0_penalty([])) == 0.0
