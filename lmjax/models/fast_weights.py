"""Linear Transformers as fast weight programmers (Schlag, Irie & Schmidhuber, ICML 2021,
"Linear Transformers Are Secretly Fast Weight Programmers", arXiv 2102.11174; reference
IDSIA/lmtool-fwms at 52ada3d, a Transformer-XL fork: specs/attention.md B.1-B.9, quirks D.B).

Shape legend: b batch, t time, d d_model, h heads, k feature width (dim φ), v = e head_dim,
f d_ff, m Performer features.

Map from the reference to this file:
  word embedding x √d, tied output    `FastWeightsLM`: one N(0, 0.02) table (`embed` + `out_bias`,
                                      or the adaptive softmax of B.7, `layers/adaptive.py`)
  positions (B.3)                     absolute sinusoids [sin; cos] added to the embedding,
                                      running *backwards* (the last token of a window has
                                      position 0); `no_pos` drops them; `clamp_len` clips
  layer                               post-LN: LN(h + Drop(W_o A(h))), then the Transformer-XL
                                      FF (`transformer_xl.FeedForward`), LN eps 1e-5
  init (`weights_init`)               N(0, 0.02) weights, biases 0, LN gains N(1, 0.02)
  type 2 `MultiHeadAttn`              feature_map='softmax': causal softmax, dropatt on probs
  types 4/5/6 (sum rule, L x L)       feature_map='linear'|'performer'|'dpfp', update_rule='sum':
                                      y_t = s (W_tᵀ φ(q_t)) / (s φ(q_t)·z_t + 1e-5), s = 1/√e,
                                      z_t = Σ_{τ≤t} φ(k_τ); with `skip_attn_normalization`
                                      y = s W_tᵀ φ(q)
  types 24/25/26 (delta rule)         update_rule='delta': φ(q), φ(k) sum-normalised, β = σ(w_β x),
                                      W_t = W_{t-1} + k̄_t (β_t (v_t - W_{t-1}ᵀ k̄_t))ᵀ, o = W_tᵀ q̄_t,
                                      y = s o / (q̄_t·z_t + 1e-5) (z not β-weighted), or s o
                                      with `skip_attn_normalization`
  types 44/45/46 (`Norm` classes)     `attn_norm`: kd_t = z_{t-1}·k̄_t (kd_1 = 1 from a fresh
                                      state), β' = β kd, k' = k̄ / (kd + 1e-5) in the update;
                                      like the reference, only with the output normalisation on
  q_net + kv_net / qkvb_net           the reference's layouts, so its weights load directly:
                                      softmax and sum rule [q | k | v] head-major; delta rule one
                                      `qkvb_net` with per head [q(e), k(e), v(e), β(1)]
  carry_over_fast_weight (B.6)        `FastWeightState`: each layer's W and z, carried across
                                      windows (stop-gradient); otherwise every window starts
                                      from W = 0, as in the reference's training
  Performer's P (B.4)                 `proj_matrix` [e, m] per layer. Training draws a fresh P on
                                      every forward from the 'performer' RNG stream;
                                      `post_update` writes the P the step used into the params,
                                      so evaluation uses the matrix training ended with and,
                                      unlike the reference (P is not in its state_dict), that
                                      matrix is in the checkpoint

The fast weights are computed by `layers/linear_attention.py`: recurrent (scan, custom VJP) or
chunkwise (`fast_weight_impl`), equal to each other and to a float64 loop. The reference's
recurrent sum types 34/35 differ from 4/5 only by an output factor 1/√e (foldable into W_o)
and where the 1e-5 sits; they are not a separate mode here.

Decoding: `decode_carry(batch, total_len)` starts a state whose positions count down from the
final length, so `--mode=generate` runs one recurrent step per token (O(1) state) and gives the
numbers of one forward over prompt + continuation, positions included. The softmax model has
no state and is decoded by rerunning that window (generate.py).

Not reproduced: mem_len > 0 (Transformer-XL memories for types 2/4/5/6; the paper's scripts use
0), dropatt for the fast-weight maps (there is no attention matrix to drop from), `pre_lnorm`.
"""

import dataclasses
import functools
import logging
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.errors import UserError
from lmjax.layers import adaptive, attention, core
from lmjax.layers import linear_attention as la
from lmjax.models import base, transformer_xl

_INIT = nn.initializers.normal(0.02)
_EPS = 1e-5  # the reference layers' `eps` in every denominator


