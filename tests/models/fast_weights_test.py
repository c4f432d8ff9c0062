"""Fast weight programmers: the family tests (STYLE.md §7) for every feature map and update
rule, a float64 loop of the reference's equations (specs/attention.md B.3-B.5) through the whole
model, recurrent = chunkwise, the Performer matrix's life cycle, O(1)-state decoding, and the
config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fast_weights as fw_config
from lmjax import generate, models
from lmjax.errors import UserError
from lmjax.models import fast_weights as fw
from tests.models import family

KINDS = [  # (feature_map, update_rule, attn_norm)
    ("softmax", "sum", False),
    ("linear", "sum", False),
    ("performer", "sum", False),
    ("dpfp", "sum", False),
    ("linear", "delta", False),
    ("performer", "delta", False),
    ("dpfp", "delta", False),
    ("linear", "delta", True),
]
_ids = [f"{f}-{r}{'-norm' if n else ''}" for f, r, n in KINDS]


def _model(kind=("linear", "delta", False), **overrides):
    f, r, n = kind
    fields = dict(feature_map=f, update_rule=r, attn_norm=n, dropout_rate=0.0)
    return family.tiny_model(fw_config, **{**fields, **overrides})


def _params(model, t=16, seed=0):
    return family.perturbed_params(model, family.random_tokens(2, t), seed=seed, scale=0.1)


def _reference_forward(p, tokens, c, state=None):
    """B.3-B.5 in float64 numpy, one position at a time. state: per layer (W, z) or None.
    Returns (logits [b, t, v], per-layer (W, z))."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
    tokens = np.asarray(tokens)
    b, t = tokens.shape
    nh, e, d = c.num_heads, c.head_dim, c.d_model
    s = 1 / np.sqrt(e)

    def ln(x, q):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * q["scale"] + q["bias"]

    def phi(x, proj):
        if c.feature_map == "linear":
            return np.where(x > 0, x + 1, np.exp(x))
        if c.feature_map == "dpfp":
            u = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1)
            return np.concatenate([u * np.roll(u, i, -1) for i in range(1, c.dpfp_n_roll + 1)], -1)
        xp, off = x @ proj, -0.5 * np.sum(x * x, -1, keepdims=True)
        m = proj.shape[1]
        return (np.concatenate([np.exp(off + xp), np.exp(off - xp)], -1) + 1e-4) / np.sqrt(2 * m)

    h = p["embed"]["embedding"][tokens] * np.sqrt(d)
    if not c.no_pos:
        pos = np.arange(t - 1, -1, -1, dtype=np.float64)
        freq = 1 / 10000 ** (np.arange(0, d, 2) / d)
        h = h + np.concatenate([np.sin(pos[:, None] * freq), np.cos(pos[:, None] * freq)], 1)
    new_state = []
    for i in range(c.num_layers):
        a = p[f"layer_{i}"]["attn"]
        if c.update_rule == "delta" and c.feature_map != "softmax":
            qkvb = (h @ a["qkvb_net"]["kernel"]).reshape(b, t, nh, 3 * e + 1)
            q, k, v = qkvb[..., :e], qkvb[..., e : 2 * e], qkvb[..., 2 * e : 3 * e]
            beta = 1 / (1 + np.exp(-qkvb[..., 3 * e]))
        else:
            q = (h @ a["q_net"]["kernel"]).reshape(b, t, nh, e)
            kv = (h @ a["kv_net"]["kernel"]).reshape(b, t, 2, nh, e)
            k, v = kv[:, :, 0], kv[:, :, 1]
        out = np.zeros((b, t, nh, e))
        if c.feature_map == "softmax":
            for ti in range(t):
                sc = np.einsum("bhe,bjhe->bhj", q[:, ti], k[:, : ti + 1]) * s
                w = np.exp(sc - sc.max(-1, keepdims=True))
                out[:, ti] = np.einsum(
                    "bhj,bjhe->bhe", w / w.sum(-1, keepdims=True), v[:, : ti + 1]
                )
            new_state.append(None)
        else:
            proj = a.get("proj_matrix")
            q, k = phi(q, proj), phi(k, proj)
            dk = q.shape[-1]
            if state is None:
                W, z = np.zeros((b, nh, dk, e)), np.zeros((b, nh, dk))
                fresh = True
            else:
                W, z = (np.array(x, np.float64) for x in state[i])
                fresh = not z.any()
            for ti in range(t):
                qt, kt, vt = q[:, ti], k[:, ti], v[:, ti]
                if c.update_rule == "sum":
                    W = W + np.einsum("bhk,bhe->bhke", kt, vt)
                    z = z + kt
                    o = np.einsum("bhk,bhke->bhe", qt, W)
                    if c.skip_attn_normalization:
                        out[:, ti] = s * o
                    else:
                        out[:, ti] = s * o / (s * np.einsum("bhk,bhk->bh", qt, z)[..., None] + 1e-5)
                    continue
                qt, kt = qt / qt.sum(-1, keepdims=True), kt / kt.sum(-1, keepdims=True)
                bt = beta[:, ti]
                if c.attn_norm:
                    kd = np.einsum("bhk,bhk->bh", z, kt)
                    if ti == 0 and fresh:
                        kd = np.ones_like(kd)
                    bt, kt_w = bt * kd, kt / (kd[..., None] + 1e-5)
                else:
                    kt_w = kt
                v_old = np.einsum("bhk,bhke->bhe", kt_w, W)
                W = W + np.einsum("bhk,bhe->bhke", kt_w, bt[..., None] * (vt - v_old))
                z = z + kt
                o = np.einsum("bhk,bhke->bhe", qt, W)
                out[:, ti] = s * o / (np.einsum("bhk,bhk->bh", qt, z)[..., None] + 1e-5)
            new_state.append((W, z))
        h = ln(h + out.reshape(b, t, -1) @ a["o_net"]["kernel"], a["layer_norm"])
        f = p[f"layer_{i}"]["ff"]
        zf = np.maximum(h @ f["fc1"]["kernel"] + f["fc1"]["bias"], 0)
        h = ln(h + zf @ f["fc2"]["kernel"] + f["fc2"]["bias"], f["layer_norm"])
    return h @ p["embed"]["embedding"].T + p["out_bias"], new_state


