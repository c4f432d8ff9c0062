"""The SRU layer: the paper-independent recurrence that SRU and SRU++ share.

Paper: Lei et al. 2018, "Simple Recurrent Units for Highly Parallelizable Recurrence" (arXiv
1709.02755). Reference: asappresearch/sru, `sru` 2.6.0 on PyPI (`SRUCell`, and the elementwise
op that 3.0.0.dev6's SRU++ cell keeps). Notes: specs/recurrent.md part B (B1).

Shape legend: b batch, t time, d_in the layer's input width, n units of an SRU layer
(directions · hidden), k the transform's columns per unit (3 or 4).

Map from the reference to this file:
  SRU cell (B1)              `sru_highway`: U viewed [b, t, n, 3|4] (unit-major, the k matrices
                             fastest: candidate, forget, reset[, skip]); c_t by `scan.sru_scan`
                             (only the elementwise update runs inside lax.scan); r_t and
                             h_t = s + m ⊙ r_t ⊙ (c_t − s) for all t at once outside the scan
  SRUCell (2.6.0)            `SRULayer`: uni- or bidirectional, rescale, projection; the
                             parameter names and layouts are the reference's
  init (B1 for 2.x)          `_sru2_weight` for `weight`; b_f = 0, b_r = highway_bias
                             (`gate_bias`); `scale_x` = √(1 + 2 e^{highway_bias}) under rescale
  dropout (B6)               `recurrence_mask`: the per-call mask m on (c − s), shared over time

SRU++ (models/sru_pp.py) replaces the transform U = W x by attention or a projected linear and
calls `sru_highway` with the same gates; plain SRU's language model is models/sru.py.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.layers import core, scan


def gate_bias(n, highway_bias):
    """Initializer of the gate bias [2n] = [b_f; b_r] = [0 (n); highway_bias (n)]."""

    def init(key, shape, dtype=jnp.float32):
        del key
        assert shape == (2 * n,), shape
        return jnp.concatenate([jnp.zeros(n), jnp.full(n, highway_bias)]).astype(dtype)

    return init


def scale_x(rescale, highway_bias):
    """The skip input's factor: the reference's `scale_x` buffer, set once and never trained."""
    return math.sqrt(1 + 2 * math.exp(highway_bias)) if rescale else 1.0


def _direction_time(x, bidirectional):
    """[t, b, n] -> the backward direction's units (second half) flipped in time. Involutive."""
    if not bidirectional:
        return x
    fwd, bwd = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([fwd, jnp.flip(bwd, 0)], axis=-1)


def sru_highway(u, skip, weight_c, bias, c0, mask_c, *, bidirectional, impl, unroll):
    """The SRU elementwise part of one layer (B1), for all timesteps and directions at once.

    Args:
      u: [b, t, n, k] the transform's output, k = 3 (candidate, forget, reset) or 4 (+ skip).
      skip: [b, t, n] float, the highway input x · scale_x when k == 3; None for k == 4 or
        without a skip term.
      weight_c: [2n] = [v_f; v_r] float32, or None (no v ⊙ c terms).
      bias: [2n] = [b_f; b_r] float32.
      c0: [b, n] float32 initial state; for two directions [c_fwd; c_bwd] along n.
      mask_c: [b, n] float32 dropout mask on (c − s), or None.
      bidirectional: the second half of the n units runs backward in time.
      impl, unroll: see `scan.sru_scan`.
    Returns:
      (h [b, t, n] float32, c_last [b, n] float32: the forward direction's state after the last
      step and the backward direction's after the first).
    """
    n = u.shape[2]
    assert bias.shape == (2 * n,) and c0.shape == (u.shape[0], n), (bias.shape, c0.shape)
    # Time-major, each direction in its own time order; U's columns stay unit-major.
    tm = lambda y: _direction_time(jnp.swapaxes(y.astype(jnp.float32), 0, 1), bidirectional)
    b_f, b_r = (z[None, None] for z in jnp.split(bias, 2))
    cand, fpre, rpre = tm(u[..., 0]), tm(u[..., 1]) + b_f, tm(u[..., 2]) + b_r  # [t, b, n]
    s = tm(u[..., 3]) if u.shape[-1] == 4 else (None if skip is None else tm(skip))
    v_f, v_r = (None, None) if weight_c is None else jnp.split(weight_c, 2)
    c, c_last = scan.sru_scan(cand, fpre, v_f, c0, impl=impl, unroll=unroll)
    if v_r is not None:
        c_prev = jnp.concatenate([c0[None], c[:-1]], axis=0)
        rpre = rpre + v_r[None, None] * c_prev
    gate = jax.nn.sigmoid(rpre)
    if mask_c is not None:
        gate = gate * mask_c[None]
    h = c * gate if s is None else s + (c - s) * gate
    return jnp.swapaxes(_direction_time(h, bidirectional), 0, 1), c_last


