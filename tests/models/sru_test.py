"""SRU / SRU++: the family tests (STYLE.md §7) plus the reference's quirks, without torch.

The SRU layer itself (against a numpy loop) is tested in tests/layers/sru_layer_test.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sru as sru_config
from configs import sru_pp as srupp_config
from lmjax import models, train, writers
from lmjax.models import sru_pp
from tests.models import family

CONFIGS = {"sru_pp": srupp_config, "sru": sru_config}


def _model(name="sru_pp", **overrides):
    return family.tiny_model(CONFIGS[name], **overrides)


_tokens = family.random_tokens
_perturbed_params = family.perturbed_params
_apply = family.jit_apply


@pytest.mark.parametrize("name", ["sru_pp", "sru"])
def test_shapes_and_dtypes(name):
    model = _model(name)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    logits, carry, aux = _apply(model, params)(tokens, None)
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32 and aux == {}
    assert len(carry.c) == 2 and carry.c[0].shape == (2, 32) and carry.c[0].dtype == jnp.float32
    if name == "sru_pp":
        assert len(carry.memory) == 1  # tiny: only layer 1 has attention
        assert carry.memory[0].shape == (2, 16, 32) and carry.memory[0].dtype == jnp.float32
        np.testing.assert_array_equal(carry.mem_count, [16, 16])
    bf16 = _model(name, dtype="bfloat16")
    logits16, carry16, _ = _apply(bf16, params)(tokens, None)
    assert logits16.dtype == jnp.float32 and carry16.c[0].dtype == jnp.float32
    assert np.abs(logits16 - logits).max() < 0.05 * np.abs(logits).max()


@pytest.mark.parametrize("name", ["sru_pp", "sru"])
def test_causality(name):
    model = _model(name)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    for is_train in (False, True):  # both attention masks; dropout off: no rng needed
        model = _model(
            name, dropout_rate=0.0, **({"attn_dropout": 0.0} if name == "sru_pp" else {})
        )
        apply = jax.jit(lambda x, m=model, tr=is_train: m.apply({"params": params}, x, train=tr)[0])
        logits = apply(tokens)
        logits2 = apply(tokens.at[:, 9].set((tokens[:, 9] + 1) % 256))
        np.testing.assert_array_equal(logits[:, :9], logits2[:, :9])
        assert np.abs(logits[:, 9:] - logits2[:, 9:]).max() > 1e-4


@pytest.mark.parametrize("name,mem_len", [("sru_pp", 16), ("sru_pp", 3), ("sru", 0)])
def test_whole_equals_split_through_carry(name, mem_len):
    """Evaluation attends to the mem_len + 1 most recent positions, so any split through the
    carry equals the whole pass, also when the memory is shorter than the first part."""
    model = _model(name, **({"mem_len": mem_len} if name == "sru_pp" else {}))
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    apply = _apply(model, params)
    carry0 = model.init_carry(2)
    whole, wcarry, _ = apply(tokens, carry0)
    first, carry, _ = apply(tokens[:, :5], carry0)
    second, carry, _ = apply(tokens[:, 5:], carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(wcarry), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_step_by_step_decode_equals_window():
    """One token at a time through the carry (memory of 4 slots) equals the windowed pass."""
    model = _model(mem_len=4)
    tokens = _tokens(2, 10)
    params = _perturbed_params(model, tokens)
    apply = _apply(model, params)
    carry = model.init_carry(2)
    steps = []
    for i in range(10):
        out, carry, _ = apply(tokens[:, i : i + 1], carry)
        steps.append(out)
    whole, _, _ = apply(tokens, model.init_carry(2))
    np.testing.assert_allclose(jnp.concatenate(steps, 1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vc_terms", [True, False])
def test_associative_scan_equals_sequential(vc_terms):
    """The parallel option gives the same logits (v ⊙ c off: forward and backward are linear
    scans) and the same gradients (v ⊙ c on: the backward's reverse scan is associative)."""
    tokens = _tokens(2, 16)
    seq = _model(vc_terms=vc_terms, scan_impl="sequential", dropout_rate=0.0, attn_dropout=0.0)
    par = _model(vc_terms=vc_terms, scan_impl="associative", dropout_rate=0.0, attn_dropout=0.0)
    params = _perturbed_params(seq, tokens)
    carry = _apply(seq, params)(tokens, None)[1]

    def loss_and_grad(model):
        def loss(p):
            logits, _, _ = model.apply({"params": p}, tokens, carry, train=True)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, logits_s), grads_s = loss_and_grad(seq)
    (_, logits_p), grads_p = loss_and_grad(par)
    np.testing.assert_allclose(logits_p, logits_s, rtol=1e-5, atol=1e-5)
    for g_p, g_s in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_s), strict=True):
        np.testing.assert_allclose(g_p, g_s, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["sru_pp", "sru"])
