"""Transformer-XL: the five family tests (STYLE.md §7), a float64 loop of the reference's
equations across segments, the KV-cache decoder and a tiny training run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import transformer_xl as txl_config
from lmjax import models, optim, tasks, train
from lmjax import state as state_lib
from lmjax.layers import gates
from tests.models import family

_model = functools.partial(family.tiny_model, txl_config)
_perturbed_params = family.perturbed_params
_jit_apply = family.jit_apply
_tokens = family.random_tokens


def _reference_forward(params, segments, c):
    """The reference's `_forward` + `_update_mems` in float64 with growing memories, written
    per (query, key) pair: score = ((q_i + u)·k_j + (q_i + v)·W_r R(mlen + i - j)) / √k."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    nh, hk, d = c.num_heads, c.head_dim, c.d_model
    b = segments[0].shape[0]
    mems = [np.zeros((b, 0, d))] * c.num_layers

    def ln(x, q):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * q["scale"] + q["bias"]

    outs = []
    for seg in segments:
        seg = np.asarray(seg)
        t, mlen = seg.shape[1], mems[0].shape[1]
        h = p["embed"]["embedding"][seg] * np.sqrt(d)
        hids = [h]
        for i in range(c.num_layers):
            a = p[f"layer_{i}"]["attn"]
            cat = np.concatenate([mems[i], h], axis=1)
            qkv = (cat @ a["qkv"]["kernel"]).reshape(b, mlen + t, 3, nh, hk)
            q, k, v = qkv[:, mlen:, 0], qkv[:, :, 1], qkv[:, :, 2]
            out = np.zeros((b, t, nh, hk))
            for qi in range(t):
                dist = np.maximum(mlen + qi - np.arange(mlen + qi + 1), 0.0)
                if c.clamp_len > 0:
                    dist = np.minimum(dist, c.clamp_len)
                freq = 1 / 10000 ** (np.arange(0, d, 2) / d)
                pe = np.concatenate([np.sin(dist[:, None] * freq), np.cos(dist[:, None] * freq)], 1)
                r = (pe @ a["r_net"]["kernel"]).reshape(-1, nh, hk)  # [j, h, k]
                ac = np.einsum("bhk,bjhk->bhj", q[:, qi] + p["r_w_bias"], k[:, : mlen + qi + 1])
                bd = np.einsum("bhk,jhk->bhj", q[:, qi] + p["r_r_bias"], r)
                s = (ac + bd) / np.sqrt(hk)
                w = np.exp(s - s.max(-1, keepdims=True))
                w /= w.sum(-1, keepdims=True)
                out[:, qi] = np.einsum("bhj,bjhk->bhk", w, v[:, : mlen + qi + 1])
            h = ln(h + out.reshape(b, t, -1) @ a["o_net"]["kernel"], a["layer_norm"])
            f = p[f"layer_{i}"]["ff"]
            z = np.maximum(h @ f["fc1"]["kernel"] + f["fc1"]["bias"], 0)
            h = ln(h + z @ f["fc2"]["kernel"] + f["fc2"]["bias"], f["layer_norm"])
            hids.append(h)
        outs.append(h @ p["embed"]["embedding"].T + p["out_bias"])
        mems = [np.concatenate([mems[i], hids[i]], 1)[:, -c.mem_len :] for i in range(len(mems))]
    return outs


def test_shapes_and_dtypes():
    model = _model()
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    logits, carry, aux = model.apply({"params": params}, tokens, None, train=False)
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
    assert aux == {}
    assert len(carry.memory) == 2 and carry.memory[0].shape == (2, 16, 32)
    assert carry.memory[0].dtype == jnp.float32
    np.testing.assert_array_equal(carry.mem_count, [16, 16])
    bf16 = _model(dtype="bfloat16")
    logits16, carry16, _ = bf16.apply({"params": params}, tokens, None, train=False)
    assert logits16.dtype == jnp.float32 and carry16.memory[1].dtype == jnp.float32
    # bf16 projections with large perturbed weights: STYLE.md §7 allows 1e-1.
    assert np.abs(logits16 - logits).max() < 0.1 * np.abs(logits).max()