@dataclasses.dataclass(frozen=True)
class FastWeightsConfig:
    vocab_size: int = 256
    d_model: int = 128
    num_heads: int = 8
    head_dim: int = 16
    d_ff: int = 2048
    num_layers: int = 16
    dropout_rate: float = 0.1  # embeddings, residual branches, FF, final hidden
    dropout_attn: float = 0.0  # softmax probabilities (feature_map='softmax' only)
    feature_map: str = "linear"  # softmax | linear (elu+1) | performer (FAVOR+) | dpfp
    update_rule: str = "sum"  # sum | delta (softmax has no rule: leave "sum")
    attn_norm: bool = False  # delta rule: the key normalisation of types 44-46
    skip_attn_normalization: bool = False  # drop the output normaliser (reference flag)
    performer_proj_dim: int = 16  # m
    dpfp_n_roll: int = 2  # ν
    carry_over_fast_weight: bool = False  # carry W and z across windows (needs mem_len 0)
    no_pos: bool = False  # no position embedding (the carry-over scripts)
    mem_len: int = 0  # only 0: the reference scripts' value
    clamp_len: int = 0  # positions above this use this one; 0 = no clamp
    adaptive_cutoffs: tuple = ()  # wt103: (20000, 40000, 200000), tied, div_val 1
    fast_weight_impl: str = "auto"  # recurrent | chunkwise | auto (layers/linear_attention.py)
    chunk_size: int = 64  # positions per chunk of the chunkwise form
    unroll: int = 8  # time steps per loop iteration of the recurrent form (XLA:CPU: 8 is ~25%
    # faster than 1 for the delta rule at the cpu shape; 16 is slower)
    dtype: str = "float32"  # projections and FF; fast weights, LN, softmax, loss stay float32

    def __post_init__(self):
        check = _check_config(self)
        if check:
            raise UserError(check)
        if self.carry_over_fast_weight and not self.no_pos and self.feature_map != "softmax":
            _warn_once(
                "model.carry_over_fast_weight with positions: every window restarts its "
                "positions at the carried state (the reference's scripts pair carry-over with "
                "no_pos=True)"
            )

    @property
    def stateful(self):
        return self.feature_map != "softmax"

    @property
    def key_dim(self):
        return la.feature_dim(self.feature_map, self.head_dim, self.performer_proj_dim,
                              self.dpfp_n_roll)  # fmt: skip


def _check_config(c):
    """A one-line message for the first bad field, or ''."""
    if c.feature_map not in la.FEATURE_MAPS:
        return (
            f"model.feature_map={c.feature_map!r} is unknown; known: {', '.join(la.FEATURE_MAPS)}"
        )
    if c.update_rule not in la.UPDATE_RULES:
        return (
            f"model.update_rule={c.update_rule!r} is unknown; known: {', '.join(la.UPDATE_RULES)}"
        )
    if c.fast_weight_impl not in ("auto", *la.IMPLS):
        return f"model.fast_weight_impl={c.fast_weight_impl!r}; known: auto, {', '.join(la.IMPLS)}"
    if c.mem_len != 0:
        if c.carry_over_fast_weight:
            return (
                f"model.mem_len={c.mem_len} with model.carry_over_fast_weight: the reference "
                "requires mem_len 0 (the fast weights are the memory)"
            )
        return f"model.mem_len={c.mem_len}: only 0 is supported (the paper's scripts use 0)"
    if c.feature_map == "softmax":
        if c.update_rule != "sum":
            return "model.update_rule='delta' needs a feature map (linear, performer, dpfp)"
        if c.carry_over_fast_weight:
            return "model.carry_over_fast_weight needs a feature map: softmax has no fast weights"
    elif c.dropout_attn:
        return (
            f"model.dropout_attn={c.dropout_attn}: only feature_map='softmax' has attention weights"
        )
    if c.attn_norm and c.update_rule != "delta":
        return "model.attn_norm is the delta rule's key normalisation (types 44-46)"
    for name in ("d_model", "num_heads", "head_dim", "d_ff", "num_layers", "chunk_size", "unroll",
                 "performer_proj_dim", "dpfp_n_roll"):  # fmt: skip
        if getattr(c, name) < 1:
            return f"model.{name}={getattr(c, name)} must be positive"
    if c.d_model % 2:
        return f"model.d_model={c.d_model} must be even (the sinusoid)"
    return ""


@functools.cache
def _warn_once(message):
    logging.warning(message)


