"""Fast-weight rules: recurrent = chunkwise = a float64 loop of the B.5 equations (values and
gradients, with and without an initial state); the custom VJPs = autodiff through the plain
scan; the feature maps as the reference defines them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.layers import linear_attention as la


def _loop64(q, k, v, beta, w0, rule):
    """specs/attention.md B.5 one step at a time in float64 numpy: (o, W_t)."""
    q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w0))
    beta = np.asarray(beta, np.float64)
    b, h, t, _ = q.shape
    o = np.zeros((b, h, t, v.shape[-1]))
    w = w.copy()
    for i in range(t):
        if rule == "sum":
            w = w + np.einsum("bhk,bhv->bhkv", k[:, :, i], v[:, :, i])
        else:
            v_old = np.einsum("bhk,bhkv->bhv", k[:, :, i], w)
            u = beta[:, :, i, None] * (v[:, :, i] - v_old)
            w = w + np.einsum("bhk,bhv->bhkv", k[:, :, i], u)
        o[:, :, i] = np.einsum("bhk,bhkv->bhv", q[:, :, i], w)
    return o, w


def _inputs(seed, b=2, h=2, t=13, dk=6, dv=5, with_state=True):
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = la.sum_norm(la.elu_p1(jax.random.normal(keys[0], (b, h, t, dk))))
    k = la.sum_norm(la.elu_p1(jax.random.normal(keys[1], (b, h, t, dk))))
    v = jax.random.normal(keys[2], (b, h, t, dv))
    beta = jax.nn.sigmoid(jax.random.normal(keys[3], (b, h, t)))
    w0 = (
        0.5 * jax.random.normal(keys[4], (b, h, dk, dv))
        if with_state
        else jnp.zeros((b, h, dk, dv))
    )
    return q, k, v, beta, w0


def _rule(rule, impl, chunk=4, groups=None):
    kw = dict(impl=impl, chunk=chunk, groups=groups)
    if rule == "sum":
        return lambda q, k, v, beta, w0: la.sum_rule(q, k, v, w0, **kw)
    return lambda q, k, v, beta, w0: la.delta_rule(q, k, v, beta, w0, **kw)


def _loss(fn, cot_o, cot_w):
    def loss(*args):
        o, w = fn(*args)
        return jnp.sum(o * cot_o) + jnp.sum(w * cot_w)

    return loss


@pytest.mark.parametrize("rule", la.UPDATE_RULES)
@pytest.mark.parametrize("impl", la.IMPLS)
@pytest.mark.parametrize("with_state", [False, True])
def test_rule_equals_float64_loop(rule, impl, with_state):
    args = _inputs(0, with_state=with_state)
    o, w = jax.jit(_rule(rule, impl))(*args)
    o64, w64 = _loop64(*args, rule)
    np.testing.assert_allclose(o, o64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w, w64, rtol=1e-5, atol=1e-5)


def _plain_scan(rule, q, k, v, beta, w0):
    """The recurrent form's forward scan (time-major inside) without its custom VJP."""
    tm = lambda x: jnp.moveaxis(x, 2, 0)
    if rule == "sum":
        o, w = la._sum_forward(tm(q), tm(k), tm(v), w0)
    else:
        o, w, _ = la._delta_forward(tm(q), tm(k), tm(v), tm(beta), w0)
    return jnp.moveaxis(o, 0, 2), w


def _grads64(rule, args, cot_o, cot_w):
    """Gradients of Σ o·cot_o + Σ W·cot_w by float64 autodiff through the plain scan."""
    with jax.enable_x64():
        args64 = tuple(jnp.asarray(np.asarray(a), jnp.float64) for a in args)

        def fn(q, k, v, beta, w0):
            o, w = _plain_scan(rule, q, k, v, beta, w0)
            return jnp.sum(o * cot_o) + jnp.sum(w * cot_w)

        grads = jax.grad(fn, argnums=(0, 1, 2, 3, 4))(*args64)
        return [np.asarray(g) for g in grads]