def test_gradients_finite_and_nonzero(name):
    extra = {"attn_dropout": 0.0} if name == "sru_pp" else {}
    model = _model(name, dropout_rate=0.0, **extra)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    carry = _apply(model, params)(tokens, None)[1]  # non-empty memory

    def loss(p):
        logits, _, _ = model.apply({"params": p}, tokens, carry, train=True)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(params)):
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_attention_mask_matches_the_reference_slices():
    """Our [memory | segment] mask equals train_enwik8.py's set_mask() slice
    full[m : m + t, : m + t] (−10000 entries = masked), training and evaluation."""
    m = t = 4
    ones = np.ones((2 * m, 2 * m))
    for same_length in (False, True):
        full = np.triu(ones, 1) + (np.tril(ones, -1 - m) if same_length else 0)
        want = full[m : m + t, : m + t] == 0
        got = sru_pp._attention_mask(t, m, jnp.full((1,), m), same_length)[0]
        np.testing.assert_array_equal(got, want)
        # First segment: the reference has no memory columns; ours are masked out.
        got0 = sru_pp._attention_mask(t, m, jnp.zeros((1,), jnp.int32), same_length)[0]
        np.testing.assert_array_equal(got0[:, m:], full[:t, :t] == 0)
        assert not got0[:, :m].any()


def test_init_follows_the_reference():
    model = _model(d_model=64, attn_dim=32, dropout_rate=0.22)
    init = jax.jit(lambda key: model.init(key, _tokens(1, 4), None, train=False)["params"])
    params = init(jax.random.PRNGKey(0))
    layer = params["layer_1"]
    assert layer["transform"]["alpha"] == 0
    np.testing.assert_array_equal(layer["bias"][:64], 0.0)  # b_f
    np.testing.assert_array_equal(layer["bias"][64:], -2.0)  # b_r = highway bias
    assert np.abs(layer["weight_c"]).max() <= 1.0 and np.abs(layer["weight_c"]).max() > 0.8
    np.testing.assert_array_equal(layer["transform"]["layer_norm"]["scale"], 1.0)
    # W3: xavier_uniform bound √(6 / (fan_in + fan_out)), times √(1 − p).
    w3 = layer["transform"]["linear3"]["kernel"]
    bound = np.sqrt(6 / (32 + 192)) * np.sqrt(0.78)
    assert bound * 0.95 < np.abs(w3).max() <= bound
    assert np.abs(params["embed"]["embedding"]).max() <= np.sqrt(3 / 64)
    np.testing.assert_array_equal(params["output"]["bias"], 0.0)


@pytest.mark.parametrize(
    "d_model,attn_dim,want",
    [(3072, 768, 107_566_295), (4096, 1024, 190_607_575), (6016, 752, 194_993_815)],
)
def test_parameter_count_matches_reference(d_model, attn_dim, want):
    """The paper's enwik8 models with the reference's 205-symbol vocabulary (B10)."""
    config = sru_pp.SRUppConfig(vocab_size=205, d_model=d_model, attn_dim=attn_dim, mem_len=8)
    model = sru_pp.SRUpp(config)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), train=False)
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == want


def test_configs_follow_the_paper():
    c = srupp_config.get_config()
    m = c.model
    assert (m.d_model, m.attn_dim, m.num_layers, m.attn_every_k, m.mem_len) == (
        3072,
        768,
        10,
        1,
        1024,
    )
    assert (m.highway_bias, m.dropout_rate, m.attn_dropout, m.tie_embeddings) == (
        -2.0,
        0.22,
        0.22,
        False,
    )
    assert (c.optim.name, c.optim.learning_rate, c.optim.weight_decay, c.optim.grad_clip) == (
        "radam", 3e-4, 0.1, 1.0,
    )  # fmt: skip
    assert (c.optim.schedule, c.optim.warmup_steps, c.optim.decay_steps) == (
        "cosine_torch", 16_000, 400_000,
    )  # fmt: skip
    assert (c.train.batch_size, c.train.seq_len) == (32, 1024)
    large = srupp_config.get_config("enwik8_large")
    assert (large.model.d_model, large.model.attn_dim, large.optim.learning_rate) == (
        4096,
        1024,
        4e-4,
    )
    k = models.get_model(srupp_config.get_config("enwik8_k"))
    assert k.config.attn_layers == (4, 9)
    cpu = srupp_config.get_config("cpu").model
    assert (cpu.num_layers, cpu.d_model, cpu.attn_dim, cpu.mem_len, cpu.attn_every_k) == (
        4,
        256,
        64,
        256,
        1,
    )


