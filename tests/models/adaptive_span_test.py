"""Adaptive-Span: the five family tests (STYLE.md §7), a float64 loop of the reference with its
variable-length cache, the soft mask and its gradient by hand, exact trimming, and the hooks."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import adaptive_span as as_config
from lmjax import models, optim, tasks, train
from lmjax import state as state_lib
from lmjax.models import adaptive_span
from tests.models import family

_model = functools.partial(family.tiny_model, as_config)


def _perturbed_params(model, tokens, seed=0, z=None):
    """Random values everywhere (unit LN gains and zero biases would hide bugs); spans `z`
    [layers, heads] as fractions of L, or random in [0, 0.3]."""
    params = family.perturbed_params(model, tokens, seed, scale=0.2)
    c = model.config
    if z is None:
        z = jax.random.uniform(jax.random.PRNGKey(seed + 2), (c.num_layers, c.num_heads)) * 0.3
    return _set_spans(params, z)


def _set_spans(params, z):
    params = jax.tree.map(lambda x: x, params)  # a copy of the dict structure
    for i, zi in enumerate(z):
        params[f"layer_{i}"]["attn"]["span_z"] = jnp.asarray(zi, jnp.float32)
    return params


_tokens = family.random_tokens


def _apply(model, params, tokens, carry=None):
    return jax.jit(lambda p, x, c: model.apply({"params": p}, x, c, train=False))(
        params, tokens, carry
    )


def _reference_forward(params_per_segment, segments, c):
    """`TransformerSeq.forward` in float64, cache and trimming exactly as the reference:
    the cache has get_cache_size() positions, `trim_memory` cuts or zero-pads it, and the
    per-(t, d) score is q_t·k_{t-d} + q_t·p_d over d = 1..L - T."""
    big_l, ramp, nh = c.attn_span, c.span_ramp, c.num_heads
    hk = c.d_model // nh
    b = segments[0].shape[0]

    def ln(x, q):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * q["scale"] + q["bias"]

    def trim_of(z):
        size = max(0, min(big_l, math.ceil(float(np.float32(z.max())) * big_l) + ramp))
        return math.floor(min(big_l - 1, big_l - size) / 64) * 64

    z0 = params_per_segment[0]
    caches = [
        np.zeros((b, min(big_l, big_l - trim_of(z0[f"layer_{i}"]["attn"]["span_z"]) + 64), 1))
        for i in range(c.num_layers)
    ]
    caches = [np.zeros((b, x.shape[1], c.d_model)) for x in caches]
    outs = []
    for params, seg in zip(params_per_segment, segments, strict=True):
        p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
        seg = np.asarray(seg)
        m = seg.shape[1]
        h = p["in_emb"]["embedding"][seg]
        nxt = []
        for i in range(c.num_layers):
            lp, a = p[f"layer_{i}"], p[f"layer_{i}"]["attn"]
            z = a["span_z"]
            trim = trim_of(z)
            size = min(big_l, big_l - trim + 64)
            nxt.append(np.concatenate([caches[i], h], 1)[:, -size:])
            key = np.concatenate([caches[i], h], 1)
            trim_cache = trim - (big_l - (key.shape[1] - m))
            if trim_cache > 0:
                key = key[:, trim_cache:]
            elif trim_cache < 0:
                key = np.concatenate([np.zeros((b, -trim_cache, c.d_model)), key], 1)
            w = big_l - trim
            q = (h @ a["proj_query"]["kernel"]).reshape(b, m, nh, hk)
            k = (key @ a["proj_key"]["kernel"]).reshape(b, w + m, nh, hk)
            v = (key @ a["proj_val"]["kernel"]).reshape(b, w + m, nh, hk)
            dist = np.arange(1, w + 1)
            mask = np.clip(((1 - dist)[None] + z[:, None] * big_l) / ramp + 1, 0, 1)  # [h, d]
            out = np.zeros((b, m, nh, hk))
            for t in range(m):
                kt, vt = k[:, w + t - dist], v[:, w + t - dist]  # [b, d, h, k]
                s = np.einsum("bhk,bdhk->bhd", q[:, t], kt)
                s = s + np.einsum("bhk,kd->bhd", q[:, t], p["key_pe"][:, big_l - dist])
                s = s / np.sqrt(hk)
                if c.pers_mem_size:
                    pk = a["pers_key"] * np.sqrt(hk)
                    s = np.concatenate(
                        [s, np.einsum("bhk,hkn->bhn", q[:, t], pk) / np.sqrt(hk)], -1
                    )
                e = np.exp(s - s.max(-1, keepdims=True))
                e = e / e.sum(-1, keepdims=True)
                e[..., :w] *= mask[None]
                e = e / (e.sum(-1, keepdims=True) + 1e-8)
                out[:, t] = np.einsum("bhd,bdhk->bhk", e[..., :w], vt)
                if c.pers_mem_size:
                    pv = a["pers_val"] * np.sqrt(c.pers_mem_size)
                    out[:, t] += np.einsum("bhn,hnk->bhk", e[..., w:], pv)
            h = ln(h + out.reshape(b, m, -1) @ a["proj_out"]["kernel"], lp["norm1"])
            if not c.pers_mem_size:
                y = np.maximum(h @ lp["fc1"]["kernel"] + lp["fc1"]["bias"], 0)
                h = ln(h + y @ lp["fc2"]["kernel"] + lp["fc2"]["bias"], lp["norm2"])
        caches = nxt
        outs.append(h @ p["out_emb"]["kernel"] + p["out_emb"]["bias"])
    return outs


def test_shapes_and_dtypes():
    model = _model()
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    logits, carry, aux = _apply(model, params, tokens)
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
    assert len(carry.cache) == 2 and carry.cache[0].shape == (2, 128, 32)
    assert carry.cache[0].dtype == jnp.float32
    expected = sum(
        2e-6 * 128 * float(jnp.mean(params[f"layer_{i}"]["attn"]["span_z"])) for i in (0, 1)
    )
    np.testing.assert_allclose(aux["span_penalty"], expected, rtol=1e-6)
    logits16, carry16, _ = _apply(_model(dtype="bfloat16"), params, tokens)
    assert logits16.dtype == jnp.float32 and carry16.cache[1].dtype == jnp.float32
    assert np.abs(logits16 - logits).max() < 0.1 * np.abs(logits).max()  # STYLE.md §7 bf16


def test_causality():
    model = _model()
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    logits, _, _ = _apply(model, params, tokens)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 256)
    logits2, _, _ = _apply(model, params, changed)
    np.testing.assert_array_equal(logits[:, :9], logits2[:, :9])
    assert np.abs(logits[:, 9:] - logits2[:, 9:]).max() > 1e-4


@pytest.mark.parametrize("pers_mem_size", [0, 3])
def test_matches_reference_loop_with_changing_spans(pers_mem_size):
    """Three segments of a 256-span model; the spans shrink (trim 192: the cache drops to 128)
    and then grow past the shrunken cache (the reference zero-pads): the trimmed, cached model
    follows the reference through both changes."""
    model = _model(attn_span=256, pers_mem_size=pers_mem_size)
    tokens = _tokens(2, 24)
    base = _perturbed_params(model, tokens)
    spans = [[[0.5, 0.1], [0.0, 0.2]], [[0.05, 0.0], [0.1, 0.02]], [[0.6, 0.1], [0.0, 0.5]]]
    params = [_set_spans(base, z) for z in spans]
    segments = [tokens[:, :8], tokens[:, 8:16], tokens[:, 16:]]
    expected = _reference_forward(params, segments, model.config)
    carry, trims = None, []
    for p, seg, ref in zip(params, segments, expected, strict=True):
        adapted = model.adapt_to(p)
        trims.append(adapted.trims())
        logits, carry, _ = _apply(adapted, p, seg, carry)
        np.testing.assert_allclose(logits, ref, rtol=2e-4, atol=2e-4)
    assert trims == [(64, 128), (192, 192), (64, 64)]  # then the cache holds 128 < 192


def test_whole_equals_split_through_carry():
    """The zero cache makes the first positions see zeros either way: splitting is exact."""
    model = _model(attn_span=256)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens, z=[[0.1, 0.02], [0.03, 0.0]])
    model = model.adapt_to(params)
    assert model.trims() == (192, 192)
    whole, wcarry, _ = _apply(model, params, tokens)
    first, carry, _ = _apply(model, params, tokens[:, :5])
    second, carry, _ = _apply(model, params, tokens[:, 5:], carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    for c, wc in zip(carry.cache, wcarry.cache, strict=True):
        np.testing.assert_allclose(c, wc, rtol=1e-5, atol=1e-5)


def test_step_by_step_decode_equals_window():
    model = _model()
    tokens = _tokens(2, 12)
    params = _perturbed_params(model, tokens)
    whole, _, _ = _apply(model, params, tokens)
    step = jax.jit(lambda x, c: model.apply({"params": params}, x, c, train=False))
    carry, steps = model.init_carry(2), []
    for i in range(12):
        out, carry, _ = step(tokens[:, i : i + 1], carry)
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pers_mem_size", [0, 3])
def test_gradients_finite_and_nonzero(pers_mem_size):
    model = _model(pers_mem_size=pers_mem_size, dropout_rate=0.0)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    carry = _apply(model, params, tokens)[1]  # a non-zero cache

    def loss(p):
        logits, _, aux = model.apply({"params": p}, tokens, carry, train=True)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + aux["span_penalty"]

    for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(params)):
        assert np.all(np.isfinite(g)), path
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_soft_mask_and_its_gradient_by_hand():
    big_l, ramp, w = 64, 4, 10
    z = jnp.array([0.0, 0.1])  # spans of 0 and 6.4 tokens
    mask = adaptive_span._soft_mask(z, w, big_l, ramp)
    d = np.arange(w, 0, -1)  # column c is distance w - c
    for h, zh in enumerate([0.0, 6.4]):
        np.testing.assert_allclose(mask[h], np.clip((ramp + zh - (d - 1)) / ramp, 0, 1), atol=1e-6)
    # dm/dz = L/R on the ramp, boundaries included (torch.clamp's gradient); 0 off it.
    grad = jax.jacobian(lambda z: adaptive_span._soft_mask(z, w, big_l, ramp))(z)  # [h, w, h]
    x0 = (ramp + 0.0 - (d - 1)) / ramp  # head 0: d = 1 sits exactly on the upper bound 1
    np.testing.assert_allclose(grad[0, :, 0], np.where((x0 >= 0) & (x0 <= 1), big_l / ramp, 0))
    x1 = (ramp + 6.4 - (d - 1)) / ramp
    np.testing.assert_allclose(grad[1, :, 1], np.where((x1 >= 0) & (x1 <= 1), big_l / ramp, 0))
    assert np.all(grad[0, :, 1] == 0)


def test_trim_and_cache_sizes_follow_the_reference():
    assert adaptive_span._trim_len(0.0, 1024, 32) == 960  # span 32 -> keep 64 distances
    assert adaptive_span._trim_len(0.1, 1024, 32) == 832  # ⌈102.4⌉ + 32 = 135 -> keep 192
    assert adaptive_span._trim_len(1.0, 1024, 32) == 0
    assert adaptive_span._trim_len(0.0, 64, 32) == 0
    assert adaptive_span._trim_len(-0.5, 8192, 32) == 8128  # unclamped z: min(L - 1, ...)
    assert (
        adaptive_span._cache_size(1024, 896) == 192 and adaptive_span._cache_size(1024, 0) == 1024
    )


def _span_step(model, lr):
    """The trainer's step, then the proposed `post_update` hook."""
    config = as_config.get_config("tiny")
    config.optim.learning_rate, config.optim.warmup_steps = lr, 0
    tx, _ = optim.make_optimizer(config.optim)  # Adagrad with the per-tensor clip 0.03
    task = tasks.get_task(config)
    step = jax.jit(functools.partial(train.train_step, task=task, model=model, tx=tx))
    post = jax.jit(model.post_update)
    return tx, lambda s, c, b: (lambda s, c, m: (s.replace(params=post(s.params)), c, m))(
        *step(s, c, b)
    )