class FastWeightState(NamedTuple):
    """w: one [b, h, k, v] float32 per layer; z: one [b, h, k] per layer (Σ of the keys);
    ahead: [b] int32, the tokens after this window in its position frame (0 except when
    decoding, where positions count down to the end of the continuation)."""

    w: tuple
    z: tuple
    ahead: jax.Array


def _proj_init(head_dim, proj_dim):
    return lambda key, shape, dtype=jnp.float32: la.orthogonal_random_matrix(
        key, head_dim, proj_dim
    )


class _HeadProjection(nn.Module):
    """An unbiased projection whose kernel is the reference's fused [d, h·Σ sizes] matrix
    (parameter `kernel`, as nn.Dense names it, so reference weights load as they are), applied
    as one einsum per part straight into [b, h, t, size] float32.

    One Dense followed by slicing and a [b, t, h] -> [b, h, t] transpose is the same product, but
    its backward assembled the [b, t, h·Σ sizes] gradient from padded slices in one transposing
    loop (12-15 ms a layer for the delta rule's interleaved 776 columns on XLA:CPU, ~10% of the
    step); per-part einsums have per-part gradients and no slicing of activations.

    Attributes:
      num_heads: h.
      sizes: the parts' widths per head, in the kernel's order.
      head_major: True: per head [part 0 | part 1 | ...] (qkvb_net's interleaving); False: per
        part all heads [part 0 (h x size) | part 1 ...] (q_net, kv_net).
      dtype: the product's dtype.
      groups: 0: x is [b, t, d] and the parts come back [b, h, t, size]; g > 0: x is time-major
        [t, b, d] and the parts come back per group of h/g consecutive heads, each
        [t, b, h/g, size] (the layout the recurrent scans walk, straight from the product).
    """

    num_heads: int
    sizes: tuple
    head_major: bool
    dtype: jnp.dtype
    groups: int = 0

    @nn.compact
    def __call__(self, x):
        d, nh = x.shape[-1], self.num_heads
        kernel = self.param("kernel", _INIT, (d, nh * sum(self.sizes)), jnp.float32)
        if self.head_major:
            w = kernel.reshape(d, nh, sum(self.sizes))
            ends = [sum(self.sizes[: i + 1]) for i in range(len(self.sizes))]
            parts = [w[..., end - size : end] for size, end in zip(self.sizes, ends, strict=True)]
        else:
            (size,) = set(self.sizes)
            w = kernel.reshape(d, len(self.sizes), nh, size)
            parts = [w[:, i] for i in range(len(self.sizes))]
        x = x.astype(self.dtype)
        product = lambda p: jnp.einsum(
            "tbd,dhe->tbhe" if self.groups else "btd,dhe->bhte", x, p.astype(self.dtype)
        ).astype(jnp.float32)
        if not self.groups:
            return [product(p) for p in parts]
        # One product per part over all heads, then the groups' head slices of its output: the
        # [2048, 256] x [256, 776] projection forward + backward took 21 ms this way against 25
        # ms as one product per (part, group) (2-core CPU, jitted grad, medians of 30).
        hg = nh // self.groups
        ys = [product(p) for p in parts]
        return [[y[:, :, g * hg : (g + 1) * hg] for y in ys] for g in range(self.groups)]


class _HeadOutput(nn.Module):
    """o_net for per-group time-major head outputs: the same parameter as
    `nn.Dense(d, use_bias=False, name="o_net")` on the [b, t, h·e] concatenation (`kernel`
    [h·e, d], heads in order), applied per group of heads and summed, then put batch-major.

    Attributes:
      features: d; head_dim: e; dtype: the product's dtype.
    """

    features: int
    head_dim: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, outs):
        """outs: per group, [t, b, h/g, e]. Returns [b, t, d]."""
        hg, e = outs[0].shape[2], self.head_dim
        kernel = self.param("kernel", _INIT, (len(outs) * hg * e, self.features), jnp.float32)
        kernel = kernel.reshape(len(outs), hg, e, self.features).astype(self.dtype)
        out = sum(
            jnp.einsum("tbhe,hed->tbd", o.astype(self.dtype), kernel[g]) for g, o in enumerate(outs)
        )
        return jnp.swapaxes(out, 0, 1)


