"""The fast-weight-programmer LM against IDSIA/lmtool-fwms at 52ada3d: lmjax parameters loaded
into the reference's `MemTransformerLM`, equal per-token NLL over two consecutive segments.

The reference runs in .venv-torch through reference/fwms_reference.py, once for every case. Its
source is `src/` of the lmtool-fwms git mirror (env FWMS_MIRROR, default
/work/.mirror/IDSIA+lmtool-fwms/repo), extracted with `git archive` into .cache/lmtool-fwms, or
a directory given by env FWMS_SRC. Types 2/4/5/6 are the reference's pure-torch layers; the
delta types 24/25/26/44/45/46 are its layers around the B.5(c) recurrence written out in torch
(the CUDA kernel stubbed, specs/attention.md D.B). Delta types run twice: windows from W = 0
with positions, and `carry_over_fast_weight` with `no_pos` (the carried W and z are compared
too); 24 and 44 also with `skip_attn_normalization`. lmjax runs both fast-weight implementations
(recurrent, chunkwise); the segment length is not a multiple of the chunk.
float32, |Δ NLL| <= 1e-5 + 1e-5 |NLL|.
"""

import json
import os
import pathlib
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fast_weights as fw_config
from lmjax.layers import attention
from tests.models import family

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV = pathlib.Path(os.environ.get("TORCH_VENV", ROOT / ".venv-torch"))
SCRIPT = ROOT / "reference" / "fwms_reference.py"
MIRROR = pathlib.Path(os.environ.get("FWMS_MIRROR", "/work/.mirror/IDSIA+lmtool-fwms/repo"))
COMMIT = "52ada3d1333ea346cbb142b30151f373b05e14d3"
CACHE = ROOT / ".cache" / "lmtool-fwms"
TOL = dict(rtol=1e-5, atol=1e-5)
SEG, BATCH = 12, 2  # two segments of 12; chunk_size 8 (the tiny config) leaves a partial chunk
PERTURB = 0.1

# attn_type -> lmjax fields (beyond configs/fast_weights.py:tiny, dropout 0)
TYPES = {
    2: dict(feature_map="softmax", update_rule="sum"),
    4: dict(feature_map="linear", update_rule="sum"),
    5: dict(feature_map="performer", update_rule="sum"),
    6: dict(feature_map="dpfp", update_rule="sum"),
    24: dict(feature_map="linear", update_rule="delta"),
    25: dict(feature_map="performer", update_rule="delta"),
    26: dict(feature_map="dpfp", update_rule="delta"),
    44: dict(feature_map="linear", update_rule="delta", attn_norm=True),
    45: dict(feature_map="performer", update_rule="delta", attn_norm=True),
    46: dict(feature_map="dpfp", update_rule="delta", attn_norm=True),
}
DELTA = (24, 25, 26, 44, 45, 46)


def _cases():
    """name -> (attn_type, skip_attn_normalization, carry (with no_pos))."""
    cases = {f"t{t}": (t, False, False) for t in TYPES}
    cases.update({f"t{t}_carry": (t, False, True) for t in DELTA})
    for t in (24, 44):
        cases[f"t{t}_skip"] = (t, True, False)
        cases[f"t{t}_skip_carry"] = (t, True, True)
    return cases


CASES = _cases()


def _overrides(case, impl):
    attn_type, skip, carry = CASES[case]
    return dict(
        TYPES[attn_type], dropout_rate=0.0, skip_attn_normalization=skip,
        carry_over_fast_weight=carry, no_pos=carry, fast_weight_impl=impl,
    )  # fmt: skip


def _torch_state(params, config):
    """lmjax params -> the reference's `named_parameters()` names (Linear weight = kernel.T),
    plus each Performer layer's `dec_attn.proj_matrix` attribute."""
    t = lambda x: np.ascontiguousarray(np.asarray(x).T)
    out = {
        "word_emb.emb_layers.0.weight": np.asarray(params["embed"]["embedding"]),  # = crit's
        "crit.out_layers.0.bias": np.asarray(params["out_bias"]),
    }
    for i in range(config.num_layers):
        attn, ff, pre = params[f"layer_{i}"]["attn"], params[f"layer_{i}"]["ff"], f"layers.{i}."
        for name in ("q_net", "kv_net", "qkvb_net", "o_net"):
            if name in attn:
                out[f"{pre}dec_attn.{name}.weight"] = t(attn[name]["kernel"])
        for ln, dst in ((attn["layer_norm"], "dec_attn"), (ff["layer_norm"], "pos_ff")):
            out[f"{pre}{dst}.layer_norm.weight"] = np.asarray(ln["scale"])
            out[f"{pre}{dst}.layer_norm.bias"] = np.asarray(ln["bias"])
        for src, dst in (("fc1", "CoreNet.0"), ("fc2", "CoreNet.3")):
            out[f"{pre}pos_ff.{dst}.weight"] = t(ff[src]["kernel"])
            out[f"{pre}pos_ff.{dst}.bias"] = np.asarray(ff[src]["bias"])
        if "proj_matrix" in attn:
            out[f"{pre}dec_attn.proj_matrix"] = np.asarray(attn["proj_matrix"])
    assert len(out) == len(jax.tree.leaves(params)), "an lmjax parameter has no reference name"
    return out