def test_one_device_equals_eight(tmp_path):
    """Two training steps of the tiny SRU++ on 1 and on 8 devices give the same losses."""
    assert jax.device_count() == 8

    def losses(name, devices):
        config = srupp_config.get_config("tiny")
        config.train.eval_every = 100  # the final step still validates once
        train.train_and_evaluate(config, tmp_path / name, devices=devices)
        return [e["loss"] for e in writers.read_metrics(tmp_path / name) if e["split"] == "train"]

    one, eight = losses("one", jax.devices()[:1]), losses("eight", None)
    assert len(one) == 2
    np.testing.assert_allclose(one, eight, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# wt103: tied adaptive input and softmax (B4)


def _wt103_tiny(**overrides):
    config = srupp_config.get_config("wt103_tiny")
    for k, v in overrides.items():
        config.model[k] = v
    return models.get_model(config)


def test_adaptive_io_nll_log_probs_and_split_through_carry():
    model = _wt103_tiny()
    tokens, targets = _tokens(2, 16), _tokens(2, 16, seed=1)
    params = _perturbed_params(model, tokens)
    assert "embed" not in params and "output" not in params and "adaptive" in params
    logp, carry, aux = _apply(model, params)(tokens, None)
    assert logp.shape == (2, 16, 256) and logp.dtype == jnp.float32 and aux == {}
    np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)
    nll_fn = jax.jit(
        lambda x, y, c: model.apply({"params": params}, x, y, c, train=False, method=model.nll)
    )
    nll, nll_carry, _ = nll_fn(tokens, targets, None)
    assert nll.shape == (2, 16) and nll.dtype == jnp.float32
    expected = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(nll_carry), strict=True):
        np.testing.assert_array_equal(a, b)
    first, c1, _ = nll_fn(tokens[:, :7], targets[:, :7], None)
    second, c2, _ = nll_fn(tokens[:, 7:], targets[:, 7:], c1)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), nll, rtol=1e-5, atol=1e-5)


def test_adaptive_io_gradients_finite_and_nonzero():
    model = _wt103_tiny(dropout_rate=0.0, attn_dropout=0.0, emb_dropout=0.0)
    tokens, targets = _tokens(2, 16), _tokens(2, 16, seed=1)
    params = _perturbed_params(model, tokens)
    carry = _apply(model, params)(tokens, None)[1]

    def loss(p):
        nll, _, _ = model.apply({"params": p}, tokens, targets, carry, train=True, method=model.nll)
        return jnp.mean(nll)

    for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(params)):
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize("variant,want", [("wt103", 147_676_036), ("wt103_large", 231_690_116)])
def test_wt103_parameter_count(variant, want):
    """README: 148M base, 232M large. The reference's count: 10 SRU++ layers plus the tied
    adaptive tables (20000 x 1024 with the 3 cluster rows, 20000 x 256, 160000 x 64,
    67738 x 16), their biases and the 4 projections d x (1024, 256, 64, 16)."""
    model = models.get_model(srupp_config.get_config(variant))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), train=False)
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == want


def test_wt103_config_follows_the_reference():
    c = srupp_config.get_config("wt103")
    m = c.model
    assert (c.data.name, c.data.level, m.vocab_size) == ("wikitext103", "word", 267_735)
    assert (m.adaptive_cutoffs, m.d_embed, m.div_val, m.tie_embeddings) == (
        (19997, 39997, 199997), 1024, 4, True,
    )  # fmt: skip
    assert (m.dropout_rate, m.attn_dropout, m.emb_dropout) == (0.15, 0.15, 0.15)
    assert (m.mem_len, c.train.seq_len, c.train.batch_size, c.eval.batch_size) == (
        768, 768, 64, 16,
    )  # fmt: skip
    assert (c.optim.schedule, c.optim.warmup_steps, c.optim.decay_steps) == (
        "cosine_torch_wt103", 16_000, 400_000,
    )  # fmt: skip
    large = srupp_config.get_config("wt103_large").model
    assert (large.d_model, large.attn_dim, large.mem_len, large.emb_dropout) == (
        4096, 1024, 1024, 0.2,
    )  # fmt: skip
