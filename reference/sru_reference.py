#!/usr/bin/env python3
"""The `sru` package (asappresearch/sru) as the reference for lmjax's SRU and SRU++.

Runs in .venv-torch (reference/setup_torch_env.sh): torch 2.13.0 CPU with `sru` 2.6.0 installed,
and `sru` 3.0.0.dev6 (the only PyPI release with SRU++) unpacked into <venv>/sru3, which the
`srupp` modes put first on sys.path. Each sru version compiles its C++ op into its own
$TORCH_EXTENSIONS_DIR subdirectory, so neither rebuilds the other's.

  sru_reference.py sru   --out F.npz    SRU 2.6.0 cases (uni/bi, rescale, k=3/4, projection, v1,
                                        and the elementwise op with an explicit dropout mask)
  sru_reference.py srupp --out F.npz    SRU++ 3.0.0.dev6 LMs (embedding -> SRUpp -> Linear, as
                                        train_enwik8.py) over two segments with memory, both masks
  sru_reference.py bench --model {srupp,sru} [--layers 4 --width 256 --proj 64 --mem_len 256
                         --batch_size 8 --seq_len 256 --steps 5]
                                        timed training steps (forward, backward, clip, RAdam/Adam)
                                        at lmjax's `cpu` shape; prints one JSON line

Every parameter is perturbed at random before dumping (zero biases, α = 0 or γ = 1 would hide
mistakes). The .npz holds `<case>/<state_dict key>` plus the inputs and outputs of each case.
Only torch, numpy, sru and the standard library are imported.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_sru(version3):
    """Imports sru 2.6.0 (site-packages) or 3.0.0.dev6 (<venv>/sru3), each with its own build."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".cache", "torch_extensions"))
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(base, "sru3") if version3 else base
    os.makedirs(os.environ["TORCH_EXTENSIONS_DIR"], exist_ok=True)
    if version3:
        overlay = os.path.join(sys.prefix, "sru3")
        if not os.path.isdir(os.path.join(overlay, "sru")):
            sys.exit(f"sru 3.0.0.dev6 not found in {overlay}: run reference/setup_torch_env.sh")
        sys.path.insert(0, overlay)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA kernels unavailable": expected on CPU
        import sru
    want = "3.0.0.dev6" if version3 else "2.6.0"
    if sru.__version__ != want:
        sys.exit(f"expected sru {want}, imported {sru.__version__} from {sru.__file__}")
    return sru


def perturb(module, gen, scale=0.5):
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


SRU_CASES = {
    # name: (input_size, hidden_size, layers, bidirectional, rescale, n_proj, v1)
    "uni": (8, 8, 2, False, False, 0, False),
    "uni_rescale": (8, 8, 2, False, True, 0, False),
    "bi": (16, 8, 2, True, False, 0, False),
    "bi_rescale": (16, 8, 2, True, True, 0, False),
    "k4": (6, 8, 2, False, True, 0, False),  # first layer: d_in != n, projected skip
    "k4_bi": (6, 8, 2, True, False, 0, False),
    "proj": (12, 16, 2, False, False, 4, False),
    "v1": (8, 8, 2, False, False, 0, True),
}


