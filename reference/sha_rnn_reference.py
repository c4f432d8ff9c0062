#!/usr/bin/env python3
"""Reference outputs of the PyTorch SHA-RNN (reference/torch_sha_rnn.py) for the lmjax parity test.

Runs in the torch venv (.venv-torch, made by reference/setup_torch_env.sh). Builds the model at the
sizes given on the command line, perturbs every parameter at random (zero gate logits, LN γ=1 β=0
and zero biases would hide bugs), then runs eval mode (no dropout) over `--segments` consecutive
segments of random tokens, carrying the LSTM state and the attention memory, and saves to `--out`:

  param/<state-dict name>   every parameter (the reference's names; decoder.weight is tied)
  tokens                    [segments, batch, seq_len] int64, batch-major
  logits_<s>                [batch, seq_len, vocab] float32 for segment s, batch-major
  h_<j>, c_<j>              final LSTM state of block j, [batch, width]
  mem_<j>                   final memory of attention block j, [batch, kept, width] (the last
                            `kept` = min(mem_len, segments * seq_len) LN_mem states)
  config                    [vocab, width, boom, layers, mem_len, seq_len, batch, segments]
  attn_layers               the attention block indices

  .venv-torch/bin/python reference/sha_rnn_reference.py --out=/tmp/sha_ref.npz
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_sha_rnn import SHARNN  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--boom", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--attn_layers", default="1", help="comma list of block indices")
    ap.add_argument("--mem_len", type=int, default=6)
    ap.add_argument("--seq_len", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.3, help="std of the added parameter noise")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    attn = sorted({int(s) for s in args.attn_layers.split(",") if s.strip()})
    model = SHARNN(args.vocab, args.width, args.boom, args.layers, attn, 0.1, 0.1, 0.1)
    with torch.no_grad():
        for p in model.parameters():  # the tied embedding/decoder weight is one Parameter
            p.add_(args.scale * torch.randn_like(p))
    model.eval()

    rng = np.random.default_rng(args.seed)
    B, L, S = args.batch_size, args.seq_len, args.segments
    tokens = rng.integers(0, args.vocab, size=(S, B, L), dtype=np.int64)
    out = {f"param/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
    hidden, mems = [None] * args.layers, [None] * args.layers
    with torch.no_grad():
        for s in range(S):
            x = torch.from_numpy(tokens[s].T.copy())  # (L, B): the reference is time-major
            logits, hidden, mems = model(x, hidden, mems, args.mem_len)
            out[f"logits_{s}"] = logits.transpose(0, 1).numpy().copy()
    for j in range(args.layers):
        h, c = hidden[j]  # each (1, B, E)
        out[f"h_{j}"], out[f"c_{j}"] = h[0].numpy().copy(), c[0].numpy().copy()
        if mems[j] is not None:
            out[f"mem_{j}"] = mems[j].transpose(0, 1).numpy().copy()  # (B, kept, E)
    out["tokens"] = tokens
    cfg = [args.vocab, args.width, args.boom, args.layers, args.mem_len, L, B, S]
    out["config"] = np.array(cfg, np.int64)
    out["attn_layers"] = np.array(attn, np.int64)
    np.savez(args.out, **out)
    print(f"wrote {args.out}: {len(out)} arrays, torch {torch.__version__}")


if __name__ == "__main__":
    main()