def test_penalty_drives_spans_down_and_trimming_is_exact():
    """Spans start at L/5; the penalty and the clamp drive them to ~0 in a few updates of the
    reference's optimizer. Trimmed to the learned spans, logits, carried cache, loss and
    gradients over two segments equal the untrimmed model's (the softmax denominator cancels
    in the renormalisation; with absurd weights, e.g. lr 1 here, a head can put < 1e-8 of its
    mass inside its span, and then the reference's +1e-8 makes trimming visible)."""
    model = _model(attn_span=256, span_init=0.2, span_loss=1e-4, dropout_rate=0.0)
    tx, step = _span_step(model, lr=0.07)
    rng = jax.random.key_data(jax.random.PRNGKey(0))
    inputs = (jnp.zeros((1, 16), jnp.int32), None)
    state = state_lib.create_train_state(rng, model=model, tx=tx, init_inputs=inputs)
    tokens = _tokens(4, 17)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((4, 16))}
    carry = model.init_carry(4)
    for _ in range(8):
        state, carry, _ = step(state, carry, batch)
    zs = np.array([state.params[f"layer_{i}"]["attn"]["span_z"] for i in (0, 1)])
    assert zs.min() >= 0 and zs.max() < 0.1, zs
    trimmed = model.adapt_to(state.params)
    assert min(trimmed.trims()) >= 128, trimmed.trims()

    def run(m):
        def loss(p, c):
            logits, c, aux = m.apply({"params": p}, batch["inputs"], c, train=True)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)
            return aux["span_penalty"] - jnp.mean(logp), (logits, c)

        f = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (l1, (o1, c1)), g1 = f(state.params, carry)
        (l2, (o2, c2)), g2 = f(state.params, c1)  # a second segment through the trimmed cache
        return (l1, o1, g1, l2, o2, g2)

    for a, b in zip(jax.tree.leaves(run(trimmed)), jax.tree.leaves(run(model)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_post_update_clamps_only_spans():
    model = _model()
    params = _perturbed_params(model, _tokens(1, 4), z=[[-0.3, 0.4], [1.7, 1.0]])
    clamped = model.post_update(params)
    np.testing.assert_array_equal(clamped["layer_0"]["attn"]["span_z"], np.float32([0.0, 0.4]))
    np.testing.assert_array_equal(clamped["layer_1"]["attn"]["span_z"], [1.0, 1.0])
    np.testing.assert_array_equal(clamped["key_pe"], params["key_pe"])
    assert model.adapt_to(clamped) is model  # spans of 52+ tokens: no 64-block to trim
    zero = model.adapt_to(_set_spans(params, np.zeros((2, 2))))
    assert zero is not model and zero.trims() == (64, 64)


def test_init_matches_reference():
    model = _model(d_model=64, d_ff=128)
    params = model.init(jax.random.PRNGKey(0), _tokens(1, 4), None, train=False)["params"]
    np.testing.assert_allclose(np.std(params["in_emb"]["embedding"]), 1.0, rtol=0.05)
    np.testing.assert_allclose(np.std(params["key_pe"]), 1.0, rtol=0.05)
    fc1 = params["layer_0"]["fc1"]
    assert np.abs(fc1["kernel"]).max() <= 1 / 8 and np.abs(fc1["bias"]).max() <= 1 / 8
    np.testing.assert_allclose(np.std(fc1["kernel"]), 1 / 8 / np.sqrt(3), rtol=0.1)  # U(±1/√in)
    assert np.all(params["layer_0"]["attn"]["span_z"] == 0)
    assert "bias" not in params["layer_0"]["attn"]["proj_query"]


@pytest.mark.parametrize(
    "variant,millions", [("enwik8", 38.6), ("enwik8_large", 209.0), ("enwik8_pers", 114.1)]
)
def test_param_counts_match_the_reference(variant, millions):
    """README: 38M (12L), 209M (24L), 114M (36L All-attention)."""
    model = models.get_model(as_config.get_config(variant))
    init = lambda: model.init(jax.random.PRNGKey(0), _tokens(1, 4), None, train=False)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(jax.eval_shape(init)))
    assert abs(count / 1e6 - millions) < 0.05, count


# ---------------------------------------------------------------------------------------------
# wiki103_pers: All-attention with tied adaptive input and softmax (A.5)


def _pers_model(**overrides):
    config = as_config.get_config("wiki103_pers_tiny")
    for k, v in overrides.items():
        config.model[k] = v
    return models.get_model(config)


def test_adaptive_io_nll_log_probs_and_split_through_carry():
    model = _pers_model()
    tokens, targets = _tokens(2, 16), _tokens(2, 16, seed=1)
    params = _perturbed_params(model, tokens)
    assert "in_emb" not in params and "out_emb" not in params and "adaptive_io" in params
    logp, carry, aux = _apply(model, params, tokens)
    assert logp.shape == (2, 16, 256) and "span_penalty" in aux
    np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)
    nll_fn = jax.jit(
        lambda x, y, c: model.apply({"params": params}, x, y, c, train=False, method=model.nll)
    )
    nll, _, nll_aux = nll_fn(tokens, targets, None)
    expected = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nll_aux["span_penalty"], aux["span_penalty"], rtol=1e-6)
    first, c1, _ = nll_fn(tokens[:, :5], targets[:, :5], None)
    second, _, _ = nll_fn(tokens[:, 5:], targets[:, 5:], c1)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), nll, rtol=1e-5, atol=1e-5)