def dump_sru(out, seq_len=7, batch=3, seed=0):
    import torch

    sru = import_sru(False)
    arrays = {}
    for i, (name, (d_in, hidden, layers, bi, rescale, n_proj, v1)) in enumerate(SRU_CASES.items()):
        torch.manual_seed(seed + i)
        gen = torch.Generator().manual_seed(seed + 100 + i)
        model = sru.SRU(
            d_in, hidden, num_layers=layers, dropout=0.1, bidirectional=bi, projection_size=n_proj,
            highway_bias=-1.0, rescale=rescale, v1=v1,
        )  # fmt: skip
        with torch.no_grad():
            for layer in model.rnn_lst:
                layer.bias.add_(0.5 * torch.randn(layer.bias.shape, generator=gen))
        model.eval()
        n = hidden * (2 if bi else 1)
        x = torch.randn(seq_len, batch, d_in, generator=gen)
        c0 = torch.randn(layers, batch, n, generator=gen)
        with torch.no_grad():
            h, c = model(x, c0)
        for k, v in model.state_dict().items():
            arrays[f"{name}/{k}"] = v.numpy()
        arrays.update({f"{name}/x": x, f"{name}/c0": c0, f"{name}/h": h, f"{name}/c": c})
    # The elementwise op with an explicit dropout mask (training mode), uni and bidirectional.
    from sru.ops import elementwise_recurrence_naive

    for name, bi in (("mask", False), ("mask_bi", True)):
        gen = torch.Generator().manual_seed(seed + 200 + bi)
        hidden, n_dir = 8, 2 if bi else 1
        n = hidden * n_dir
        u = torch.randn(seq_len, batch, n * 3, generator=gen)
        x = torch.randn(seq_len, batch, n, generator=gen)
        weight_c, bias = torch.rand(2 * n, generator=gen) * 2 - 1, torch.randn(2 * n, generator=gen)
        c0 = torch.randn(batch, n, generator=gen)
        mask = (torch.rand(batch, n, generator=gen) > 0.3).float() / 0.7
        scale_x = torch.tensor([1.3])
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # "Running SRU on CPU with grad_enabled=True"
            h, c = elementwise_recurrence_naive(
                u, x, weight_c, bias, c0, 0, hidden, bi, True, scale_x, mask, None
            )
        for k, v in dict(
            u=u, x=x, weight_c=weight_c, bias=bias, c0=c0, mask=mask, h=h, c=c
        ).items():
            arrays[f"{name}/{k}"] = v.detach()
        arrays[f"{name}/scale_x"] = scale_x
    save(out, arrays, "sru " + sru.__version__)


class LM:
    """train_enwik8.py's SRU++ Model (embedding -> SRUpp -> Linear) without its loss."""

    def __init__(self, sru, vocab, d, proj, layers, heads, every_k, dropout=0.0):
        import torch.nn as nn

        self.embedding_layer = nn.Embedding(vocab, d)
        self.rnn = sru.SRUpp(
            d, d, proj, num_layers=layers, dropout=dropout, attn_dropout=dropout,
            num_heads=heads, layer_norm=False, attn_layer_norm=True, highway_bias=-2.0,
            attention_every_n_layers=every_k,
        )  # fmt: skip
        self.output_layer = nn.Linear(d, vocab)
        self.drop = nn.Dropout(dropout)
        self.modules = nn.ModuleDict(
            {"embedding_layer": self.embedding_layer, "rnn": self.rnn, "output": self.output_layer}
        )

    @staticmethod
    def mask(mem_length, same_length):
        """set_mask() of train_enwik8.py: the (2M x 2M) additive mask."""
        import torch

        ones = torch.ones(mem_length * 2, mem_length * 2)
        mask = torch.triu(ones, diagonal=1)
        if same_length:
            mask = mask + torch.tril(ones, diagonal=-1 - mem_length)
        return mask * -10000.0

    def forward(self, x, hidden, memory, full_mask):
        length = x.size(0)
        mem_len = 0 if memory[0] is None else memory[0].size(0)
        attn_mask = full_mask[mem_len : mem_len + length, : mem_len + length]
        emb = self.drop(self.embedding_layer(x))
        h, c, mem = self.rnn(emb, hidden, memory=memory, attn_mask=attn_mask)
        return self.output_layer(self.drop(h)), c, mem["saved_inputs"]