def _source():
    """The reference's src/ directory, or pytest.skip naming what is missing."""
    if os.environ.get("FWMS_SRC"):
        src = pathlib.Path(os.environ["FWMS_SRC"])
        if not (src / "model_main.py").is_file():
            pytest.skip(f"FWMS_SRC={src} has no model_main.py (want lmtool-fwms's src/)")
        return src
    src, stamp = CACHE / "src", CACHE / "COMMIT"
    if (
        (src / "model_main.py").is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == COMMIT
    ):
        return src
    if not MIRROR.is_dir() or shutil.which("git") is None:
        pytest.skip(f"lmtool-fwms source not found: no git mirror at {MIRROR} and FWMS_SRC unset")
    tmp = CACHE.with_name(f"lmtool-fwms.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    git = ["git", "-C", str(MIRROR), "archive", COMMIT, "src"]
    archive = subprocess.run(git, capture_output=True)
    if archive.returncode:
        shutil.rmtree(tmp)
        reason = archive.stderr.decode().strip().splitlines()[-1:] or ["git archive failed"]
        pytest.skip(f"lmtool-fwms commit {COMMIT[:7]} not readable from {MIRROR}: {reason[0]}")
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    (tmp / "COMMIT").write_text(COMMIT + "\n")
    shutil.rmtree(CACHE, ignore_errors=True)
    tmp.rename(CACHE)
    return src


def _has_torch(py):
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"
    return subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tokens, case -> perturbed lmjax params, the reference's outputs for every case)."""
    py = VENV / "bin" / "python"
    if not py.exists():
        pytest.skip(f"{py} not found: create it with `bash reference/setup_torch_env.sh`")
    if not _has_torch(py):
        pytest.skip(f"torch is not installed in {VENV}: run reference/setup_torch_env.sh")
    src = _source()
    tokens = family.random_tokens(BATCH, 2 * SEG + 1, seed=3)
    arrays, meta, by_case = {"tokens": np.asarray(tokens, np.int32)}, {}, {}
    by_type = {}  # the parameters depend on the type only; one init per type saves time
    for case in CASES:
        model = family.tiny_model(fw_config, **_overrides(case, "recurrent"))
        attn_type, skip, carry = CASES[case]
        if attn_type not in by_type:
            by_type[attn_type] = family.perturbed_params(
                model, tokens[:, :SEG], seed=attn_type, scale=PERTURB
            )
        params, c = by_type[attn_type], model.config
        meta[case] = dict(
            attn_type=attn_type, n_layer=c.num_layers, n_head=c.num_heads, d_model=c.d_model,
            d_head=c.head_dim, d_inner=c.d_ff, proj_dim=c.performer_proj_dim,
            n_roll=c.dpfp_n_roll, skip_attn_normalization=skip, no_pos=carry, carry=carry,
        )  # fmt: skip
        arrays.update({f"{case}/{k}": v for k, v in _torch_state(params, c).items()})
        by_case[case] = params
    tmp = tmp_path_factory.mktemp("fwms")
    arrays["meta"] = np.array(json.dumps({"seg_len": SEG, "cases": meta}))
    np.savez(tmp / "in.npz", **arrays)
    proc = subprocess.run(
        [str(py), str(SCRIPT), "--src", str(src), "--inp", str(tmp / "in.npz"),
         "--out", str(tmp / "out.npz")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tokens, by_case, dict(np.load(tmp / "out.npz"))


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _impls(case):
    return ["-"] if CASES[case][0] == 2 else ["recurrent", "chunkwise"]


@pytest.mark.parametrize("case,impl", [(case, impl) for case in CASES for impl in _impls(case)])
def test_nll_matches_reference(setup, case, impl):
    tokens, all_params, ref = setup
    ref = {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(case + "/")}
    model = family.tiny_model(fw_config, **_overrides(case, "auto" if impl == "-" else impl))
    params, c = all_params[case], model.config
    nll_fn = jax.jit(
        lambda x, y, carry: model.apply({"params": params}, x, y, carry, train=False,
                                        method=model.nll)[:2]
    )  # fmt: skip
    carry = model.init_carry(BATCH)
    assert (carry is not None) == c.carry_over_fast_weight
    diffs = []
    for s in range(2):
        window = tokens[:, s * SEG : (s + 1) * SEG + 1]
        nll, carry = nll_fn(window[:, :-1], window[:, 1:], carry)
        diffs.append(_max_diff(nll, ref["nll"][s]))
        np.testing.assert_allclose(nll, ref["nll"][s], **TOL, err_msg=f"segment {s}")
        if c.carry_over_fast_weight:
            for i in range(c.num_layers):
                np.testing.assert_allclose(carry.w[i], ref[f"w{s}_{i}"], **TOL)
                if not c.skip_attn_normalization:  # the reference carries no z then
                    np.testing.assert_allclose(carry.z[i], ref[f"z{s}_{i}"], **TOL)
    print(f"fwms {case} ({impl}): max|Δnll| seg0 {diffs[0]:.2e} seg1 {diffs[1]:.2e}")


def test_positions_and_embedding_scale_match_reference(setup):
    """√d_model on the embedding; the sinusoid of descending positions L-1 .. 0."""
    _, _, ref = setup
    c = family.tiny_model(fw_config).config
    ours = attention.sinusoid_positions(jnp.arange(SEG - 1, -1, -1), c.d_model)
    for case in CASES:
        np.testing.assert_allclose(ref[f"{case}/emb_scale"], c.d_model**0.5, rtol=1e-7)
        np.testing.assert_allclose(ref[f"{case}/pos_emb"], ours, rtol=1e-6, atol=1e-6)
