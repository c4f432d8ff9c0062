#!/usr/bin/env python3
"""IDSIA/lmtool-fwms (commit 52ada3d) `MemTransformerLM` as the reference for lmjax's
fast-weight-programmer LM (lmjax/models/fast_weights.py) and, in `bench` only, for its
Transformer-XL (lmjax/models/transformer_xl.py, attn_type 0). Runs in .venv-torch.

  fwms_reference.py --src DIR --inp IN.npz --out OUT.npz      parity dump (below)
  fwms_reference.py bench [--src DIR] [--types 2,4,5,6] [--steps 5 --warmup 2 --threads 2]
                                         timed training steps at lmjax's `cpu` shape (below)
  fwms_reference.py bench --types 0 --mem_len 256 --n_head 4 --d_head 64
                                         the same for configs/transformer_xl.py:cpu

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
around these written-out recurrences. Type 0 (`RelPartialLearnableDecoderLayer`) is pure torch
too and needs no shim beyond the `torch.version.cuda` one.

IN.npz: `meta` (a JSON string: seg_len and, per case, attn_type, n_layer, n_head, d_model,
d_head, d_inner, proj_dim, n_roll, skip_attn_normalization, no_pos, carry), `tokens` [B, 2L+1],
and `<case>/<named_parameters name>` in torch layout plus `<case>/layers.<i>.dec_attn.proj_matrix`
(Performer types: the attribute, not a parameter). Every parameter must be given and every
array used. Byte vocabulary 256, cutoffs [] (one full softmax), dropout 0, eval mode (the
Performer matrix is not redrawn), `softmax_keep_order=True`.

OUT.npz, per case: `nll` [2, B, L] (segment s: tokens[:, sL:(s+1)L] predicting the next
byte), `emb_scale`, `pos_emb` [L, d] (the sinusoid of positions L-1..0); carry cases also
`w<s>_<i>` [B, K, d_k, d_v] and `z<s>_<i>` [B, K, d_k] (when normalising) after segment s.

bench: the reference's training step, as train.py's loop (mem_len 0, batch_chunk 1, fp32), for
the pure-torch types 2 (softmax), 4 (linear), 5 (Performer), 6 (DPFP), all in the L x L form,
at configs/fast_weights.py:cpu's shape: 4 layers, d_model 256, 8 heads of 32, d_inner 1024,
dropout 0.1, dropatt 0, byte vocabulary, no cutoffs (tied), tgt_len 256, batch 8, proj_dim 16,
n_roll 2; train.py's `weights_init` (normal, init_std 0.02); train mode (type 5 redraws its
Performer matrix every forward, as the reference trains). A step: forward on random bytes
(data and target (L, B) int64), loss mean, backward, clip_grad_norm_(0.25), Adam(2.5e-4) step,
zero_grad; `--warmup` untimed steps first. One JSON line per type on stdout (the reference's
constructor prints go to stderr). The delta types 24-26 are CUDA kernels in the reference, and
the loops standing in for them here are not the reference: bench refuses them.

bench --types 0: Transformer-XL (relative positional attention, `r_w_bias`/`r_r_bias` [n_head,
d_head] shared by all layers, post-LN), as train.py builds it with its defaults: ext_len 0,
clamp_len -1 (no clamp; lmjax's clamp_len 0), same_length off, div_val 1, cutoffs [] (tied), and
`--mem_len` (0 by default; run it with 256, and `--n_head 4 --d_head 64`, for
configs/transformer_xl.py:cpu). weights_init also draws r_w_bias/r_r_bias from N(0, 0.02) as
train.py's does. The step carries the memories across steps as train.py's loop does: mems starts
as `()`, `ret = model(data, target, *mems)`, `loss, mems = ret[0], ret[1:]` (the model's
`_update_mems` detaches them), through warm-up, timed and profiled steps alike. The first step
sees an empty memory (klen = seq_len) and every later one mem_len + seq_len keys, so use
--warmup >= 1 to time only full-memory steps (lmjax's fixed, masked buffer costs the full
length from step 0). --mem_len is for type 0 only (2/4/5/6 run with mem_len 0 as before).
"""

import argparse
import contextlib
import json
import os
import sys
import types

import bench_util  # reference/bench_util.py, beside this script
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