@pytest.mark.parametrize("kind", KINDS, ids=_ids)
def test_shapes_and_dtypes(kind):
    model = _model(kind, carry_over_fast_weight=kind[0] != "softmax", no_pos=True)
    tokens = family.random_tokens(2, 16)
    params = _params(model)
    logits, carry, aux = model.apply({"params": params}, tokens, model.init_carry(2), train=False)
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32 and aux == {}
    if kind[0] == "softmax":
        assert carry is None
        return
    dk = {"linear": 16, "performer": 8, "dpfp": 64}[kind[0]]
    assert (
        len(carry.w) == 2 and carry.w[0].shape == (2, 2, dk, 16) and carry.z[0].shape == (2, 2, dk)
    )
    assert carry.w[0].dtype == jnp.float32
    bf16 = _model(kind, dtype="bfloat16")
    logits16, _, _ = bf16.apply({"params": params}, tokens, None, train=False)
    ref, _, _ = _model(kind).apply({"params": params}, tokens, None, train=False)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, ref, atol=0.15, rtol=0.1)


@pytest.mark.parametrize("kind", KINDS, ids=_ids)
def test_causal(kind):
    # Positions count down from the window's end, so the test holds them off. Chunkwise sums
    # add the masked future as exact zeros, which can move the last bit: hence atol 1e-6.
    model = _model(kind, no_pos=True)
    params = _params(model)
    apply = family.jit_apply(model, params)
    tokens = family.random_tokens(2, 16)
    other = tokens.at[:, 9].set((tokens[:, 9] + 1) % 256)
    a, _, _ = apply(tokens, None)
    b, _, _ = apply(other, None)
    np.testing.assert_allclose(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not np.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("kind", KINDS, ids=_ids)
@pytest.mark.parametrize("impl", ["recurrent", "chunkwise"])
def test_equals_float64_reference_loop(kind, impl):
    model = _model(kind, fast_weight_impl=impl, chunk_size=4)
    params = _params(model)
    tokens = family.random_tokens(2, 11)
    logits, _, _ = family.jit_apply(model, params)(tokens, None)
    ref, _ = _reference_forward(params, tokens, model.config)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", [k for k in KINDS if k[0] != "softmax"], ids=_ids[1:])
def test_two_halves_with_carry_equal_whole(kind):
    """carry_over_fast_weight + no_pos: two windows with the carry = one window (B.6), and the
    carried state equals the float64 loop's."""
    model = _model(kind, carry_over_fast_weight=True, no_pos=True, chunk_size=4)
    params = _params(model)
    apply = family.jit_apply(model, params)
    tokens = family.random_tokens(2, 16)
    whole, carry, _ = apply(tokens, model.init_carry(2))
    first, mid, _ = apply(tokens[:, :7], model.init_carry(2))
    second, end, _ = apply(tokens[:, 7:], mid)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(end), jax.tree.leaves(carry), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    ref_first, ref_mid = _reference_forward(params, tokens[:, :7], model.config)
    ref_second, ref_end = _reference_forward(params, tokens[:, 7:], model.config, ref_mid)
    np.testing.assert_allclose(second, ref_second, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(end.w[1], ref_end[1][0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS, ids=_ids)
def test_gradients_finite_and_nonzero(kind):
    model = _model(kind, dropout_rate=0.1)
    tokens = family.random_tokens(2, 16)
    params = _params(model)
    rngs = {"dropout": jax.random.PRNGKey(1), "performer": jax.random.PRNGKey(2)}

    def loss(p):
        nll, _, _ = model.apply({"params": p}, tokens, tokens, None, train=True, rngs=rngs,
                                method=model.nll)  # fmt: skip
        return nll.mean()

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), name
        if "proj_matrix" in name:  # drawn afresh in training: not learned
            assert not np.any(g), name
        else:
            assert np.any(g != 0), name


def test_recurrent_equals_chunkwise_gradients():
    for kind in KINDS[1:]:
        tokens = family.random_tokens(2, 13)
        grads = []
        for impl in ("recurrent", "chunkwise"):
            model = _model(kind, fast_weight_impl=impl, chunk_size=4)
            params = _params(model)

            def loss(p, model=model, tokens=tokens):
                return model.apply({"params": p}, tokens, tokens, None, train=False,
                                   method=model.nll)[0].mean()  # fmt: skip

            grads.append(jax.jit(jax.grad(loss))(params))
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
            # float32 sums in another order: within 1e-4 of each leaf's largest entry
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.max(np.abs(b))))


