#!/usr/bin/env python3
"""IDSIA/lmtool-fwms (commit 52ada3d) `MemTransformerLM` as the reference for lmjax's
fast-weight-programmer LM (lmjax/models/fast_weights.py). Runs in .venv-torch.

  fwms_reference.py --src DIR --inp IN.npz --out OUT.npz

DIR is the reference's `src/` directory (`git -C <mirror> archive 52ada3d src | tar -x`; the
parity test extracts it into .cache/lmtool-fwms); $FWMS_SRC is the default. The reference code
is imported from there at run time, nothing of it is copied here.

CPU recipe (specs/attention.md D.B "Run on CPU"): `proj_adaptive_softmax` parses
`torch.version.cuda` at import, so it is set to "10.1" for the import only; the CUDA extensions
that `utils.cuda_fast_weight_layer` JIT-compiles at import are replaced in `sys.modules` by
  utils.fast_fast_weight   fast_weight_delta(q, k, v, beta, W): the delta rule of B.5(c) as an
                           explicit loop over time, v̄ = Wᵀk, W += k (β (v - v̄))ᵀ, out = Wᵀq
                           (write, then read), the final W written into W in place as the
                           kernel does
  utils.fast_transformers  fast_weight_sum(q, k, v, W): the sum rule, same conventions
  utils.fast_weight_rnn{,_v2}, utils.fast_lstm{,_v2,_v3,_v4}, utils.rec_update_fwm_tanh:
                           dummies (the follow-up paper's kernels, unused here)
so types 2/4/5/6 run the reference's own pure-torch code and 24/25/26/44/45/46 its layers
around these written-out recurrences.

IN.npz: `meta` (a JSON string: seg_len and, per case, attn_type, n_layer, n_head, d_model,
d_head, d_inner, proj_dim, n_roll, skip_attn_normalization, no_pos, carry), `tokens` [B, 2L+1],
and `<case>/<named_parameters name>` in torch layout plus `<case>/layers.<i>.dec_attn.proj_matrix`
(Performer types: the attribute, not a parameter). Every parameter must be given and every
array used. Byte vocabulary 256, cutoffs [] (one full softmax), dropout 0, eval mode (the
Performer matrix is not redrawn), `softmax_keep_order=True`.

OUT.npz, per case: `nll` [2, B, L] (segment s: tokens[:, sL:(s+1)L] predicting the next
byte), `emb_scale`, `pos_emb` [L, d] (the sinusoid of positions L-1..0); carry cases also
`w<s>_<i>` [B, K, d_k, d_v] and `z<s>_<i>` [B, K, d_k] (when normalising) after segment s.
"""

import argparse
import json
import os
import sys
import types

import numpy as np
import torch

VOCAB = 256


def _delta_loop(q, k, v, beta, W):
    """q, k: [B, K, T, d_k]; v: [B, K, T, d_v]; beta: [B, K, T, 1]; W: [B, K, d_k, d_v]."""
    w, outs = W.clone(), []
    for t in range(q.shape[2]):
        k_t = k[:, :, t]
        v_old = torch.einsum("bhk,bhkv->bhv", k_t, w)
        w = w + torch.einsum("bhk,bhv->bhkv", k_t, beta[:, :, t] * (v[:, :, t] - v_old))
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], w))
    with torch.no_grad():
        W.copy_(w)
    return torch.stack(outs, dim=2)


def _sum_loop(q, k, v, W):
    w, outs = W.clone(), []
    for t in range(q.shape[2]):
        w = w + torch.einsum("bhk,bhv->bhkv", k[:, :, t], v[:, :, t])
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], w))
    with torch.no_grad():
        W.copy_(w)
    return torch.stack(outs, dim=2)


def _unavailable(name):
    def fn(*args, **kwargs):
        raise NotImplementedError(f"{name}: CUDA-only kernel, stubbed out on CPU")

    return fn


def import_reference(src):
    if not os.path.isfile(os.path.join(src, "model_main.py")):
        sys.exit(f"model_main.py not found in {src!r}: pass lmtool-fwms's src/ as --src")
    stubs = {
        "utils.fast_fast_weight": {"fast_weight_delta": _delta_loop},
        "utils.fast_transformers": {"fast_weight_sum": _sum_loop},
        "utils.fast_weight_rnn": {"fast_rnn": _unavailable("fast_rnn")},
        "utils.fast_weight_rnn_v2": {"fast_rnn_v2": _unavailable("fast_rnn_v2")},
        "utils.fast_lstm": {"fast_lstm": _unavailable("fast_lstm")},
        "utils.fast_lstm_v2": {"fast_lstm_v2": _unavailable("fast_lstm_v2")},
        "utils.fast_lstm_v3": {"fast_lstm_v3": _unavailable("fast_lstm_v3")},
        "utils.fast_lstm_v4": {"fast_lstm_v4": _unavailable("fast_lstm_v4")},
        "utils.rec_update_fwm_tanh": {"rec_update_fwm_tanh": _unavailable("rec_update_fwm_tanh")},
    }
    for name, attrs in stubs.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
    sys.path.insert(0, src)
    saved, torch.version.cuda = torch.version.cuda, "10.1"
    try:
        import model_main
    finally:
        torch.version.cuda = saved
    return model_main


