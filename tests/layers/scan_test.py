"""linear_scan / sru_scan: both implementations equal a plain numpy loop, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.layers import scan

T, B, D = 7, 3, 5


def _inputs(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    a = jax.random.uniform(k[0], (T, B, D), minval=0.2, maxval=1.0)
    x = jax.random.normal(k[1], (T, B, D))
    h0 = jax.random.normal(k[2], (B, D))
    v = jax.random.uniform(k[3], (D,), minval=-1.0, maxval=1.0)
    return a, x, h0, v


def _np_linear(a, x, h0, reverse=False):
    a, x, h = (np.asarray(y, np.float64) for y in (a, x, h0))
    out = np.zeros_like(x)
    for t in reversed(range(T)) if reverse else range(T):
        h = a[t] * h + x[t]
        out[t] = h
    return out, h


def _np_sru(u, p, v, c0):
    u, p, v, c = (np.asarray(y, np.float64) for y in (u, p, v, c0))
    out = np.zeros_like(u)
    for t in range(T):
        f = 1 / (1 + np.exp(-(p[t] + v * c)))
        c = u[t] + (c - u[t]) * f
        out[t] = c
    return out, c


@pytest.mark.parametrize("impl", scan.IMPLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_matches_loop(impl, reverse):
    a, x, h0, _ = _inputs()
    h, last = jax.jit(lambda *z: scan.linear_scan(*z, reverse=reverse, impl=impl))(a, x, h0)
    want, want_last = _np_linear(a, x, h0, reverse)
    assert h.dtype == jnp.float32
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, want_last, rtol=1e-5, atol=1e-5)


def test_associative_twin_equals_sequential():
    a, x, h0, _ = _inputs(3)
    seq = scan.linear_scan(a, x, h0)
    par = scan.associative_linear_scan(a, x, h0)
    np.testing.assert_allclose(par[0], seq[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(par[1], seq[1], rtol=1e-5, atol=1e-5)


def _naive_linear(a, x, h0, reverse):
    """Autodiff through a plain lax.scan: the reference for the custom backward pass."""

    def step(h, ax):
        h = ax[0] * h + ax[1]
        return h, h

    last, h = jax.lax.scan(step, h0, (a, x), reverse=reverse)
    return h, last


@pytest.mark.parametrize("impl", scan.IMPLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_gradients_match_autodiff(impl, reverse):
    a, x, h0, _ = _inputs(1)
    w = jax.random.normal(jax.random.PRNGKey(9), (T, B, D))

    def loss(fn):
        def f(a, x, h0):
            h, last = fn(a, x, h0)
            return jnp.sum(w * jnp.sin(h)) + jnp.sum(last**2)

        return jax.grad(f, argnums=(0, 1, 2))(a, x, h0)

    got = loss(lambda *z: scan.linear_scan(*z, reverse=reverse, impl=impl))
    want = loss(lambda *z: _naive_linear(*z, reverse))
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_sru_scan_matches_loop():
    a, x, h0, v = _inputs(2)
    c, last = jax.jit(scan.sru_scan)(x, a * 3 - 1, v, h0)
    want, want_last = _np_sru(x, a * 3 - 1, v, h0)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, want_last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", scan.IMPLS)
def test_sru_scan_gradients_match_autodiff(impl):
    """The custom backward (one linear reverse scan) equals autodiff of the step loop."""
    a, u, c0, v = _inputs(4)
    p = 2 * a - 1
    w = jax.random.normal(jax.random.PRNGKey(7), (T, B, D))

    def naive(u, p, v, c0):
        last, c = jax.lax.scan(lambda c, up: scan.sru_step(v, c, up), c0, (u, p))
        return c, last

    def grads(fn):
        def f(u, p, v, c0):
            c, last = fn(u, p, v, c0)
            return jnp.sum(w * jnp.tanh(c)) + jnp.sum(last**2)

        return jax.grad(f, argnums=(0, 1, 2, 3))(u, p, v, c0)

    got = grads(lambda *z: scan.sru_scan(*z, impl=impl))
    want = grads(naive)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", scan.IMPLS)
def test_sru_scan_without_vc_is_the_linear_scan(impl):
    a, u, c0, _ = _inputs(5)
    p = 2 * a - 1
    c, last = scan.sru_scan(u, p, None, c0, impl=impl)
    want, want_last = _np_sru(u, p, np.zeros(D), c0)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, want_last, rtol=1e-5, atol=1e-5)


def test_auto_resolves_and_bad_name_fails():
    assert scan.resolve_impl("auto") in scan.IMPLS
    with pytest.raises(ValueError, match="unknown scan impl"):
        scan.resolve_impl("pallas")