def test_adaptive_io_gradients_and_init():
    model = _pers_model(dropout_rate=0.0, dropout_emb=0.0)
    tokens, targets = _tokens(2, 16), _tokens(2, 16, seed=1)
    fresh = model.init(jax.random.PRNGKey(0), tokens, None, train=False)["params"]["adaptive_io"]
    # PyTorch defaults (A.5): nn.Embedding N(0, 1) tables, nn.Linear(e, .) projections.
    np.testing.assert_allclose(np.std(fresh["table_0"]), 1.0, rtol=0.1)
    assert 0.2 < np.abs(fresh["proj_1"]).max() <= 1 / np.sqrt(16)  # e_1 = 32 // 2
    params = _perturbed_params(model, tokens)
    carry = _apply(model, params, tokens)[1]

    def loss(p):
        nll, _, aux = model.apply(
            {"params": p}, tokens, targets, carry, train=True, method=model.nll
        )
        return jnp.mean(nll) + aux["span_penalty"]

    for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(params)):
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_wiki103_pers_config_and_parameter_count():
    """README: 133M. Counted: 36 x (4 x 512^2 + LN + spans + 2 x 8 x 64 x 2048 persistent)
    + key_pe + tied tables (20000 x 512, 20000 x 128, 160000 x 32, 67735 x 8), projections
    512 x (512, 128, 32, 8), output biases and cluster_proj (3 x 512 + 3) = 132,493,746."""
    config = as_config.get_config("wiki103_pers")
    m = config.model
    assert (config.data.name, config.data.level, m.vocab_size) == ("wikitext103", "word", 267_735)
    assert (m.adaptive_cutoffs, m.div_val, m.adaptive_tied) == ((20000, 40000, 200000), 4, True)
    assert (m.num_layers, m.pers_mem_size, m.attn_span, m.dropout_emb) == (36, 2048, 2048, 0.1)
    assert (config.optim.name, config.optim.learning_rate, config.optim.grad_clip) == (
        "adam", 2.5e-4, 1.0,
    )  # fmt: skip
    assert (config.train.seq_len, config.train.grad_accum_steps) == (256, 2)
    model = models.get_model(config)
    init = lambda: model.init(jax.random.PRNGKey(0), _tokens(1, 4), None, train=False)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(jax.eval_shape(init)))
    assert count == 132_493_746