def build(model_main, cfg, seg_len):
    model = model_main.MemTransformerLM(
        VOCAB, cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"], cfg["d_inner"],
        dropout=0.0, dropatt=0.0, tie_weight=True, d_embed=cfg["d_model"], div_val=1,
        tie_projs=[False], tgt_len=seg_len, ext_len=0, mem_len=0, cutoffs=[],
        attn_type=cfg["attn_type"], clamp_len=seg_len, proj_dim=cfg["proj_dim"],
        n_roll=cfg["n_roll"], skip_attn_normalization=cfg["skip_attn_normalization"],
        no_pos=cfg["no_pos"], device="cpu",
    )  # fmt: skip
    assert model.crit.n_clusters == 0, "cutoffs=[] should give one plain softmax"
    assert model.crit.out_layers[0].weight is model.word_emb.emb_layers[0].weight, "not tied"
    return model


def load(model, inp, case):
    prefix = f"{case}/"
    given = {k[len(prefix) :] for k in inp.files if k.startswith(prefix)}
    named = dict(model.named_parameters())  # the tied output weight appears once
    missing = sorted(set(named) - given)
    if missing:
        sys.exit(f"{case}: reference parameters not in the input: {missing}")
    with torch.no_grad():
        for name, p in named.items():
            value = torch.from_numpy(inp[prefix + name])
            if value.shape != p.shape:
                sys.exit(f"{case}: {name} has shape {tuple(value.shape)}, wants {tuple(p.shape)}")
            p.copy_(value)
    used = set(named)
    for i, layer in enumerate(model.layers):
        name = f"layers.{i}.dec_attn.proj_matrix"
        if hasattr(layer.dec_attn, "proj_matrix"):
            if name not in given:
                sys.exit(f"{case}: {name} (the Performer matrix) not in the input")
            value = torch.from_numpy(inp[prefix + name])
            assert value.shape == layer.dec_attn.proj_matrix.shape, (name, value.shape)
            layer.dec_attn.proj_matrix = value
            used.add(name)
    leftover = sorted(given - used)
    if leftover:
        sys.exit(f"{case}: input arrays the reference has no place for: {leftover}")


def run_case(model, cfg, tokens, seg_len):
    model.eval()
    out = {
        "emb_scale": np.float32(model.word_emb.emb_scale),
        "pos_emb": model.pos_emb(torch.arange(seg_len - 1, -1, -1.0))[:, 0].numpy(),
    }
    nlls, mems = [], ()
    with torch.no_grad():
        for s in range(2):
            window = tokens[:, s * seg_len : (s + 1) * seg_len + 1]
            data = window[:, :-1].t().contiguous()  # (L, B)
            target = window[:, 1:].t().contiguous()
            res = model(data, target, *mems, softmax_keep_order=True,
                        carry_over_fast_weight=cfg["carry"])  # fmt: skip
            nlls.append(res[0].t().numpy())  # (B, L)
            if cfg["carry"]:
                mems = tuple(res[1:])
                assert len(mems) == cfg["n_layer"]
                for i, (w, z) in enumerate(mems):
                    out[f"w{s}_{i}"] = w.numpy().copy()
                    if z is not None:
                        out[f"z{s}_{i}"] = z[:, :, 0].numpy().copy()
            else:
                assert len(res) == 1, "mem_len 0 without carry-over returns no memories"
    out["nll"] = np.stack(nlls)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.environ.get("FWMS_SRC", ""))
    ap.add_argument("--inp", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not args.src:
        sys.exit("no reference source: pass --src or set FWMS_SRC to lmtool-fwms's src/")
    torch.manual_seed(0)  # only the Performer constructor draws (then overwritten)
    torch.set_num_threads(1)
    model_main = import_reference(os.path.abspath(args.src))
    inp = np.load(args.inp)
    meta = json.loads(str(inp["meta"]))
    seg_len = meta["seg_len"]
    tokens = torch.from_numpy(inp["tokens"].astype(np.int64))
    assert tokens.shape[1] == 2 * seg_len + 1, tokens.shape
    result = {}
    for case, cfg in meta["cases"].items():
        model = build(model_main, cfg, seg_len)
        load(model, inp, case)
        for key, value in run_case(model, cfg, tokens, seg_len).items():
            result[f"{case}/{key}"] = value
    np.savez(args.out, **result)


if __name__ == "__main__":
    main()
