#!/usr/bin/env python3
"""Smerity/sha-rnn (commit 218d748) itself, as the reference for lmjax's SHA-RNN training step
(configs/sha_rnn.py:cpu). Runs in .venv-torch.

  sha_rnn_smerity.py bench [--src DIR] [--steps 5 --warmup 2 --threads 2]

The reference is not a package: its `model.py` and `splitcross.py` are extracted at run time from
a mirror (`$SHA_RNN_MIRROR`, default /work/.mirror/Smerity+sha-rnn/repo, into
.cache/sha-rnn-smerity) or read from a checkout (`--src DIR` or `$SHA_RNN_SRC`), and imported
from there; nothing of it is copied into this repository.

Shims, both for pieces that are not on this CPU machine:
  apex.normalization.fused_layer_norm.FusedLayerNorm  -> torch.nn.LayerNorm (apex's fused CUDA
      kernel computes the same LayerNorm; apex is a CUDA build and not installable here).
  pytorch_lamb.Lamb -> the minimum-trust LAMB of reference/torch_sha_rnn.py (spec recurrent.md
      A8: no bias correction, eps on sqrt(v), weight decay inside the trust ratio, the weight
      norm clamped to [0, 10], the ratio floored at min_trust). Smerity's main.py imports it from
      his fork of cybertronai/pytorch-lamb, which is not on the package index.
apex.amp (main.py's O1 mixed precision) is a GPU feature and is left out: float32 throughout.

The step is main.py's training step for one batch, at lmjax's `cpu` shape: `model.SHARNN('LSTM',
ntoken=256, ninp=256, nhid=1024, nlayers=4, dropout=dropouth=dropouti=0.1, tie_weights=True)`
(main.py sets args.tied = True; the attention sits in block nlayers - 2 = 2),
`num_max_positions` = mem_len + seq_len so that the carried attention memory is the last
`mem_len` (512) positions, as lmjax's; `SplitCrossEntropyLoss(256, splits=[])` (main.py's choice
for a vocabulary under 75,000: one full softmax) on `model.decoder.weight/bias`; backward;
`clip_grad_norm_(params, 0.25)`; Lamb(lr 2e-3, weight_decay 1.2e-6, min_trust 0.25) step;
hidden and mems detached with utils.py's `repackage_hidden` semantics (`.detach()`), then
`zero_grad()`. Train mode. main.py draws a random sequence length around bptt each batch; here it
is fixed at seq_len (lmjax's bench shape) and warm-up is at a constant lr (cost unaffected).
Random byte batches [seq_len + 1, batch] are made up front. One JSON line on stdout.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import types

import bench_util  # reference/bench_util.py, beside this script
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = "218d748"
MIRROR = os.environ.get("SHA_RNN_MIRROR", "/work/.mirror/Smerity+sha-rnn/repo")


def reference_src(src):
    """The directory holding the reference's model.py: --src, or an extraction of the mirror."""
    if src:
        return src
    out = os.path.join(ROOT, ".cache", "sha-rnn-smerity")
    if not os.path.exists(os.path.join(out, "model.py")):
        if not os.path.isdir(MIRROR):
            sys.exit(f"no Smerity/sha-rnn checkout: pass --src or set SHA_RNN_MIRROR ({MIRROR})")
        os.makedirs(out, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", MIRROR, "archive", COMMIT, "model.py", "splitcross.py"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out


def install_shims():
    """apex's FusedLayerNorm and pytorch_lamb's Lamb (see the module docstring)."""
    names = ("apex", "apex.normalization", "apex.normalization.fused_layer_norm")
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[names[-1]].FusedLayerNorm = torch.nn.LayerNorm
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_sha_rnn import Lamb

    lamb = types.ModuleType("pytorch_lamb")
    lamb.Lamb = Lamb
    sys.modules["pytorch_lamb"] = lamb


def bench(args):
    bench_util.set_threads(args.threads)
    sys.path.insert(0, reference_src(args.src))
    install_shims()
    import model as ref_model  # the reference's model.py
    from pytorch_lamb import Lamb
    from splitcross import SplitCrossEntropyLoss

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    d = args.dropout
    with contextlib.redirect_stdout(sys.stderr):
        model = ref_model.SHARNN("LSTM", args.vocab, args.width, args.boom, args.layers,
                                 d, d, d, 0.1, 0, True)  # fmt: skip
    model.num_max_positions = args.mem_len + args.seq_len
    model.pos_emb = [0] * model.num_max_positions  # its length sets the memory kept
    criterion = SplitCrossEntropyLoss(args.width, splits=[], verbose=False)
    params = list(model.parameters()) + list(criterion.parameters())
    opt = Lamb(params, lr=args.lr, weight_decay=args.wdecay, min_trust=0.25)
    model.train()

    L, B = args.seq_len, args.batch_size
    batches = [torch.randint(0, args.vocab, (L + 1, B), dtype=torch.int64)
               for _ in range(args.warmup + args.steps + args.profile)]  # fmt: skip
    state = {"hidden": None, "mems": None}

    def train_step(tokens):
        data, targets = tokens[:-1], tokens[1:]
        output, hidden, mems, _, _ = model(data, state["hidden"], return_h=True,
                                           mems=state["mems"])  # fmt: skip
        loss = criterion(model.decoder.weight, model.decoder.bias, output, targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        state["hidden"] = [tuple(t.detach() for t in h) for h in hidden]
        state["mems"] = [m.detach() if torch.is_tensor(m) else m for m in mems]
        opt.zero_grad()
        return loss

    times, loss = bench_util.time_steps(train_step, batches, args.warmup, args.steps, args.profile)
    attn_mem = [m.shape[0] for m in state["mems"] if torch.is_tensor(m)]
    print(json.dumps({
        "impl": f"Smerity/sha-rnn {COMMIT} SHARNN + min-trust LAMB",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in params),
        "batch_size": B,
        "seq_len": L,
        "mem_len": args.mem_len,
        "attn_memory_after": attn_mem,
        "steps": args.steps,
        "warmup": args.warmup,
        **bench_util.timing_fields(times, B * L, loss),
    }), flush=True)  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["bench"])
    ap.add_argument("--src", default=os.environ.get("SHA_RNN_SRC", ""))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--boom", type=int, default=1024)
    ap.add_argument("--mem_len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wdecay", type=float, default=1.2e-6)
    ap.add_argument("--clip", type=float, default=0.25)
    bench_util.add_timing_args(ap)
    bench(ap.parse_args())


if __name__ == "__main__":
    main()