def dump_srupp(out, vocab=20, d=16, proj=8, layers=3, heads=2, seq_len=5, batch=2, seed=0):
    import torch

    sru = import_sru(True)
    arrays = {}
    for every_k in (1, 2):
        torch.manual_seed(seed + every_k)
        gen = torch.Generator().manual_seed(seed + 10 + every_k)
        lm = LM(sru, vocab, d, proj, layers, heads, every_k)
        perturb(lm.modules, gen)
        lm.modules.eval()
        tokens = torch.randint(0, vocab, (2 * seq_len, batch), generator=gen)
        name = f"k{every_k}"
        for k, v in lm.modules.state_dict().items():
            if k.startswith("output."):
                k = "output_layer." + k[len("output.") :]
            arrays[f"{name}/{k}"] = v.numpy()
        arrays[f"{name}/tokens"] = tokens.T.numpy()  # [b, 2L]
        for same_length in (False, True):
            full = LM.mask(seq_len, same_length)
            hidden, memory = torch.zeros(layers, batch, d), [None] * layers
            for seg in range(2):
                x = tokens[seg * seq_len : (seg + 1) * seq_len]
                with torch.no_grad():
                    logits, hidden, memory = lm.forward(x, hidden, memory, full)
                tag = f"{name}/same{int(same_length)}/seg{seg}"
                arrays[f"{tag}/logits"] = logits.transpose(0, 1).numpy()  # [b, L, v]
                arrays[f"{tag}/c"] = hidden.numpy()  # [layers, b, d]
                for i, m in enumerate(memory):
                    arrays[f"{tag}/memory{i}"] = m.transpose(0, 1).numpy()  # [b, L, d]
    save(out, arrays, "sru " + sru.__version__)


def save(out, arrays, version):
    arrays = {k: np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else None)
              for k, v in arrays.items()}  # fmt: skip
    arrays["version"] = np.asarray(version)
    np.savez(out, **arrays)
    print(f"wrote {len(arrays)} arrays to {out} ({version})")


def bench(args):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, t, v, d = args.batch_size, args.seq_len, args.vocab, args.width
    if args.model == "srupp":
        sru = import_sru(True)
        lm = LM(sru, v, d, args.proj, args.layers, 1, 1, dropout=args.dropout)
        full_mask = LM.mask(args.mem_len, same_length=False)
        memory = [None] * args.layers
        params = lm.modules.parameters
        lm.modules.train()
        opt = torch.optim.RAdam(params(), lr=3e-4, weight_decay=0.1, decoupled_weight_decay=True)
    else:
        sru = import_sru(False)
        emb = nn.Embedding(v, min(v, d))
        rnn = sru.SRU(min(v, d), d, num_layers=args.layers, dropout=args.dropout, highway_bias=-3)
        out_layer = nn.Linear(d, v)
        mods = nn.ModuleList([emb, rnn, out_layer])
        mods.train()
        params = mods.parameters
        opt = torch.optim.Adam(params(), lr=1e-3)
        drop = nn.Dropout(args.dropout)
    hidden = torch.zeros(args.layers, b, d)
    tokens = torch.randint(0, v, (t + 1, b))
    times = []
    warnings.simplefilter("ignore")  # sru warns that CPU training runs its Python loop
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        if args.model == "srupp":
            logits, hidden, memory = lm.forward(tokens[:-1], hidden, memory, full_mask)
            memory = [m.detach() for m in memory]
        else:
            h, hidden = rnn(drop(emb(tokens[:-1])), hidden)
            logits = out_layer(drop(h))
        hidden = hidden.detach()
        loss = F.cross_entropy(logits.reshape(-1, v), tokens[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params(), 1.0)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(json.dumps({
        "impl": f"torch sru {sru.__version__} ({args.model})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in params()),
        "batch_size": b,
        "seq_len": t,
        "step_ms_median": round(1000 * median, 2),
        "step_ms_min": round(1000 * min(times), 2),
        "tokens_per_sec": round(b * t / median, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["sru", "srupp", "bench"])
    ap.add_argument("--out", default="")
    ap.add_argument("--model", choices=["srupp", "sru"], default="srupp")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--proj", type=int, default=64)
    ap.add_argument("--mem_len", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.22)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch default")
    args = ap.parse_args()
    if args.mode == "bench":
        bench(args)
    elif not args.out:
        sys.exit("--out is required")
    elif args.mode == "sru":
        dump_sru(args.out)
    else:
        dump_srupp(args.out)


if __name__ == "__main__":
    main()