def test_performer_matrix_redrawn_in_training_kept_for_eval():
    """Each training forward draws P from the 'performer' stream; post_update stores the P that
    forward used, and evaluation reads the stored P."""
    model = _model(("performer", "delta", False))
    tokens = family.random_tokens(2, 16)
    params = _params(model)
    apply_train = jax.jit(
        lambda p, key: model.apply(
            {"params": p}, tokens, None, train=True, rngs={"dropout": key, "performer": key}
        )[0]  # fmt: skip
    )
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    assert not np.allclose(apply_train(params, k1), apply_train(params, k2))
    stored = model.post_update(params, {"dropout": k1, "performer": k1})
    p_old = params["layer_0"]["attn"]["proj_matrix"]
    p_new = stored["layer_0"]["attn"]["proj_matrix"]
    assert not np.allclose(p_old, p_new)
    assert not np.allclose(p_new, stored["layer_1"]["attn"]["proj_matrix"])  # one per layer
    # Eval with the stored P = the training forward that drew it (dropout is off here).
    evaled, _, _ = model.apply({"params": stored}, tokens, None, train=False)
    np.testing.assert_allclose(evaled, apply_train(params, k1), rtol=1e-5, atol=1e-5)
    again, _, _ = model.apply({"params": stored}, tokens, None, train=False)
    np.testing.assert_array_equal(evaled, again)
    # Only the matrices change.
    same = jax.tree.map(lambda a, b: bool(np.all(a == b)), params, stored)
    changed = [
        jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(same) if not v
    ]
    assert all("proj_matrix" in c for c in changed) and len(changed) == 2