class _Attention(nn.Module):
    """One attention sub-layer with its post-LN residual.

    Attributes:
      config: the model's FastWeightsConfig (static sizes and switches only).
    """

    config: FastWeightsConfig

    @nn.compact
    def __call__(self, h, proj, w0, z0, fresh, *, train):
        """h: [b, t, d] float32; proj: [e, m] Performer matrix drawn for this forward, or None
        (use the stored one); w0: [b, h, k, v], z0: [b, h, k] the state before the window;
        fresh: [b] bool, rows whose state is the initial one (attn_norm only, else None).
        Returns (h, (w, z))."""
        c = self.config
        b, t, d = h.shape
        nh, e = c.num_heads, c.head_dim
        dtype = jnp.dtype(c.dtype)
        dense = lambda n, name: nn.Dense(
            n, use_bias=False, kernel_init=_INIT, dtype=dtype, name=name
        )
        scale = e**-0.5
        delta = c.update_rule == "delta" and c.feature_map != "softmax"
        # The recurrent delta rule runs time-major from the projection to o_net, per group of
        # heads (`la.scan_groups`): the products write and read the layout the scans walk.
        # Through [b, h, t], transposes and group slices around the scans took ~95 ms of the
        # ~600 ms step; the sub-layer's forward + backward at the cpu shape went 62 -> 55 ms
        # (with the query normalisation moved to the output: `_delta`; 2-core CPU, 2026-12-08).
        groups = la.scan_groups(nh) if delta and self._recurrent() else 0
        if groups:
            parts = _HeadProjection(nh, (e, e, e, 1), True, dtype, groups, name="qkvb_net")(
                jnp.swapaxes(h, 0, 1)
            )
        elif delta:
            q, k, v, beta = _HeadProjection(nh, (e, e, e, 1), True, dtype, name="qkvb_net")(h)
            beta = jax.nn.sigmoid(beta[..., 0])  # [b, h, t]
        else:
            (q,) = _HeadProjection(nh, (e,), False, dtype, name="q_net")(h)
            k, v = _HeadProjection(nh, (e, e), False, dtype, name="kv_net")(h)
        if c.feature_map == "softmax":
            out, state = self._softmax(q * scale, k, v, train=train), (w0, z0)
        else:
            if c.feature_map == "performer":
                stored = self.param("proj_matrix", _proj_init(e, c.performer_proj_dim),
                                    (e, c.performer_proj_dim))  # fmt: skip
                proj = jax.lax.stop_gradient(stored if proj is None else proj)
                phi = lambda x: la.favor_plus(x, proj)
            elif c.feature_map == "dpfp":
                phi = functools.partial(la.dpfp, n_roll=c.dpfp_n_roll)
            else:
                phi = la.elu_p1
            if groups:
                outs, state = self._delta_groups(parts, phi, w0, z0, fresh)
                out = _HeadOutput(d, e, dtype, name="o_net")([o * scale for o in outs])
            else:
                q, k = phi(q), phi(k)
                if delta:
                    out, state = self._delta(q, k, v, beta, w0, z0, fresh)
                else:
                    out, state = self._sum(q, k, v, w0, z0)
                out = out * scale if delta or c.skip_attn_normalization else out
        if not groups:
            out = jnp.swapaxes(out, 1, 2).reshape(b, t, nh * e)
            out = dense(d, "o_net")(out.astype(dtype))
        out = core.Dropout(c.dropout_rate)(out, deterministic=not train)
        ln = transformer_xl.layer_norm("layer_norm")  # eps 1e-5, gains N(1, 0.02)
        return ln(h + out.astype(jnp.float32)), state

    def _softmax(self, q, k, v, *, train):
        """Type 2: causal softmax(q kᵀ) v, q already scaled. Without dropatt the normalisation
        divides the [b, h, t, v] output, not the [b, h, t, t] probabilities: one pass over the
        t x t scores fewer forward and backward (~8% of the sub-layer on XLA:CPU at the cpu
        shape); the max is a constant of the softmax, so it carries no gradient."""
        t = q.shape[2]
        scores = jnp.einsum("bhtx,bhsx->bhts", q, k)
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        if self.config.dropout_attn and train:
            probs = attention.masked_softmax(scores, mask=causal)
            probs = core.Dropout(self.config.dropout_attn)(probs, deterministic=False)
            return jnp.einsum("bhts,bhsx->bhtx", probs, v)
        scores = jnp.where(causal, scores, -jnp.inf)  # the diagonal keeps every row finite
        top = jax.lax.stop_gradient(scores.max(-1, keepdims=True))
        e = jnp.exp(scores - top)
        return jnp.einsum("bhts,bhsx->bhtx", e, v) / e.sum(-1, keepdims=True)

    def _rule_kwargs(self):
        c = self.config
        return dict(impl=c.fast_weight_impl, chunk=c.chunk_size, unroll=c.unroll)

    def _sum(self, q, k, v, w0, z0):
        """Types 4/5/6: y = s W_tᵀ q / (s q·z_t + eps) (the L x L form's normaliser), q·z_t
        from `sum_rule`'s normaliser (chunkwise: the row sums of the chunk scores it already
        has)."""
        c = self.config
        o, w, qz, z = la.sum_rule(q, k, v, w0, z0=z0, **self._rule_kwargs())
        if not c.skip_attn_normalization:
            s = c.head_dim**-0.5
            o = s * o / (s * qz[..., None] + _EPS)
        return o, (w, z)

    def _recurrent(self):
        return la.resolve_impl(self.config.fast_weight_impl, "delta") == "recurrent"

    def _delta_groups(self, parts, phi, w0, z0, fresh):
        """`_delta` per group of heads, time-major: parts[g] = [q, k, v, β logit], each
        [t, b, h/g, ...]. Returns ([o_g [t, b, h/g, e]], (W, z) over all heads)."""
        hg = self.config.num_heads // len(parts)
        outs, ws, zs = [], [], []
        for g, (q, k, v, beta) in enumerate(parts):
            heads = slice(g * hg, (g + 1) * hg)
            o, (w, z) = self._delta(
                phi(q), phi(k), v, jax.nn.sigmoid(beta[..., 0]), w0[:, heads], z0[:, heads],
                fresh, time_major=True,
            )  # fmt: skip
            outs.append(o)
            ws.append(w)
            zs.append(z)
        return outs, (jnp.concatenate(ws, axis=1), jnp.concatenate(zs, axis=1))

    def _delta(self, q, k, v, beta, w0, z0, fresh, time_major=False):
        """Types 24-26 (and 44-46 with attn_norm); the caller multiplies by s. q, k, v
        [b, h, t, ...] and β [b, h, t], or all [t, b, h, ...] with `time_major`."""
        c = self.config
        # The query's sum normalisation moves to the output, where it is one division fewer
        # forward and backward: W_tᵀ q̄ / (q̄·z_t + eps) = W_tᵀ q / (q·z_t + eps Σq), and
        # W_tᵀ q̄ = W_tᵀ q / Σq without the normaliser. The keys' enters the recurrence.
        q_sum, k = jnp.sum(q, axis=-1), la.sum_norm(k)
        normalise = not c.skip_attn_normalization
        # q·z_t with z_t = z0 + Σ_{τ≤t} k̄_τ (not β-weighted).
        qz, z = la.normaliser(q, k, z0, chunk=c.chunk_size, time_major=time_major)
        k_write, beta_write = k, beta
        if c.attn_norm and normalise:
            kd = la.normaliser(k, k, z0, chunk=c.chunk_size, time_major=time_major)[0]
            kd = kd - jnp.einsum("...k,...k->...", k, k)  # z_{t-1}·k̄_t
            t_axis = 0 if time_major else 2
            first = jax.lax.index_in_dim(kd, 0, t_axis, keepdims=False)  # [b, h]
            first = jnp.where(fresh[:, None], 1.0, first)  # kd_1 = 1 from a fresh state
            kd = jax.lax.dynamic_update_index_in_dim(kd, first, 0, t_axis)
            beta_write, k_write = beta * kd, k / (kd[..., None] + _EPS)
        o, w = la.delta_rule(
            q, k_write, v, beta_write, w0, time_major=time_major, **self._rule_kwargs()
        )
        return o / (qz + _EPS * q_sum if normalise else q_sum)[..., None], (w, z)