def build(model_main, cfg, seg_len, dropout=0.0, mem_len=0, clamp_len=None):
    """clamp_len None: seg_len, a no-op clamp for the absolute types at mem_len 0."""
    model = model_main.MemTransformerLM(
        VOCAB, cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"], cfg["d_inner"],
        dropout=dropout, dropatt=0.0, tie_weight=True, d_embed=cfg["d_model"], div_val=1,
        tie_projs=[False], tgt_len=seg_len, ext_len=0, mem_len=mem_len, cutoffs=[],
        attn_type=cfg["attn_type"], clamp_len=seg_len if clamp_len is None else clamp_len,
        proj_dim=cfg["proj_dim"],
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


# the pure-torch types: Transformer-XL, and the sum-rule fast weights in the L x L form
BENCH_TYPES = {
    0: "transformer-xl",
    2: "softmax",
    4: "linear",
    5: "performer",
    6: "dpfp",
}


def weights_init(module, std=0.02):
    """train.py's `weights_init` with --init normal (init_std 0.02), for the modules of types
    0/2/4/5/6 (d_embed = d_model and div_val 1: no projections, no clusters)."""
    name = module.__class__.__name__
    if "Linear" in name:
        if getattr(module, "weight", None) is not None:
            torch.nn.init.normal_(module.weight, 0.0, std)
        if getattr(module, "bias", None) is not None:
            torch.nn.init.constant_(module.bias, 0.0)
    elif "AdaptiveEmbedding" in name:
        assert len(module.emb_projs) == 0, "no embedding projections at d_embed = d_model"
    elif "Embedding" in name:  # nn.Embedding; PositionalEmbedding has no weight
        if hasattr(module, "weight"):
            torch.nn.init.normal_(module.weight, 0.0, std)
    elif "ProjectedAdaptiveLogSoftmax" in name:
        assert module.n_clusters == 0 and all(p is None for p in module.out_projs)
    elif "LayerNorm" in name:
        torch.nn.init.normal_(module.weight, 1.0, std)
        torch.nn.init.constant_(module.bias, 0.0)
    elif "TransformerLM" in name:  # type 0's shared biases; types 2/4/5/6 have none of these
        assert not hasattr(module, "r_emb") and not hasattr(module, "r_bias")
        for attr in ("r_w_bias", "r_r_bias"):
            if hasattr(module, attr):
                torch.nn.init.normal_(getattr(module, attr), 0.0, std)


def bench_type(model_main, args, attn_type):
    torch.manual_seed(args.seed)
    cfg = dict(attn_type=attn_type, n_layer=args.n_layer, n_head=args.n_head,
               d_model=args.d_model, d_head=args.d_head, d_inner=args.d_inner,
               proj_dim=args.proj_dim, n_roll=args.n_roll, skip_attn_normalization=False,
               no_pos=False)  # fmt: skip
    mem_len = args.mem_len if attn_type == 0 else 0
    clamp_len = -1 if attn_type == 0 else None  # train.py's default: no clamp
    with contextlib.redirect_stdout(sys.stderr):  # the layers print their names
        model = build(model_main, cfg, args.seq_len, dropout=args.dropout, mem_len=mem_len,
                      clamp_len=clamp_len)  # fmt: skip
    model.apply(weights_init)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    L, B = args.seq_len, args.batch_size
    batches = [torch.randint(0, VOCAB, (L + 1, B), dtype=torch.int64)
               for _ in range(args.warmup + args.steps + args.profile)]  # fmt: skip

    mems = ()  # train.py's loop: () first, then what the model returns (detached by it)

    def train_step(tokens):
        nonlocal mems
        data, target = tokens[:-1], tokens[1:]  # (L, B) each
        ret = model(data, target, *mems)
        loss, mems = ret[0].mean(), ret[1:]
        assert len(mems) == (args.n_layer + 1 if mem_len else 0), len(mems)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        model.zero_grad()
        return loss

    times, loss = bench_util.time_steps(train_step, batches, args.warmup, args.steps,
                                        args.profile, label=f"type {attn_type}: ")  # fmt: skip
    print(json.dumps({
        "impl": f"lmtool-fwms MemTransformerLM type {attn_type} ({BENCH_TYPES[attn_type]})",
        "attn_type": attn_type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": B,
        "seq_len": L,
        "mem_len": mem_len,
        "steps": args.steps,
        "warmup": args.warmup,
        **bench_util.timing_fields(times, B * L, loss),
    }), flush=True)  # fmt: skip


def bench_main(argv):
    ap = argparse.ArgumentParser(
        prog="fwms_reference.py bench", description="training-step benchmark of the reference"
    )
    ap.add_argument("--src", default=os.environ.get("FWMS_SRC", ""))
    ap.add_argument(
        "--types",
        default="2,4,5,6",
        help="comma list of attn_type, of 0 (Transformer-XL: with --mem_len 256 --n_head 4 "
        "--d_head 64 for configs/transformer_xl.py:cpu) and 2/4/5/6 (fast weights, sum rule)",
    )
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--n_head", type=int, default=8)
    ap.add_argument("--d_head", type=int, default=32)
    ap.add_argument("--d_inner", type=int, default=1024)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--proj_dim", type=int, default=16)
    ap.add_argument("--n_roll", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=256)
    ap.add_argument(
        "--mem_len",
        type=int,
        default=0,
        help="type 0 only: Transformer-XL memory, carried across steps (256 for lmjax's cpu)",
    )
    ap.add_argument("--lr", type=float, default=2.5e-4)
    ap.add_argument("--clip", type=float, default=0.25)
    bench_util.add_timing_args(ap)
    args = ap.parse_args(argv)
    if not args.src:
        sys.exit("no reference source: pass --src or set FWMS_SRC to lmtool-fwms's src/")
    attn_types = [int(t) for t in args.types.split(",") if t.strip()]
    bad = [t for t in attn_types if t not in BENCH_TYPES]
    if bad:
        sys.exit(
            f"bench runs the pure-torch types {sorted(BENCH_TYPES)} only, not {bad} "
            "(24-26 are CUDA kernels in the reference; the CPU loops are stand-ins)"
        )
    if args.mem_len < 0:
        sys.exit("--mem_len must be non-negative")
    if args.mem_len and any(t != 0 for t in attn_types):
        sys.exit("--mem_len is for type 0 (Transformer-XL) only; 2/4/5/6 run with mem_len 0")
    if args.steps < 1:
        sys.exit("--steps must be at least 1")
    bench_util.set_threads(args.threads)
    model_main = import_reference(os.path.abspath(args.src))
    for attn_type in attn_types:
        bench_type(model_main, args, attn_type)


def main():
    if sys.argv[1:2] == ["bench"]:
        return bench_main(sys.argv[2:])
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
