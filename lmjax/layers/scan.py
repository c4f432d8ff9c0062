"""Elementwise recurrences over time, accumulated in float32, with hand-written backward passes.

Shape legend: t time, b batch, d features. Arrays here are time-major ([t, b, d]); the models
stay batch-major and transpose only around these calls.

Two recurrences:
  linear_scan   h_t = a_t ⊙ h_{t-1} + x_t  (the RG-LRU / SRU-without-v⊙c form). It is
                associative, so besides `lax.scan` it runs in log depth with
                `lax.associative_scan` (`impl="associative"`).
  sru_scan      c_t = u_t + (c_{t-1} - u_t) ⊙ σ(p_t + v ⊙ c_{t-1}), the SRU cell state with the
                vector recurrence term v ⊙ c (Lei et al. 2018, eq. 1-2; specs/recurrent.md B1).
                The gate depends on c_{t-1}, so the forward pass is sequential (`lax.scan`).

Why custom VJPs: both backward passes are one *linear* reverse recurrence in the cotangent λ of
the state, λ_{t-1} = g_{t-1} + a_t ⊙ λ_t, whose coefficient a_t = ∂c_t/∂c_{t-1} is elementwise
and can be formed for all t at once from the saved states. So the backward runs one
`linear_scan` (sequential or associative, `impl`) and every other gradient is a parallel
elementwise expression; the gradient of v is one reduction over t and b afterwards. Autodiff of
`lax.scan` would instead save per-step residuals and accumulate v's gradient inside the loop.

`impl="auto"` resolves per backend from `AUTO_IMPL` (chosen by `lmjax.bench`, see there).
"""

import functools

import jax
import jax.numpy as jnp

IMPLS = ("sequential", "associative")
# Measured with `python -m lmjax.bench --config=configs/sru_pp.py:cpu` (scan_impl=...) on CPU.
# No GPU/TPU measurement yet: they keep the sequential scan until a benchmark says otherwise.
AUTO_IMPL = {"cpu": "sequential", "gpu": "sequential", "tpu": "sequential"}


def resolve_impl(impl):
    """'auto' -> the default for the current backend; otherwise checks the name."""
    if impl == "auto":
        return AUTO_IMPL.get(jax.default_backend(), "sequential")
    if impl not in IMPLS:
        raise ValueError(f"unknown scan impl {impl!r}; allowed: auto, {', '.join(IMPLS)}")
    return impl


def _shift_prev(h0, h):
    """[h0, h_0, ..., h_{t-2}]: the state each step started from. h0: [...]; h: [t, ...]."""
    return jnp.concatenate([h0[None], h[:-1]], axis=0)


def _linear_forward(a, x, h0, impl, unroll, reverse):
    if impl == "associative":
        first = -1 if reverse else 0
        x = x.at[first].add(a[first] * h0)  # fold the initial state into the first input

        def combine(left, right):  # (a_l, x_l) then (a_r, x_r), in scan order
            a_l, x_l = left
            a_r, x_r = right
            return a_r * a_l, a_r * x_l + x_r

        _, h = jax.lax.associative_scan(combine, (a, x), reverse=reverse, axis=0)
        return h

    def step(h, ax):
        a_t, x_t = ax
        h = a_t * h + x_t
        return h, h

    _, h = jax.lax.scan(step, h0, (a, x), reverse=reverse, unroll=unroll)
    return h


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _linear_scan(a, x, h0, impl, unroll, reverse):
    return _linear_forward(a, x, h0, impl, unroll, reverse)


def _linear_scan_fwd(a, x, h0, impl, unroll, reverse):
    h = _linear_forward(a, x, h0, impl, unroll, reverse)
    return h, (a, h, h0)


def _linear_scan_bwd(impl, unroll, reverse, res, g):
    a, h, h0 = res
    zero = jnp.zeros_like(a[:1])
    # λ_t = g_t + a_{t+1} λ_{t+1} (t+1 = the next step in scan order): the same recurrence run
    # the other way with shifted coefficients.
    if reverse:
        a_next, h_prev = jnp.concatenate([zero, a[:-1]], 0), jnp.concatenate([h[1:], h0[None]], 0)
    else:
        a_next, h_prev = jnp.concatenate([a[1:], zero], 0), _shift_prev(h0, h)
    lam = _linear_forward(a_next, g, jnp.zeros_like(h0), impl, unroll, not reverse)
    first = -1 if reverse else 0
    return lam * h_prev, lam, a[first] * lam[first]


_linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def linear_scan(a, x, h0, *, reverse=False, impl="sequential", unroll=1):
    """h_t = a_t ⊙ h_{t-1} + x_t for t = 0..T-1 (or T-1..0 when `reverse`), from h0.

    Args:
      a: [t, b, d] coefficients; x: [t, b, d] inputs; h0: [b, d] initial state. Any trailing
        shape works as long as a, x and h0[None] agree; everything is cast to float32.
      reverse: run from the last timestep to the first (a backward direction).
      impl: 'sequential' (lax.scan), 'associative' (lax.associative_scan) or 'auto'.
      unroll: lax.scan unroll factor (sequential only).
    Returns:
      (h [t, b, d] float32 in input time order, h_last [b, d]: the state after the final step).
    """
    impl = resolve_impl(impl)
    f32 = lambda y: jnp.asarray(y, jnp.float32)
    h = _linear_scan(f32(a), f32(x), f32(h0), impl, unroll, reverse)
    return h, h[0] if reverse else h[-1]


def associative_linear_scan(a, x, h0, *, reverse=False):
    """`linear_scan` in log depth with `lax.associative_scan` (same arguments and results)."""
    return linear_scan(a, x, h0, reverse=reverse, impl="associative")


def sru_step(v, c, up_t):
    """One SRU cell-state step (the reference loop). v: [d]; c: [b, d]; up_t = (u_t, p_t)."""
    u_t, p_t = up_t
    f = jax.nn.sigmoid(p_t + v[None] * c)
    # The reference's operation order, u + (c - u) f, so float results match its kernels.
    c = u_t + (c - u_t) * f
    return c, c


def _sru_forward(u, p, v, c0, unroll):
    _, c = jax.lax.scan(functools.partial(sru_step, v), c0, (u, p), unroll=unroll)
    return c


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sru_scan(u, p, v, c0, impl, unroll):
    del impl
    return _sru_forward(u, p, v, c0, unroll)


def _sru_scan_fwd(u, p, v, c0, impl, unroll):
    del impl
    c = _sru_forward(u, p, v, c0, unroll)
    return c, (u, p, v, c0, c)


def _sru_scan_bwd(impl, unroll, res, g):
    u, p, v, c0, c = res
    c_prev = _shift_prev(c0, c)
    v = v[None, None]
    f = jax.nn.sigmoid(p + v * c_prev)
    diff = c_prev - u
    df_dp = f * (1 - f)
    # a_t = ∂c_t/∂c_{t-1} = f_t + (c_{t-1} - u_t) f_t (1 - f_t) v, and λ_t = g_t + a_{t+1} λ_{t+1}.
    a = f + diff * df_dp * v
    a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)
    lam, _ = linear_scan(a_next, g, jnp.zeros_like(c0), reverse=True, impl=impl, unroll=unroll)
    dp = lam * diff * df_dp
    dv = jnp.einsum("tbd,tbd->d", dp, c_prev)
    return lam * (1 - f), dp, dv, a[0] * lam[0]


_sru_scan.defvjp(_sru_scan_fwd, _sru_scan_bwd)


def sru_scan(u, p, v, c0, *, impl="sequential", unroll=1):
    """The SRU cell state c_t = u_t + (c_{t-1} - u_t) ⊙ σ(p_t + v ⊙ c_{t-1}), float32.

    Args:
      u: [t, b, d] candidate (x̃_t, the first column of U).
      p: [t, b, d] forget-gate pre-activation without the v ⊙ c term (U's second column + b_f).
      v: [d] the forget gate's vector recurrence weight v_f; None drops the term, which turns the
        update into `linear_scan(a=f, x=(1 - f) u)` (both directions then follow `impl`).
      c0: [b, d] initial state.
      impl: which scan runs the (linear) backward recurrence, and the forward when v is None.
      unroll: lax.scan unroll factor.
    Returns:
      (c [t, b, d] float32, c_last [b, d]).
    """
    impl = resolve_impl(impl)
    u, p, c0 = (jnp.asarray(y, jnp.float32) for y in (u, p, c0))
    if v is None:
        f = jax.nn.sigmoid(p)
        return linear_scan(f, (1 - f) * u, c0, impl=impl, unroll=unroll)
    c = _sru_scan(u, p, jnp.asarray(v, jnp.float32), c0, impl, unroll)
    return c, c[-1]