def test_causality():
    model = _model()
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    apply = _jit_apply(model, params)
    logits, carry, _ = apply(tokens, None)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 256)
    logits2, _, _ = apply(changed, None)
    np.testing.assert_array_equal(logits[:, :9], logits2[:, :9])
    assert np.abs(logits[:, 9:] - logits2[:, 9:]).max() > 1e-4


@pytest.mark.parametrize("mem_len,clamp_len", [(16, 0), (6, 0), (6, 4)])
def test_matches_reference_loop_across_segments(mem_len, clamp_len):
    """Three segments, memory carried; mem_len 6 < 8 truncates it as `_update_mems` does."""
    model = _model(mem_len=mem_len, clamp_len=clamp_len)
    tokens = _tokens(2, 24)
    params = _perturbed_params(model, tokens)
    apply = _jit_apply(model, params)
    segments = [tokens[:, :8], tokens[:, 8:16], tokens[:, 16:]]
    expected = _reference_forward(params, segments, model.config)
    carry = None
    for seg, ref in zip(segments, expected, strict=True):
        logits, carry, _ = apply(seg, carry)
        np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_whole_equals_split_through_carry():
    """With memory >= the first part, the split pass sees the same keys at the same distances."""
    model = _model(mem_len=16)
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    apply = _jit_apply(model, params)
    whole, wcarry, _ = apply(tokens, None)
    first, carry, _ = apply(tokens[:, :5], None)
    second, carry, _ = apply(tokens[:, 5:], carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    for m, wm in zip(carry.memory, wcarry.memory, strict=True):
        np.testing.assert_allclose(m, wm, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_cache", [False, True])
def test_step_by_step_decode_equals_window(kv_cache):
    model = _model(mem_len=12, kv_cache=kv_cache)
    tokens = _tokens(2, 12)
    params = _perturbed_params(model, tokens)
    whole, _, _ = _model(mem_len=12).apply({"params": params}, tokens, None, train=False)
    apply = _jit_apply(model, params)
    carry, steps = model.init_carry(2), []
    for i in range(12):
        out, carry, _ = apply(tokens[:, i : i + 1], carry)
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), whole, rtol=1e-5, atol=1e-5)


def test_fused_attention_equals_explicit():
    """jax.nn.dot_product_attention (position term as its bias) vs the explicit softmax, values
    and gradients (the bias carries the gradient of r_net and r_r_bias)."""
    tokens = _tokens(2, 16)
    model = _model()
    params = _perturbed_params(model, tokens)
    carry = model.apply({"params": params}, tokens, None, train=False)[1]
    outs = []
    for m in (model, _model(fused_attention=False)):
        f = lambda p, m=m: m.apply({"params": p}, tokens, carry, train=False)[0]
        outs.append((f(params), jax.grad(lambda p, f=f: jnp.sum(jnp.sin(f(p))))(params)))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        # float32 rounding on gradients of size ~100: compare at the scale of each tensor
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, np.abs(b).max()))


