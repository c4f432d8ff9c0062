"""Numerical parity of our SHA-RNN with the PyTorch one in reference/torch_sha_rnn.py.

reference/sha_rnn_reference.py runs in the torch venv (.venv-torch, made by
reference/setup_torch_env.sh): it perturbs every parameter of a tiny torch SHA-RNN, runs three
consecutive segments in eval mode carrying LSTM state and memory (mem_len 6 < seq_len 8, so the
memory truncates), and saves parameters (reference state-dict names), tokens, logits and the final
carry. We map the weights into our tree and compare logits, LSTM states and the kept memory.
"""

import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sha_rnn as sha_config
from lmjax import models

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_TORCH_PY = _ROOT / ".venv-torch" / "bin" / "python"
_SCRIPT = _ROOT / "reference" / "sha_rnn_reference.py"
_MEM_LEN, _SEQ_LEN, _BATCH, _SEGMENTS = 6, 8, 2, 3

pytestmark = pytest.mark.torch


def _torch_reference(out):
    if not _TORCH_PY.exists():
        pytest.skip(f"no torch venv at {_TORCH_PY} (make it with reference/setup_torch_env.sh)")
    probe = subprocess.run(
        [str(_TORCH_PY), "-c", "import torch"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        pytest.skip(f"torch is not importable in {_TORCH_PY}: {probe.stderr.strip()[-300:]}")
    config = sha_config.get_config("tiny").model
    args = [
        f"--out={out}",
        f"--vocab={config.vocab_size}",
        f"--width={config.d_model}",
        f"--boom={config.d_ff}",
        f"--layers={config.num_layers}",
        f"--attn_layers={','.join(str(i) for i in config.attn_layers)}",
        f"--mem_len={_MEM_LEN}",
        f"--seq_len={_SEQ_LEN}",
        f"--batch_size={_BATCH}",
        f"--segments={_SEGMENTS}",
    ]
    run = subprocess.run(
        [str(_TORCH_PY), str(_SCRIPT), *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(np.load(out))


def _to_jax_params(ref, num_layers, attn_layers):
    """Reference state dict -> our param tree. Linear weights are [out, in]: transpose. LSTM gate
    rows [i, f, g, o] stay in that order along our 4d axis; our single bias is b_ih + b_hh."""
    w = {k.removeprefix("param/"): v for k, v in ref.items() if k.startswith("param/")}
    used = set()

    def get(name):
        used.add(name)
        return jnp.asarray(w[name])

    def ln(name):
        return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

    def dense(name):
        return {"kernel": get(f"{name}.weight").T, "bias": get(f"{name}.bias")}

    np.testing.assert_array_equal(w["decoder.weight"], w["encoder.weight"])  # tied
    used.add("decoder.weight")
    params = {"Embed_0": {"embedding": get("encoder.weight")}, "decoder_bias": get("decoder.bias")}
    for i in range(num_layers):
        p = f"blocks.{i}"
        layer = {
            "ln_start": ln(f"{p}.lnstart"),
            "lstm": {
                "w_ih": get(f"{p}.rnn.weight_ih_l0").T,
                "w_hh": get(f"{p}.rnn.weight_hh_l0").T,
                "bias": get(f"{p}.rnn.bias_ih_l0") + get(f"{p}.rnn.bias_hh_l0"),
            },
            "ln_ff": ln(f"{p}.lnff"),
            "ln_xff": ln(f"{p}.lnxff"),
            "boom": {"Dense_0": dense(f"{p}.ff.linear1")},
        }
        if i in attn_layers:
            layer["ln_mem"] = ln(f"{p}.lnmem")
            layer["ln_mid"] = ln(f"{p}.lnmid")
            layer["attn"] = {
                "qs": get(f"{p}.attn.qs"),
                "ks": get(f"{p}.attn.ks"),
                "vs": get(f"{p}.attn.vs"),
                "query": dense(f"{p}.attn.q"),
                "query_norm": ln(f"{p}.attn.qln"),
                "value_gate": dense(f"{p}.attn.vq.l1"),
            }
        params[f"layer_{i}"] = layer
    assert used == set(w), f"reference parameters not mapped: {sorted(set(w) - used)}"
    return params


def test_matches_torch_reference(tmp_path):
    ref = _torch_reference(tmp_path / "sha_rnn_reference.npz")
    config = sha_config.get_config("tiny")
    config.model.mem_len = _MEM_LEN
    model = models.get_model(config)
    c = model.config
    tokens = jnp.asarray(ref["tokens"], jnp.int32)  # [segments, b, t]
    assert tokens.shape == (_SEGMENTS, _BATCH, _SEQ_LEN)

    params = _to_jax_params(ref, c.num_layers, c.attn_layers)
    init = model.init(jax.random.PRNGKey(0), tokens[0], None, train=False)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(init)
    for (path, ours), theirs in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(init), strict=True
    ):
        assert ours.shape == theirs.shape, (jax.tree_util.keystr(path), ours.shape, theirs.shape)

    deltas = {}
    with jax.default_matmul_precision("highest"):
        apply = jax.jit(lambda x, carry: model.apply({"params": params}, x, carry, train=False))
        carry = model.init_carry(_BATCH)
        for s in range(_SEGMENTS):
            logits, carry, _ = apply(tokens[s], carry)
            deltas[f"logits_{s}"] = float(np.abs(np.asarray(logits) - ref[f"logits_{s}"]).max())
            np.testing.assert_allclose(logits, ref[f"logits_{s}"], rtol=1e-5, atol=1e-5)

    for i in range(c.num_layers):
        for name, ours in (("h", carry.lstm[i].h), ("c", carry.lstm[i].c)):
            deltas[f"{name}_{i}"] = float(np.abs(np.asarray(ours) - ref[f"{name}_{i}"]).max())
            np.testing.assert_allclose(ours, ref[f"{name}_{i}"], rtol=1e-5, atol=1e-5)
    kept = min(_MEM_LEN, _SEGMENTS * _SEQ_LEN)
    np.testing.assert_array_equal(carry.mem_count, [kept] * _BATCH)
    for j, i in enumerate(c.attn_layers):
        assert ref[f"mem_{i}"].shape == (_BATCH, kept, c.d_model)
        ours = np.asarray(carry.memory[j])[:, c.mem_len - kept :]  # valid slots are on the right
        deltas[f"mem_{i}"] = float(np.abs(ours - ref[f"mem_{i}"]).max())
        np.testing.assert_allclose(ours, ref[f"mem_{i}"], rtol=1e-5, atol=1e-5)
    scale = max(float(np.abs(ref[f"logits_{s}"]).max()) for s in range(_SEGMENTS))
    print(
        f"max |logit| {scale:.3g}; max |Δ| " + ", ".join(f"{k} {v:.2e}" for k, v in deltas.items())
    )
