"""SRU and SRU++ against the `sru` package: reference weights copied into lmjax, equal outputs.

The reference runs in its own environment (.venv-torch from reference/setup_torch_env.sh: torch
2.13.0 CPU, sru 2.6.0, and sru 3.0.0.dev6 for SRU++) through reference/sru_reference.py, which
dumps weights, inputs and outputs to an .npz. Every test skips, naming the missing piece, when
that environment is absent. float32, |Δ| <= 1e-5.
"""

import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.layers import sru as sru_layer
from lmjax.models import sru_pp

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV = pathlib.Path(os.environ.get("TORCH_VENV", ROOT / ".venv-torch"))
SCRIPT = ROOT / "reference" / "sru_reference.py"
TOL = dict(rtol=1e-5, atol=1e-5)


def _has_sru(py):
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('sru') is None)"
    return subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0


def _reference(mode, out):
    py = VENV / "bin" / "python"
    if not py.exists():
        pytest.skip(f"{py} not found: create it with `bash reference/setup_torch_env.sh`")
    if not _has_sru(py):
        pytest.skip(
            f"the `sru` package is not installed in {VENV}: run reference/setup_torch_env.sh"
        )
    if mode == "srupp" and not (VENV / "sru3" / "sru").is_dir():
        pytest.skip(
            f"sru 3.0.0.dev6 (SRU++) not in {VENV / 'sru3'}: run reference/setup_torch_env.sh"
        )
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    # The first import compiles sru's C++ op (~35 s on 2 cores); later runs reuse the build.
    proc = subprocess.run(
        [str(py), str(SCRIPT), mode, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def sru_ref(tmp_path_factory):
    return _reference("sru", tmp_path_factory.mktemp("sru") / "sru.npz")


@pytest.fixture(scope="module")
def srupp_ref(tmp_path_factory):
    return _reference("srupp", tmp_path_factory.mktemp("srupp") / "srupp.npz")


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# (input_size, hidden_size, layers, bidirectional, rescale, n_proj, v1) as in the script.
SRU_CASES = {
    "uni": (8, 8, 2, False, False, 0, False),
    "uni_rescale": (8, 8, 2, False, True, 0, False),
    "bi": (16, 8, 2, True, False, 0, False),
    "bi_rescale": (16, 8, 2, True, True, 0, False),
    "k4": (6, 8, 2, False, True, 0, False),
    "k4_bi": (6, 8, 2, True, False, 0, False),
    "proj": (12, 16, 2, False, False, 4, False),
    "v1": (8, 8, 2, False, False, 0, True),
}


@pytest.mark.parametrize("case", sorted(SRU_CASES))
def test_sru_matches_reference(sru_ref, case):
    """sru.SRU 2.6.0 stacks: one and two directions, rescale on/off, k = 3 and 4, projection."""
    _, hidden, layers, bi, rescale, n_proj, v1 = SRU_CASES[case]
    ref = {k.split("/", 1)[1]: v for k, v in sru_ref.items() if k.startswith(case + "/")}
    x = jnp.asarray(ref["x"]).swapaxes(0, 1)  # [b, t, d_in]
    cs = []
    for i in range(layers):
        layer = sru_layer.SRULayer(
            hidden, bidirectional=bi, highway_bias=-1.0, rescale=rescale,
            projection_size=n_proj, vc_terms=not v1,
        )  # fmt: skip
        p = {k: ref[f"rnn_lst.{i}.{k}"] for k in ("weight", "bias", "weight_c", "weight_proj")
             if f"rnn_lst.{i}.{k}" in ref}  # fmt: skip
        if v1:  # v1 keeps a frozen all-zero weight_c; lmjax has no parameter for it
            assert np.all(p.pop("weight_c") == 0)
        np.testing.assert_allclose(
            ref[f"rnn_lst.{i}.scale_x"], sru_layer.scale_x(rescale, -1.0), rtol=1e-6
        )
        x, c = layer.apply({"params": p}, x, jnp.asarray(ref["c0"][i]), train=False)
        cs.append(c)
    h_diff, c_diff = _max_diff(x, ref["h"].swapaxes(0, 1)), _max_diff(jnp.stack(cs), ref["c"])
    print(f"sru {case}: max|Δh| {h_diff:.2e} max|Δc| {c_diff:.2e}")
    np.testing.assert_allclose(x, ref["h"].swapaxes(0, 1), **TOL)
    np.testing.assert_allclose(jnp.stack(cs), ref["c"], **TOL)


@pytest.mark.parametrize("case", ["mask", "mask_bi"])
def test_recurrence_dropout_mask_matches_reference(sru_ref, case):
    """The training-time mask m multiplies r ⊙ (c − s), shared over time (the reference's op)."""
    ref = {k.split("/", 1)[1]: v for k, v in sru_ref.items() if k.startswith(case + "/")}
    t, b, n = ref["x"].shape
    h, c = sru_layer.sru_highway(
        jnp.asarray(ref["u"]).swapaxes(0, 1).reshape(b, t, n, 3),
        jnp.asarray(ref["x"]).swapaxes(0, 1) * ref["scale_x"][0],
        jnp.asarray(ref["weight_c"]),
        jnp.asarray(ref["bias"]),
        jnp.asarray(ref["c0"]),
        jnp.asarray(ref["mask"]),
        bidirectional=case == "mask_bi",
        impl="sequential",
        unroll=1,
    )
    print(f"sru {case}: max|Δh| {_max_diff(h, ref['h'].swapaxes(0, 1)):.2e}")
    np.testing.assert_allclose(h, ref["h"].swapaxes(0, 1), **TOL)
    np.testing.assert_allclose(c, ref["c"], **TOL)


def _srupp_params(ref, num_layers, attn_layers):
    t = lambda k: jnp.asarray(ref[k]).T  # torch Linear (out, in) -> Flax kernel (in, out)
    params = {
        "embed": {"embedding": ref["embedding_layer.weight"]},
        "output": {"kernel": t("output_layer.weight"), "bias": ref["output_layer.bias"]},
    }
    for i in range(num_layers):
        pre = f"rnn.rnn_lst.{i}."
        tm = pre + "transform_module."
        ln = {"scale": ref[tm + "layer_norm.weight"], "bias": ref[tm + "layer_norm.bias"]}
        transform = {
            "linear1": {"kernel": t(tm + "linear1.weight")},
            "linear2": {"kernel": t(tm + "linear2.weight")},
            "layer_norm": ln,
        }
        if i in attn_layers:
            transform["linear3"] = {"kernel": t(tm + "linear3.weight")}
            transform["alpha"] = ref[tm + "alpha"]
        params[f"layer_{i}"] = {
            "weight_c": ref[pre + "weight_c"],
            "bias": ref[pre + "bias"],
            "transform": transform,
        }
    return params


@pytest.mark.parametrize("every_k", [1, 2])
@pytest.mark.parametrize("same_length", [False, True])
def test_srupp_two_segments_with_memory_match_reference(srupp_ref, every_k, same_length):
    """sru.SRUpp 3.0.0.dev6 in train_enwik8.py's LM: logits, states and memory after each of two
    segments. same_length=False is the training mask (our train=True, dropout 0), True the
    evaluation mask (train=False)."""
    name = f"k{every_k}"
    ref = {k.split("/", 1)[1]: v for k, v in srupp_ref.items() if k.startswith(name + "/")}
    tokens = jnp.asarray(ref["tokens"])
    b, two_l = tokens.shape
    seg = two_l // 2
    config = sru_pp.SRUppConfig(
        vocab_size=20, d_model=16, attn_dim=8, num_layers=3, num_heads=2, attn_every_k=every_k,
        mem_len=seg, highway_bias=-2.0, dropout_rate=0.0, attn_dropout=0.0, scan_impl="sequential",
    )  # fmt: skip
    model = sru_pp.SRUpp(config)
    params = _srupp_params(ref, config.num_layers, config.attn_layers)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, train=False))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, shapes["params"])
    carry = None
    for s in range(2):
        logits, carry, _ = model.apply(
            {"params": params}, tokens[:, s * seg : (s + 1) * seg], carry, train=not same_length
        )
        tag = f"same{int(same_length)}/seg{s}"
        diff = _max_diff(logits, ref[f"{tag}/logits"])
        print(f"srupp k={every_k} same_length={same_length} segment {s}: max|Δlogits| {diff:.2e}")
        np.testing.assert_allclose(logits, ref[f"{tag}/logits"], **TOL)
        np.testing.assert_allclose(jnp.stack(carry.c), ref[f"{tag}/c"], **TOL)
        for j, i in enumerate(config.attn_layers):
            np.testing.assert_allclose(carry.memory[j], ref[f"{tag}/memory{i}"], **TOL)
        np.testing.assert_array_equal(carry.mem_count, [seg] * b)