@pytest.mark.parametrize("rule", la.UPDATE_RULES)
@pytest.mark.parametrize("impl", la.IMPLS)
def test_gradients_equal_float64_autodiff(rule, impl):
    """The custom VJP (recurrent) and autodiff of the chunkwise form, against float64 autodiff
    of the step-by-step scan, for every input including the initial state."""
    args = _inputs(1)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    cot_o = jax.random.normal(keys[0], args[0].shape[:3] + (args[2].shape[-1],))
    cot_w = jax.random.normal(keys[1], args[4].shape)
    grads = jax.jit(jax.grad(_loss(_rule(rule, impl), cot_o, cot_w), argnums=(0, 1, 2, 3, 4)))(
        *args
    )
    expected = _grads64(rule, args, np.asarray(cot_o), np.asarray(cot_w))
    for name, g, e in zip("q k v beta w0".split(), grads, expected, strict=True):
        if rule == "sum" and name == "beta":
            continue
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("rule", la.UPDATE_RULES)
def test_custom_vjp_equals_autodiff_of_scan(rule):
    """float32: the rebuilt-state backward pass against autodiff through the same scan."""
    args = _inputs(2, t=40)
    cot_o = jax.random.normal(jax.random.PRNGKey(3), args[0].shape[:3] + (args[2].shape[-1],))
    cot_w = jnp.ones_like(args[4])

    def plain(q, k, v, beta, w0):
        return _plain_scan(rule, q, k, v, beta, w0)

    fast = jax.grad(_loss(_rule(rule, "recurrent"), cot_o, cot_w), argnums=(0, 1, 2, 3, 4))
    slow = jax.grad(_loss(plain, cot_o, cot_w), argnums=(0, 1, 2, 3, 4))
    for g, e in zip(jax.jit(fast)(*args), jax.jit(slow)(*args), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", la.UPDATE_RULES)
def test_head_groups_are_the_same_computation(rule):
    """The recurrent form split into independent scans over head groups (what `scan_groups`
    picks per backend) gives the numbers and gradients of one scan over all heads."""
    args = _inputs(6, h=4)
    cot_o = jax.random.normal(jax.random.PRNGKey(5), args[0].shape[:3] + (args[2].shape[-1],))
    cot_w = jax.random.normal(jax.random.PRNGKey(6), args[4].shape)
    results = []
    for groups in (1, 2, args[0].shape[1]):
        fn = _rule(rule, "recurrent", groups=groups)
        results.append(
            (fn(*args), jax.grad(_loss(fn, cot_o, cot_w), argnums=(0, 1, 2, 3, 4))(*args))
        )
    for other in results[1:]:
        for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="do not divide"):
        _rule(rule, "recurrent", groups=3)(*args)
    assert la.scan_groups(8) in (1, 2, 4, 8) and 8 % la.scan_groups(8) == 0


@pytest.mark.parametrize("chunk", [1, 4, 13, 16])
def test_chunk_size_does_not_change_numbers(chunk):
    """Chunks that do and do not divide t (padding), one chunk, and chunk 1."""
    args = _inputs(4)
    for rule in la.UPDATE_RULES:
        o, w = _rule(rule, "chunkwise", chunk)(*args)
        o_r, w_r = _rule(rule, "recurrent")(*args)
        np.testing.assert_allclose(o, o_r, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(w, w_r, rtol=1e-5, atol=1e-5)


def test_split_through_state_equals_whole():
    args = _inputs(5, t=12)
    for rule in la.UPDATE_RULES:
        for impl in la.IMPLS:
            fn = _rule(rule, impl)
            q, k, v, beta, w0 = args
            o, w = fn(*args)
            o1, w1 = fn(q[:, :, :5], k[:, :, :5], v[:, :, :5], beta[:, :, :5], w0)
            o2, w2 = fn(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], beta[:, :, 5:], w1)
            np.testing.assert_allclose(jnp.concatenate([o1, o2], 2), o, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(w2, w, rtol=1e-5, atol=1e-5)


def test_feature_maps():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    np.testing.assert_allclose(la.elu_p1(x), np.where(x > 0, x + 1, np.exp(x)), rtol=1e-6)
    # DPFP ν = 2 by the definition, with torch.roll's direction.
    u = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1)
    want = np.concatenate([u * np.roll(u, 1, -1), u * np.roll(u, 2, -1)], -1)
    np.testing.assert_array_equal(la.dpfp(x, 2), want)  # the selection matmul is exact

    def by_rolls(x, n_roll):  # the definition, through autodiff of concatenate and roll
        u = jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], -1)
        return jnp.concatenate([u * jnp.roll(u, i, -1) for i in range(1, n_roll + 1)], -1)

    for n_roll in (1, 2, 3):
        cot = jax.random.normal(jax.random.PRNGKey(n_roll), (3, 8 * n_roll))
        grads = [
            jax.grad(lambda x, f=f, n=n_roll, c=cot: jnp.sum(f(x, n) * c))(x)
            for f in (la.dpfp, by_rolls)
        ]
        np.testing.assert_array_equal(la.dpfp(x, n_roll), by_rolls(x, n_roll))
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)
    assert la.feature_dim("dpfp", 4, n_roll=2) == 16 and la.feature_dim("performer", 4, 3) == 6
    proj = la.orthogonal_random_matrix(jax.random.PRNGKey(1), 4, 3)
    assert proj.shape == (4, 3)
    # Rows 0..2 come from one orthogonal block: after removing the row scales they are
    # orthonormal.
    rows = proj[:3] / jnp.linalg.norm(proj[:3], axis=1, keepdims=True)
    np.testing.assert_allclose(rows @ rows.T, np.eye(3), atol=1e-5)
    phi = la.favor_plus(x, proj)
    xp = np.asarray(x) @ np.asarray(proj)
    off = -0.5 * np.sum(np.asarray(x) ** 2, -1, keepdims=True)
    want = (np.concatenate([np.exp(off + xp), np.exp(off - xp)], -1) + 1e-4) / np.sqrt(6)
    np.testing.assert_allclose(phi, want, rtol=1e-5)
    # FAVOR+ approximates exp(q·k) (no d^-1/4 prescale) for many features.
    big = la.orthogonal_random_matrix(jax.random.PRNGKey(2), 4, 4096)
    q, k = 0.3 * x[0], 0.3 * x[1]
    est = la.favor_plus(q, big) @ la.favor_plus(k, big)
    np.testing.assert_allclose(est, np.exp(np.dot(q, k)), rtol=0.05)