@pytest.mark.parametrize("kind", KINDS, ids=_ids)
def test_generate_equals_window_forward(kind):
    """--mode=generate's sampler: one recurrent step per token from decode_carry (positions
    counting down to the end of the continuation), or for softmax the rerun window; greedy
    tokens and their logits equal one forward over prompt + continuation."""
    model = _model(kind)
    params = _params(model)
    prompt = family.random_tokens(1, 5)
    out = generate.sample(params, prompt, jax.random.PRNGKey(0), model=model, length=7,
                          temperature=0.0)[0]  # fmt: skip
    text = jnp.concatenate([prompt, out[None]], axis=1)
    logits, _, _ = model.apply({"params": params}, text, None, train=False)
    np.testing.assert_array_equal(out, jnp.argmax(logits[0, 4:-1], -1))
    if kind[0] != "softmax":
        carry = model.decode_carry(1, 12)
        step_logits = []
        first, carry, _ = model.apply({"params": params}, text[:, :5], carry, train=False)
        step_logits.append(first[:, -1])
        for i in range(5, 11):
            lg, carry, _ = model.apply({"params": params}, text[:, i : i + 1], carry, train=False)
            step_logits.append(lg[:, -1])
        np.testing.assert_allclose(jnp.stack(step_logits, 1), logits[:, 4:-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(feature_map="cosine"), "model.feature_map"),
        (dict(update_rule="oja"), "model.update_rule"),
        (dict(carry_over_fast_weight=True, mem_len=16), "model.mem_len"),
        (dict(mem_len=16), "model.mem_len"),
        (dict(feature_map="softmax", update_rule="delta"), "model.update_rule"),
        (dict(dropout_attn=0.1), "model.dropout_attn"),
        (dict(attn_norm=True, update_rule="sum"), "model.attn_norm"),
        (dict(fast_weight_impl="fft"), "model.fast_weight_impl"),
    ],
)
def test_bad_config_is_one_line(overrides, field):
    config = fw_config.get_config("tiny")
    config.model.update(overrides)
    with pytest.raises(UserError) as err:
        models.get_model(config)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_carry_over_with_positions_warns(caplog):
    fw._warn_once.cache_clear()
    config = fw_config.get_config("tiny")
    config.model.carry_over_fast_weight = True
    with caplog.at_level("WARNING"):
        models.get_model(config)
    assert "no_pos" in caplog.text and len(caplog.records) == 1


@functools.cache
def _all_variants():
    return [fw_config.get_config(v) for v in fw_config.VARIANTS]


def test_variants_match_the_scripts():
    by_name = dict(zip(fw_config.VARIANTS, _all_variants(), strict=True))
    small = by_name["small_delta_linear"]
    assert (small.model.d_model, small.model.head_dim, small.train.batch_size) == (128, 16, 96)
    assert small.optim.schedule == "cosine_txl" and small.optim.grad_clip == 0.25
    carry = by_name["medium_delta_linear_carry"]
    assert (
        carry.model.carry_over_fast_weight and carry.model.no_pos and carry.eval.protocol == "carry"
    )
    for name, config in by_name.items():
        model = models.get_model(config)
        assert model.config.num_layers in (2, 4, 16), name
