"""SHA-RNN: the five family tests (STYLE.md §7) plus the paper's quirks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sha_rnn as sha_config
from lmjax.models import sha_rnn
from tests.models import family

_model = functools.partial(family.tiny_model, sha_config)
_perturbed_params = family.perturbed_params
_jit_apply = family.jit_apply
_tokens = family.random_tokens


def test_shapes_and_dtypes():
    model = _model()
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    logits, carry, aux = model.apply({"params": params}, tokens, None, train=False)
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
    assert aux == {}
    assert len(carry.lstm) == 2 and carry.lstm[0].h.shape == (2, 32)
    assert carry.memory[0].shape == (2, 24, 32) and carry.memory[0].dtype == jnp.float32
    np.testing.assert_array_equal(carry.mem_count, [16, 16])
    bf16 = _model(dtype="bfloat16")
    logits16, carry16, _ = bf16.apply({"params": params}, tokens, None, train=False)
    assert logits16.dtype == jnp.float32 and carry16.lstm[0].c.dtype == jnp.float32
    # bf16 matmuls: about 1% of the logit scale (perturbed params give logits up to ~20).
    assert np.abs(logits16 - logits).max() < 0.03 * np.abs(logits).max()


def test_causality():
    model = _model()
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    logits, _, _ = model.apply({"params": params}, tokens, None, train=False)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 256)
    logits2, _, _ = model.apply({"params": params}, changed, None, train=False)
    np.testing.assert_array_equal(logits[:, :9], logits2[:, :9])
    assert np.abs(logits[:, 9:] - logits2[:, 9:]).max() > 1e-4


@pytest.mark.parametrize("mem_len", [24, 6])  # 6 < window: the memory truncation bites
def test_whole_equals_split_through_carry(mem_len):
    model = _model(mem_len=mem_len)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    apply = _jit_apply(model, params)
    carry0 = model.init_carry(2)
    a, _, _ = apply(tokens[:, :5], carry0)
    logits, carry, _ = apply(tokens[:, 5:], apply(tokens[:, :5], carry0)[1])
    # Reference: one pass over 5 then 11 tokens must equal passes 0..4 | 5..15 and,
    # when the memory holds everything (mem_len >= 16), the single whole pass.
    whole, wcarry, _ = apply(tokens, carry0)
    if mem_len >= 16:
        np.testing.assert_allclose(logits, whole[:, 5:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(carry.memory[0], wcarry.memory[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a, whole[:, :5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(carry.lstm[1].h, wcarry.lstm[1].h, rtol=1e-5, atol=1e-5)


def test_step_by_step_equals_window():
    """Decoding one token at a time through the carry equals the windowed pass, including
    memory truncation (mem_len 6 < 12 tokens)."""
    model = _model(mem_len=6)
    tokens = _tokens(2, 12)
    params = _perturbed_params(model, tokens)
    apply = _jit_apply(model, params)
    # Windows of 1 see at most mem_len earlier tokens; build the matching windowed reference
    # from 1-token steps on a model whose memory is large enough to never truncate.
    big = _model(mem_len=64)
    big_apply = _jit_apply(big, params)
    carry = big.init_carry(2)
    steps = []
    for i in range(12):
        out, carry, _ = big_apply(tokens[:, i : i + 1], carry)
        steps.append(out)
    whole, big_carry, _ = big_apply(tokens, big.init_carry(2))
    np.testing.assert_allclose(jnp.concatenate(steps, 1), whole, rtol=1e-5, atol=1e-5)
    # With truncation: the step-wise pass attends to the last 6 memory slots + itself.
    carry = model.init_carry(2)
    for i in range(12):
        out, carry, _ = apply(tokens[:, i : i + 1], carry)
    assert int(carry.mem_count[0]) == 6
    # Block 0 has no attention, so the stored LN_mem states do not depend on truncation: the
    # 6 kept slots are the last 6 of the untruncated memory.
    np.testing.assert_allclose(carry.memory[0], big_carry.memory[0][:, -6:], rtol=1e-5, atol=1e-5)


def test_gradients_finite_and_nonzero():
    model = _model(dropout_rate=0.0, dropout_hidden=0.0, dropout_input=0.0)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    carry = model.apply({"params": params}, tokens, None, train=False)[1]  # non-empty memory

    def loss(p):
        logits, _, _ = model.apply({"params": p}, tokens, carry, train=True)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = jax.tree_util.tree_leaves_with_path(jax.grad(loss)(params))
    for path, g in grads:
        assert np.all(np.isfinite(g)), path
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_boom_and_gelu_follow_the_reference():
    x = jnp.linspace(-3, 3, 7)
    np.testing.assert_allclose(sha_rnn._gelu_sigmoid(x), x / (1 + np.exp(-1.702 * x)), rtol=1e-6)
    boom = sha_rnn._Boom(d_model=4, d_ff=12, dropout_rate=0.0, dtype=jnp.float32)
    h = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 4))
    p = boom.init(jax.random.PRNGKey(1), h, train=False)["params"]
    z = sha_rnn._gelu_sigmoid(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, None, :])
    expected = z[..., 0:4] + z[..., 4:8] + z[..., 8:12]
    np.testing.assert_allclose(boom.apply({"params": p}, h, train=False), expected, atol=1e-6)


def test_init_matches_reference():
    model = _model(d_model=64, d_ff=128)
    params = model.init(jax.random.PRNGKey(0), _tokens(1, 4), None, train=False)["params"]
    std = 0.1 / 8
    np.testing.assert_allclose(np.std(params["Embed_0"]["embedding"]), std, rtol=0.05)
    attn = params["layer_1"]["attn"]
    assert all(np.all(attn[k] == 0) for k in ("qs", "ks", "vs"))
    assert np.all(params["layer_0"]["ln_start"]["scale"] == 1)
    assert np.all(params["decoder_bias"] == 0)