class _Layer(nn.Module):
    config: FastWeightsConfig

    @nn.compact
    def __call__(self, h, proj, w0, z0, fresh, *, train):
        c = self.config
        h, state = _Attention(c, name="attn")(h, proj, w0, z0, fresh, train=train)
        ff = transformer_xl.FeedForward(c.d_ff, c.dropout_rate, jnp.dtype(c.dtype), name="ff")
        return ff(h, train=train), state


class FastWeightsLM(base.Family):
    """The lmtool-fwms language model (types 2, 4-6, 24-26, 44-46 by fields).

    Attributes:
      config: a FastWeightsConfig.
    """

    config: FastWeightsConfig
    rng_streams = ("dropout", "performer")

    def init_carry(self, batch_size):
        c = self.config
        if not (c.stateful and c.carry_over_fast_weight):
            return None
        return self.decode_carry(batch_size, 0)

    def decode_carry(self, batch_size, total_len):
        c = self.config
        if not c.stateful:
            return None
        w = jnp.zeros((batch_size, c.num_heads, c.key_dim, c.head_dim), jnp.float32)
        z = jnp.zeros((batch_size, c.num_heads, c.key_dim), jnp.float32)
        ahead = jnp.full((batch_size,), total_len, jnp.int32)
        return FastWeightState((w,) * c.num_layers, (z,) * c.num_layers, ahead)

    def describe(self):
        c = self.config
        impl = "-" if not c.stateful else la.resolve_impl(c.fast_weight_impl, c.update_rule)
        return {"fast_weight_impl": impl, "key_dim": c.key_dim if c.stateful else c.head_dim}

    def _performer_key(self):
        return self.make_rng("performer")

    def _draw_projections(self, key):
        c = self.config
        draw = lambda i: la.orthogonal_random_matrix(
            jax.random.fold_in(key, i), c.head_dim, c.performer_proj_dim
        )
        return [draw(i) for i in range(c.num_layers)]

    def post_update(self, params, rngs=None):
        """Performer: store the matrices this step's forward drew (its 'performer' key)."""
        if self.config.feature_map != "performer" or rngs is None:
            return params
        key = self.apply({"params": params}, rngs=rngs, method=FastWeightsLM._performer_key)
        params = dict(params)
        for i, proj in enumerate(self._draw_projections(key)):
            layer = dict(params[f"layer_{i}"])
            layer["attn"] = {**layer["attn"], "proj_matrix": proj}
            params[f"layer_{i}"] = layer
        return params

    def nll(self, tokens, targets, carry=None, *, train):
        if not self.config.adaptive_cutoffs:
            return super().nll(tokens, targets, carry, train=train)
        return self._forward(tokens, carry, targets, train=train)

    def __call__(self, tokens, carry=None, *, train):
        """tokens: [b, t] int. Returns (logits [b, t, v] float32 (log-probabilities with the
        adaptive softmax), carry, aux {})."""
        return self._forward(tokens, carry, None, train=train)

    @nn.compact
    def _forward(self, tokens, carry, targets, *, train):
        c = self.config
        b, t = tokens.shape
        projs = [None] * c.num_layers
        if c.feature_map == "performer" and train:
            projs = self._draw_projections(self._performer_key())  # first: see post_update
        given = carry
        state = self.decode_carry(b, 0) if carry is None else carry
        drop = lambda x: core.Dropout(c.dropout_rate)(x, deterministic=not train)
        if c.adaptive_cutoffs:
            io = adaptive.AdaptiveIO(
                c.vocab_size,
                c.d_model,
                tuple(c.adaptive_cutoffs),
                scale_embed=True,
                projections=False,  # div_val 1, d_proj = d_embed: B.7
                init_scheme="normal",
                dtype=jnp.dtype(c.dtype),
                name="adaptive",
            )
            x = io.embed(tokens, train=train)
        else:
            embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=_INIT, name="embed")
            x = embed(tokens) * c.d_model**0.5
        if not c.no_pos:
            ahead = jnp.zeros((b,), jnp.int32) if state is None else state.ahead
            after = jnp.maximum(ahead - t, 0)  # tokens after this window in its frame
            pos = (jnp.arange(t - 1, -1, -1)[None, :] + after[:, None]).astype(jnp.float32)
            if c.clamp_len > 0:
                pos = jnp.minimum(pos, c.clamp_len)
            x = x + attention.sinusoid_positions(pos.reshape(-1), c.d_model).reshape(b, t, -1)
        h = drop(x)
        ws, zs = [], []
        for i in range(c.num_layers):
            if state is None:
                w0 = z0 = fresh = None
            else:
                w0, z0 = state.w[i], state.z[i]
                fresh = jnp.all(z0 == 0, axis=(1, 2)) if c.attn_norm else None
            h, (w, z) = _Layer(c, name=f"layer_{i}")(h, projs[i], w0, z0, fresh, train=train)
            ws.append(w)
            zs.append(z)
        h = drop(h)
        new_carry = None
        if given is not None and c.stateful:
            ahead = jnp.maximum(given.ahead - t, 0)
            new_carry = jax.lax.stop_gradient(FastWeightState(tuple(ws), tuple(zs), ahead))
        if c.adaptive_cutoffs:
            if targets is None:
                return io.log_probs(h, train=train), new_carry, {}
            return io.nll(h, targets, train=train), new_carry, {}
        bias = self.param("out_bias", nn.initializers.zeros, (c.vocab_size,))
        return embed.attend(h) + bias[None, None], new_carry, {}
