"""The Story of Heads model: a float64 NumPy forward of specs/attention.md C.2-C.4 written from
the spec (the TF1 reference does not run here), masks, causality, gates and label smoothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import models
from lmjax.errors import UserError
from lmjax.layers import gates
from lmjax.models import story_of_heads as soh

SMALL = dict(src_vocab_size=11, tgt_vocab_size=13, d_model=16, num_heads=4, d_ff=24, num_layers=2)


def _model(**overrides):
    return soh.StoryOfHeads(soh.StoryOfHeadsConfig(**{**SMALL, **overrides}))


def _inputs(seed=0, b=3, s=7, t=6):
    rng = np.random.default_rng(seed)
    src = rng.integers(3, SMALL["src_vocab_size"], (b, s)).astype(np.int32)
    lengths = np.array([s, s - 2, 3])[:b]
    mask = (np.arange(s)[None] < lengths[:, None]).astype(np.float32)
    src = np.where(mask > 0, src, 1)  # EOS padding
    tgt = rng.integers(3, SMALL["tgt_vocab_size"], (b, t)).astype(np.int32)
    return jnp.asarray(src), jnp.asarray(mask), jnp.asarray(tgt)


def _init(model, seed=0):
    params = model.init(jax.random.PRNGKey(seed), *_inputs(), train=False)["params"]
    # Biases, LN parameters and gates away from their trivial inits, so the reference sees them.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves)


# -- the float64 reference ---------------------------------------------------------------------


def _ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _signal(length, d):
    n = d // 2
    inv = np.exp(-np.arange(n) * np.log(1e4) / (n - 1))
    ang = np.arange(length)[:, None] * inv[None]
    return np.concatenate([np.sin(ang), np.cos(ang)], 1)


def _gate_eval(p, alive):
    if alive is not None:
        return np.asarray(alive, np.float64)
    if "gate" in p:
        return np.clip(1 / (1 + np.exp(-p["gate"]["log_a"])) * 1.2 - 0.1, 0, 1)
    return None


def _attention(x, mem, allowed, p, nh, alive=None):
    """One sentence: x [t, d] (normalised), mem [s, d] or None, allowed [t, s] bool."""
    d = x.shape[1]
    hk = d // nh
    if mem is None:
        q, k, v = np.split(_dense(x, p["mem_conv"]), 3, axis=1)
    else:
        q = _dense(x, p["query_conv"])
        k, v = np.split(_dense(mem, p["mem_conv"]), 2, axis=1)
    g = _gate_eval(p, alive)
    heads = []
    for h in range(nh):
        cols = slice(h * hk, (h + 1) * hk)
        logits = q[:, cols] / np.sqrt(hk) @ k[:, cols].T + np.where(allowed, 0.0, -1e9)
        w = np.exp(logits - logits.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        heads.append((w @ v[:, cols]) * (1.0 if g is None else g[h]))
    return _dense(np.concatenate(heads, 1), p["out_conv"])


def _ffn(x, p):
    return _dense(np.maximum(_dense(x, p["conv1"]), 0), p["conv2"])


def _reference_logits(params, src, mask, tgt, c):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    d, nh = c.d_model, c.num_heads
    out = []
    for i in range(src.shape[0]):
        n = int(mask[i].sum())
        x = p["emb_inp"]["embedding"][src[i]] * np.sqrt(d) + p["emb_inp_bias"]
        x = x + _signal(src.shape[1], d)
        allowed = np.broadcast_to(mask[i][None] > 0, (src.shape[1], src.shape[1]))
        for layer in range(c.num_layers):
            e = p[f"enc_{layer}"]
            x = x + _attention(
                _ln(x, e["self_attn_norm"]), None, allowed, e["self_attn"], nh,
                c.alive("enc-self", layer),
            )  # fmt: skip
            x = x + _ffn(_ln(x, e["ffn_norm"]), e["ffn"])
        enc = _ln(x, p["enc_out_norm"])
        t = tgt.shape[1]
        y = p["emb_out"]["embedding"][tgt[i]] * np.sqrt(d)
        y = np.concatenate([np.zeros((1, d)), y[:-1]]) + _signal(t, d)
        causal = np.tril(np.ones((t, t), bool))
        to_src = np.broadcast_to(np.arange(src.shape[1])[None] < n, (t, src.shape[1]))
        for layer in range(c.num_layers):
            q = p[f"dec_{layer}"]
            y = y + _attention(
                _ln(y, q["self_attn_norm"]), None, causal, q["self_attn"], nh,
                c.alive("dec-self", layer),
            )  # fmt: skip
            y = y + _attention(
                _ln(y, q["enc_attn_norm"]), enc, to_src, q["enc_attn"], nh,
                c.alive("dec-enc", layer),
            )  # fmt: skip
            y = y + _ffn(_ln(y, q["ffn_norm"]), q["ffn"])
        out.append(_ln(y, p["dec_out_norm"]) @ p["logits"])
    return np.stack(out)


@pytest.mark.parametrize(
    "gating",
    [
        {},
        {"concrete_heads": ("enc-self", "dec-enc")},
        {
            "alive_heads": {"dec-self": [[1, 0, 1, 0], [0, 0, 0, 1]]},
            "concrete_heads": ("enc-self",),
        },
    ],
)
def test_matches_float64_reference(gating):
    model = _model(**gating)
    params = _init(model)
    src, mask, tgt = _inputs()
    logits, aux = jax.jit(lambda p: model.apply({"params": p}, src, mask, tgt, train=False))(params)
    want = _reference_logits(
        params, np.asarray(src), np.asarray(mask), np.asarray(tgt), model.config
    )
    np.testing.assert_allclose(logits, want, rtol=2e-4, atol=2e-4)
    kinds = set(gating.get("concrete_heads", ())) | set(gating.get("alive_heads", {}))
    assert {k for k in aux if k.startswith("open_")} == {
        "open_" + k.replace("-", "_") for k in kinds
    }
    if "alive_heads" in gating:
        assert float(aux["open_dec_self"]) == 3.0


def test_padding_and_future_do_not_leak():
    model = _model()
    params = _init(model)
    src, mask, tgt = _inputs()
    run = jax.jit(lambda s, t: model.apply({"params": params}, s, mask, t, train=False)[0])
    base = run(src, tgt)
    # Changing padded source positions changes nothing.
    noisy = jnp.where(mask > 0, src, 7)
    np.testing.assert_allclose(run(noisy, tgt), base, rtol=1e-6, atol=1e-6)
    # Target position j sees targets < j only (the input is shifted right).
    changed = tgt.at[:, 3].set(5)
    out = run(src, changed)
    np.testing.assert_allclose(out[:, :4], base[:, :4], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out[:, 4:], base[:, 4:])


def test_label_smoothing_excludes_the_gold():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 13))
    targets = jnp.array([[1, 2, 3], [4, 5, 6]])
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    q = np.full(logp.shape, 0.1 / 12)
    np.put_along_axis(q, np.asarray(targets)[..., None], 0.9, axis=-1)
    want = -(q * logp).sum(-1)
    np.testing.assert_allclose(soh.smoothed_nll(logits, targets, 0.1), want, rtol=1e-5)
    np.testing.assert_allclose(
        soh.smoothed_nll(logits, targets, 0.0),
        -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0],
        rtol=1e-6,
    )


def test_gates_in_training_and_the_l0_term():
    model = _model(concrete_heads=("enc-self", "dec-self", "dec-enc"), gate_coef=0.5)
    params = _init(model)
    src, mask, tgt = _inputs()
    # Every gated layer has log_a; the L0 term is λ x the mean over the 6 gated layers.
    log_as = [
        params[f"{side}_{i}"][att]["gate"]["log_a"]
        for side, atts in (("enc", ("self_attn",)), ("dec", ("self_attn", "enc_attn")))
        for i in range(2)
        for att in atts
    ]
    _, aux = model.apply({"params": params}, src, mask, tgt, train=False)
    want = 0.5 * np.mean([float(jnp.sum(gates.prob_open(a))) for a in log_as])
    assert float(aux["l0_penalty"]) == pytest.approx(want, rel=1e-6)
    assert model.rng_streams == ("dropout", "gates") and model.aux_losses == ("l0_penalty",)
    rngs = lambda s: {"dropout": jax.random.PRNGKey(s), "gates": jax.random.PRNGKey(s + 9)}
    a = model.apply({"params": params}, src, mask, tgt, train=True, rngs=rngs(0))[0]
    b = model.apply({"params": params}, src, mask, tgt, train=True, rngs=rngs(1))[0]
    assert not np.allclose(a, b)
    grads = jax.grad(
        lambda p: model.apply(
            {"params": p}, src, mask, tgt, train=True, rngs=rngs(0), method="nll"
        )[0].mean()
    )(params)
    assert float(jnp.abs(grads["enc_0"]["self_attn"]["gate"]["log_a"]).sum()) > 0


def test_bad_gate_configs_are_one_line_errors():
    with pytest.raises(UserError, match="concrete_heads: unknown attention type 'enc'"):
        _model(concrete_heads=("enc",))
    with pytest.raises(UserError, match="'enc-self' is both in concrete_heads and alive_heads"):
        _model(concrete_heads=("enc-self",), alive_heads={"enc-self": [[1] * 4] * 2})
    with pytest.raises(UserError, match=r"alive_heads\['dec-enc'\] must be 2 x 4"):
        _model(alive_heads={"dec-enc": [[1, 0]] * 2})


def test_registered():
    import ml_collections

    config = ml_collections.ConfigDict({"model_name": "story_of_heads", "model": dict(SMALL)})
    config.model.alive_heads = {"enc-self": [[1, 1, 0, 0], [0, 1, 1, 1]]}
    model = models.get_model(config)
    assert model.config.alive("enc-self", 1) == (0, 1, 1, 1)
    hash(model)  # jit caches key on the model


def test_pruned_model_is_the_gated_model_without_its_closed_heads():
    """Family.pruned: closed heads (eval gate 0, or a 0 in a fixed mask) leave the projections,
    a layer with no open head keeps only its output bias, fractional gates stay as fixed
    scales; logits agree to float rounding and greedy / beam translations exactly."""
    from lmjax import decoding

    cfg = soh.StoryOfHeadsConfig(
        src_vocab_size=11, tgt_vocab_size=9, d_model=16, num_heads=4, d_ff=16, num_layers=2,
        concrete_heads=("enc-self", "dec-enc"),
        alive_heads={"dec-self": [[1, 0, 1, 1], [0, 0, 0, 0]]},
    )  # fmt: skip
    model = soh.StoryOfHeads(cfg)
    rng = np.random.default_rng(0)
    src = jnp.asarray(rng.integers(3, 11, (3, 6)), jnp.int32)
    mask = jnp.asarray((np.arange(6)[None] < np.array([[6], [4], [5]])).astype(np.float32))
    tgt = jnp.asarray(rng.integers(0, 9, (3, 5)), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), src, mask, tgt, train=False)["params"]
    params = jax.tree.map(lambda x: x * 2.0, params)  # less uniform outputs
    log_a = {  # open, closed, fractional (eval gate 0.62), closed; all closed in one layer
        ("enc_0", "self_attn"): [9.0, -9.0, 0.3, -9.0],
        ("enc_1", "self_attn"): [-9.0, -9.0, -9.0, -9.0],
        ("dec_0", "enc_attn"): [-9.0, 9.0, 9.0, 9.0],
        ("dec_1", "enc_attn"): [9.0, -9.0, -9.0, -9.0],
    }
    params = jax.tree.map(np.asarray, params)
    for (layer, sub), value in log_a.items():
        params[layer][sub]["gate"]["log_a"] = np.asarray(value, np.float32)
    values = soh.head_gates(cfg, params)  # what the notebook plots: the heads' eval gates
    assert sorted(values) == ["dec-enc", "dec-self", "enc-self"]
    np.testing.assert_array_equal(values["dec-self"], [[1, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(values["enc-self"][:, [0, 1, 3]], [[1, 0, 0], [0, 0, 0]])
    fields, small = model.pruned(params)
    assert fields["concrete_heads"] == [] and fields["alive_heads"] == {}
    assert [len(r) for r in fields["kept_heads"]["enc-self"]] == [2, 0]
    assert [len(r) for r in fields["kept_heads"]["dec-self"]] == [3, 0]
    assert [len(r) for r in fields["kept_heads"]["dec-enc"]] == [3, 1]
    assert fields["kept_heads"]["enc-self"][0] == [
        1.0,
        pytest.approx(float(gates.eval_gate(jnp.float32(0.3)))),
    ]
    pruned = soh.StoryOfHeads(dataclasses.replace(cfg, concrete_heads=(), alive_heads={},
                                                  kept_heads=fields["kept_heads"]))  # fmt: skip
    shapes = jax.tree.map(np.shape, small)
    want = jax.tree.map(
        np.shape, pruned.init(jax.random.PRNGKey(0), src, mask, tgt, train=False)["params"]
    )
    assert shapes == want
    count = lambda p: sum(np.size(x) for x in jax.tree.leaves(p))
    assert count(small) < count(params)
    full, _ = model.apply({"params": params}, src, mask, tgt, train=False)
    cut, aux = pruned.apply({"params": small}, src, mask, tgt, train=False)
    np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-5)
    assert float(aux["open_enc_self"]) == 2 and float(aux["open_dec_enc"]) == 4
    for search in (decoding.greedy, decoding.beam_search):
        a, b = search(model, params, src, mask), search(pruned, small, src, mask)
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_bfloat16_computes_in_bf16_and_keeps_float32_outputs():
    """model.dtype='bfloat16': the projections and feed-forwards run in bf16 over float32
    parameters; logits, gate statistics and the decoding cache's reads stay usable: logits
    within bf16 rounding of float32, and the K/V cache is bf16 (half the decoding memory)."""
    gated = dict(concrete_heads=("enc-self", "dec-enc"))
    f32, bf16 = _model(**gated), _model(**gated, dtype="bfloat16")
    params = _init(f32)
    src, mask, tgt = _inputs()
    logits, aux = f32.apply({"params": params}, src, mask, tgt, train=False)
    logits16, aux16 = bf16.apply({"params": params}, src, mask, tgt, train=False)
    assert logits16.dtype == jnp.float32 and aux16["l0_penalty"].dtype == jnp.float32
    assert np.abs(logits16 - logits).max() < 0.03 * np.abs(logits).max()
    np.testing.assert_allclose(aux16["l0_penalty"], aux["l0_penalty"], rtol=1e-6)
    enc, _ = bf16.apply({"params": params}, src, mask, train=False, method="encode")
    cache = bf16.apply({"params": params}, enc, 5, method="init_cache")
    assert cache["self"][0][0].dtype == jnp.bfloat16