def recurrence_mask(rate, shape, train):
    """SRU's variational mask on (c − s): one [b, n] draw per call, shared over time (B1).

    Call it inside a compact module (it creates a dropout submodule there). Returns the [b, n]
    float32 mask, or None when it is off (evaluation, or rate 0)."""
    if rate <= 0 or not train:
        return None
    return core.Dropout(rate)(jnp.ones(shape, jnp.float32), deterministic=False)


def _sru2_weight(d_w, n, k, dropout, rescale, highway_bias, vc_terms):
    """sru 2.6.0 init of `weight` [d_w, n·k]: U(±√(3/d_w)), candidate column · √(1−p), gate
    columns · √0.5 (when weight_c is used), k = 4 skip column · scale_x under rescale."""

    def init(key, shape, dtype=jnp.float32):
        w = core.uniform(math.sqrt(3.0 / d_w))(key, shape, jnp.float32).reshape(d_w, n, k)
        col = jnp.ones((k,), jnp.float32)
        if dropout > 0:
            col = col.at[0].multiply(math.sqrt(1 - dropout))
        if rescale and k == 4:
            col = col.at[3].multiply(scale_x(True, highway_bias))
        if vc_terms:
            col = col.at[1:3].multiply(math.sqrt(0.5))
        return (w * col[None, None]).reshape(shape).astype(dtype)

    return init


class SRULayer(nn.Module):
    """One SRU layer, as `sru.SRUCell` 2.6.0 (same parameter names and layouts).

    Attributes:
      hidden_size: state width per direction; the output has n = directions · hidden_size units.
      bidirectional: add a backward-in-time direction (an encoder layer; not causal).
      dropout_rate: p of the recurrence mask on (c − s) (0 for a stack's last layer).
      highway_bias: initial reset-gate bias b_r.
      rescale: multiply the k = 3 skip input by √(1 + 2 e^{highway_bias}).
      has_skip_term: the highway term s; without it h = m ⊙ r ⊙ c.
      projection_size: factorise W as W_proj W when 0 < p < min(d_in, n), as 2.6.0 does.
      vc_terms: v ⊙ c in the gates (False: 2.6.0's v1, no weight_c).
      weight_c_init: U(±weight_c_init); None is 2.6.0's default U(±√3)·√0.5.
      dtype: matmul dtype; the recurrence and outputs' state are float32.
      scan_impl, unroll: see `scan.sru_scan`.
    """

    hidden_size: int
    bidirectional: bool = False
    dropout_rate: float = 0.0
    highway_bias: float = 0.0
    rescale: bool = False
    has_skip_term: bool = True
    projection_size: int = 0
    vc_terms: bool = True
    weight_c_init: float | None = None
    dtype: jnp.dtype = jnp.float32
    scan_impl: str = "auto"
    unroll: int = 1

    @nn.compact
    def __call__(self, x, c0=None, *, train):
        """x: [b, t, d_in]; c0: [b, n] or None. Returns (h [b, t, n] dtype, c_last [b, n] f32)."""
        b, t, d_in = x.shape
        n = self.hidden_size * (2 if self.bidirectional else 1)
        k = 4 if self.has_skip_term and d_in != n else 3
        proj = self.projection_size if 0 < self.projection_size < min(d_in, n) else 0
        c0 = jnp.zeros((b, n), jnp.float32) if c0 is None else c0
        assert c0.shape == (b, n), (c0.shape, (b, n))
        xc = x.astype(self.dtype)
        if proj:
            w_proj = self.param("weight_proj", core.uniform(math.sqrt(3.0 / d_in)), (d_in, proj))
            xc = jnp.einsum("btd,dp->btp", xc, w_proj.astype(self.dtype))
        d_w = proj or d_in
        init = _sru2_weight(
            d_w, n, k, self.dropout_rate, self.rescale, self.highway_bias, self.vc_terms
        )
        weight = self.param("weight", init, (d_w, n * k))
        u = jnp.einsum("btd,df->btf", xc, weight.astype(self.dtype)).reshape(b, t, n, k)
        weight_c = None
        if self.vc_terms:
            bound = math.sqrt(1.5) if self.weight_c_init is None else self.weight_c_init
            weight_c = self.param("weight_c", core.uniform(bound), (2 * n,))
        bias = self.param("bias", gate_bias(n, self.highway_bias), (2 * n,))
        skip = None
        if self.has_skip_term and k == 3:
            skip = x.astype(jnp.float32) * scale_x(self.rescale, self.highway_bias)
        h, c = sru_highway(
            u,
            skip,
            weight_c,
            bias,
            c0,
            recurrence_mask(self.dropout_rate, (b, n), train),
            bidirectional=self.bidirectional,
            impl=self.scan_impl,
            unroll=self.unroll,
        )
        return h.astype(self.dtype), c