@pytest.mark.parametrize("impl", la.IMPLS)
def test_sum_rule_normaliser(impl):
    """z0 given: q_t·z_t and z_t, z_t = z0 + Σ_{τ≤t} k_τ, against float64 numpy, and equal to
    `normaliser` alone; values and W unchanged; gradients flow through qz like through o
    (against a ones column of values)."""
    q, k, v, _, w0 = _inputs(6)
    z0 = jnp.abs(jax.random.normal(jax.random.PRNGKey(9), w0.shape[:3]))
    run = jax.jit(lambda q, k, v, w0, z0: la.sum_rule(q, k, v, w0, impl=impl, chunk=4, z0=z0))
    o, w, qz, z = run(q, k, v, w0, z0)
    z64 = np.asarray(z0, np.float64)[:, :, None] + np.cumsum(np.asarray(k, np.float64), axis=2)
    np.testing.assert_allclose(
        qz, np.sum(np.asarray(q, np.float64) * z64, -1), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(z, z64[:, :, -1], rtol=1e-5, atol=1e-5)
    qz_alone, z_alone = la.normaliser(q, k, z0, chunk=4)  # the normaliser without values
    np.testing.assert_allclose(qz_alone, qz, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_alone, z, rtol=1e-5, atol=1e-5)
    o_plain, w_plain = la.sum_rule(q, k, v, w0, impl=impl, chunk=4)
    np.testing.assert_allclose(o, o_plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(w, w_plain, rtol=1e-6, atol=1e-6)

    def with_z(q, k):
        return jnp.sum(la.sum_rule(q, k, v, w0, impl=impl, chunk=4, z0=z0)[2] ** 2)

    def ones_column(q, k):
        ones = jnp.ones((*v.shape[:3], 1))
        return jnp.sum(la.sum_rule(q, k, ones, z0[..., None], impl="recurrent")[0][..., 0] ** 2)

    grads = jax.grad(with_z, (0, 1))(q, k), jax.grad(ones_column, (0, 1))(q, k)
    for g, e in zip(*grads, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", la.IMPLS)
def test_time_major_delta_rule_and_normaliser(impl):
    """`time_major=True` (inputs and outputs [t, b, h, ...], what the model's recurrent delta
    layer feeds straight from its projection) gives the numbers and gradients of the [b, h, t]
    form; the normaliser likewise, with a chunk that does not divide t."""
    q, k, v, beta, w0 = _inputs(7)
    z0 = jnp.abs(jax.random.normal(jax.random.PRNGKey(8), w0.shape[:3]))
    tm = lambda x: jnp.moveaxis(x, 2, 0)

    def batch_major(q, k, v, beta, w0, z0):
        o, w = la.delta_rule(q, k, v, beta, w0, impl=impl, chunk=4)
        return o, w, *la.normaliser(q, k, z0, chunk=4)

    def time_major(q, k, v, beta, w0, z0):
        o, w = la.delta_rule(tm(q), tm(k), tm(v), tm(beta), w0, impl=impl, chunk=4, time_major=True)
        qz, z = la.normaliser(tm(q), tm(k), z0, chunk=4, time_major=True)
        return jnp.moveaxis(o, 0, 2), w, jnp.moveaxis(qz, 0, 2), z

    cots = [jax.random.normal(jax.random.PRNGKey(20 + i), x.shape)
            for i, x in enumerate(batch_major(q, k, v, beta, w0, z0))]  # fmt: skip
    loss = lambda fn: lambda *a: sum(jnp.sum(x * c) for x, c in zip(fn(*a), cots, strict=True))
    args = (q, k, v, beta, w0, z0)
    for a, b in zip(batch_major(*args), jax.jit(time_major)(*args), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    grads = [jax.grad(loss(fn), argnums=range(6))(*args) for fn in (batch_major, time_major)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