def test_gradients_finite_and_nonzero():
    model = _model(dropout_rate=0.0, dropout_attn=0.1)  # attention dropout: the explicit path
    tokens = _tokens(2, 16)
    params = _perturbed_params(model, tokens)
    carry = model.apply({"params": params}, tokens, None, train=False)[1]  # non-empty memory

    def loss(p):
        logits, _, _ = model.apply(
            {"params": p}, tokens, carry, train=True, rngs={"dropout": jax.random.PRNGKey(0)}
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(params)):
        assert np.all(np.isfinite(g)), path
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_init_matches_reference():
    model = _model(d_model=64, d_ff=128)
    params = model.init(jax.random.PRNGKey(0), _tokens(1, 4), None, train=False)["params"]
    np.testing.assert_allclose(np.std(params["embed"]["embedding"]), 0.02, rtol=0.05)
    np.testing.assert_allclose(np.std(params["layer_0"]["ff"]["fc1"]["kernel"]), 0.02, rtol=0.1)
    scale = params["layer_0"]["attn"]["layer_norm"]["scale"]
    assert 0.005 < np.std(scale) < 0.04 and abs(np.mean(scale) - 1) < 0.02
    assert np.all(params["out_bias"] == 0) and np.all(params["layer_0"]["ff"]["fc1"]["bias"] == 0)


def test_tiny_config_takes_a_train_step():
    """The tiny config through the trainer's own step: init, one update, finite metrics."""
    config = txl_config.get_config("tiny")
    model = models.get_model(config)
    tx, _ = optim.make_optimizer(config.optim)
    rng = jax.random.key_data(jax.random.PRNGKey(0))
    task = tasks.get_task(config)
    state = state_lib.create_train_state(rng, model=model, tx=tx, init_inputs=task.init_inputs())
    tokens = _tokens(8, 17)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((8, 16))}
    step = jax.jit(functools.partial(train.train_step, task=task, model=model, tx=tx))
    state, carry, metrics = step(state, model.init_carry(8), batch)
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss_sum"]))
    np.testing.assert_array_equal(carry.mem_count, 16)


def test_param_count_matches_the_reference():
    """The 12-layer enwik8 base: 41M (specs/results.md §1a)."""
    model = models.get_model(txl_config.get_config("enwik8"))
    init = lambda: model.init(jax.random.PRNGKey(0), _tokens(1, 4), None, train=False)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(jax.eval_shape(init)))
    assert abs(count / 1e6 - 41.08) < 0.01, count


def test_head_gates_train_and_report_open_heads(tmp_path):
    """`model.head_gates`: the Story of Heads' Hard-Concrete gate on a language model's heads.
    Through the trainer, the L0 term (aux `l0_penalty`, in the loss) falls as the gates learn
    and every logged step reports the heads whose eval gate is open; evaluation is
    deterministic; off, the model has no gate parameters."""
    from lmjax import writers

    config = txl_config.get_config("tiny")
    config.model.head_gates = True
    config.model.head_gate_coef = 1.0
    config.optim.learning_rate = 3e-2  # let the gates move within a few steps
    config.train.num_steps = 24
    config.train.log_every = 6
    config.train.eval_every = config.train.checkpoint_every = 24
    train.train_and_evaluate(config, tmp_path)
    events = [e for e in writers.read_metrics(tmp_path) if e["split"] == "train"]
    heads = config.model.num_layers * config.model.num_heads
    assert len(events) == 4
    assert all(0 <= e["open_heads"] <= heads and e["l0_penalty"] > 0 for e in events)
    assert events[-1]["l0_penalty"] < events[0]["l0_penalty"]

    model = models.get_model(config)
    tokens = _tokens(2, 9)
    params = model.init(jax.random.PRNGKey(0), tokens, train=False)["params"]
    assert params["layer_0"]["attn"]["gate"]["log_a"].shape == (config.model.num_heads,)
    run = jax.jit(lambda p: model.apply({"params": p}, tokens, train=False))
    (a, _, aux_a), (b, _, _) = run(params), run(params)
    np.testing.assert_array_equal(a, b)
    assert float(aux_a["open_heads"]) == float(
        sum(
            jnp.sum(gates.eval_gate(params[f"layer_{i}"]["attn"]["gate"]["log_a"]) != 0)
            for i in range(config.model.num_layers)
        )
    )
    config.model.head_gates = False
    plain = models.get_model(config).init(jax.random.PRNGKey(0), tokens, train=False)["params"]
    assert "gate" not in plain["layer_0"]["attn"]
