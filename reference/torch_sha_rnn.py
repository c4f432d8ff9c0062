#!/usr/bin/env python3
"""PyTorch SHA-RNN (Merity 2019) training-step benchmark: the torch side of the lmjax comparison.

The model follows /work/shared/specs/recurrent.md PART A (A2-A7, A12):
  * embedding -> Drop_i -> blocks -> Drop -> tied decoder (W_emb^T) + separate bias
  * block: u = LN_start(h); h = Drop_h(LSTM(u))          (NO residual around the LSTM)
           [attn] m = LN_mem(h); h = LN_mid(h); KV = [Mem; m]; h = h + Drop_h(SHA(h, KV))
           h = LN_ff(h) + Drop_h(Boom(LN_xff(h)))
  * SHA: one head, q = sigma(qs) * LN_q(W_q h + b_q); k = sigma(ks) * KV; v = gv * KV with
         gv = sigma(f) * tanh(c), [c|f] = Overparam(sigma(vs)); scale 1/sqrt(E); causal mask
         (-inf) inside the segment only; dropout on q, v and P; no output projection.
  * Boom: z = Drop_h(x*sigmoid(1.702x) of W_1 x + b_1), then sum of the nhid//E chunks of width E.
  * All LayerNorms eps=1e-12, gamma=1, beta=0. Linear/Embedding weights ~ N(0, (0.1/sqrt(E))^2),
    biases 0; LSTM keeps PyTorch defaults U(+-1/sqrt(E)).
  * State-dict names equal the reference's (Smerity/sha-rnn model.py) minus its dead parameters
    (lnout, unused lnmid/lnmem, qkvs, r_gate), which are NOT created;
    `params_reference` in the JSON adds them back for comparison with the reference's count.
  * Memory: the last `mem_len` LN_mem states (starts empty, fixed-size once full), detached between
    steps. This equals the reference with num_max_positions = mem_len + seq_len.

Optimizer: the "minimum trust" LAMB of Smerity/pytorch-lamb (spec A8; default), or torch Adam.
Only torch, numpy and the standard library are imported.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-12


def gelu_sigmoid(x):
    return x * torch.sigmoid(1.702 * x)


class Overparam(nn.Module):
    """[c|f] = l1(x) (rows [0,E) -> c, [E,2E) -> f); returns sigma(f) * tanh(c)."""

    def __init__(self, E):
        super().__init__()
        self.E = E
        self.l1 = nn.Linear(E, 2 * E)

    def forward(self, x):
        c, f = self.l1(x).split(self.E, dim=-1)
        return torch.sigmoid(f) * torch.tanh(c)


class SHA(nn.Module):
    """Single-head attention with qs/ks/vs gates and the Overparam value gate (spec A3)."""

    def __init__(self, E, dropout):
        super().__init__()
        self.E = E
        self.qs = nn.Parameter(torch.zeros(1, 1, E))
        self.ks = nn.Parameter(torch.zeros(1, 1, E))
        self.vs = nn.Parameter(torch.zeros(1, 1, E))
        self.q = nn.Linear(E, E)
        self.qln = nn.LayerNorm(E, eps=LN_EPS)
        self.vq = Overparam(E)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, kv, mask):
        # h: (L,B,E) already LN_mid'ed; kv: (T,B,E); mask: (L,T) additive
        gq = torch.sigmoid(self.qs)
        gk = torch.sigmoid(self.ks)
        gv = self.vq(torch.sigmoid(self.vs))
        q = gq * self.qln(self.q(h))
        k = gk * kv
        v = gv * kv
        q = self.drop(q)
        v = self.drop(v)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # batch-major
        s = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(self.E) + mask
        p = self.drop(torch.softmax(s, dim=-1))
        return torch.matmul(p, v).transpose(0, 1)  # (L,B,E)


class Boom(nn.Module):
    """shortcut=True Boom: one matrix, sigmoid-GELU, dropout, chunk-sum back to E (spec A4)."""

    def __init__(self, E, nhid, dropout):
        super().__init__()
        self.E, self.n = E, nhid // E
        self.linear1 = nn.Linear(E, self.n * E)  # reference trims nhid to floor(nhid/E)*E
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        z = self.drop(gelu_sigmoid(self.linear1(x)))
        return z.view(*z.shape[:-1], self.n, self.E).sum(dim=-2)


class Block(nn.Module):
    def __init__(self, E, nhid, dropouth, use_attn):
        super().__init__()
        self.lnstart = nn.LayerNorm(E, eps=LN_EPS)
        self.rnn = nn.LSTM(E, E, num_layers=1)
        self.use_attn = use_attn
        if use_attn:
            self.lnmem = nn.LayerNorm(E, eps=LN_EPS)
            self.lnmid = nn.LayerNorm(E, eps=LN_EPS)
            self.attn = SHA(E, dropouth)
        self.lnff = nn.LayerNorm(E, eps=LN_EPS)
        self.lnxff = nn.LayerNorm(E, eps=LN_EPS)
        self.ff = Boom(E, nhid, dropouth)
        self.drop = nn.Dropout(dropouth)

    def forward(self, h, hidden, mem, mem_len):
        h, hidden = self.rnn(self.lnstart(h), hidden)
        h = self.drop(h)  # no residual around the LSTM
        new_mem = None
        if self.use_attn:
            m = self.lnmem(h)
            h = self.lnmid(h)
            kv = m if mem is None else torch.cat([mem, m], dim=0)
            L, T = h.shape[0], kv.shape[0]
            causal = torch.full((L, L), float("-inf"), device=h.device).triu(1)
            mask = torch.cat([causal.new_zeros(L, T - L), causal], dim=1)
            h = h + self.drop(self.attn(h, kv, mask))
            new_mem = kv[-mem_len:] if mem_len > 0 else None
        h = self.lnff(h) + self.drop(self.ff(self.lnxff(h)))
        return h, hidden, new_mem


class SHARNN(nn.Module):
    def __init__(
        self, vocab, E, nhid, layers, attn_layers, dropout=0.1, dropouth=0.1, dropouti=0.1
    ):
        super().__init__()
        self.encoder = nn.Embedding(vocab, E)
        self.decoder = nn.Linear(E, vocab)
        self.decoder.weight = self.encoder.weight  # tied; decoder.bias is its own V-vector
        self.blocks = nn.ModuleList(
            Block(E, nhid, dropouth, j in attn_layers) for j in range(layers)
        )
        self.idrop, self.odrop = nn.Dropout(dropouti), nn.Dropout(dropout)
        std = 0.1 / math.sqrt(E)
        for mod in self.modules():  # spec A6: Linear + Embedding only; LSTM/LN keep defaults
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, 0.0, std)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)

    def forward(self, x, hidden, mems, mem_len):
        h = self.idrop(self.encoder(x))  # (L,B,E)
        new_hidden, new_mems = [], []
        for j, blk in enumerate(self.blocks):
            h, hid, mem = blk(h, hidden[j], mems[j], mem_len)
            new_hidden.append(hid)
            new_mems.append(mem)
        h = self.odrop(h)
        logits = self.decoder(h)  # h W_emb^T + b_dec
        return logits, new_hidden, new_mems


class Lamb(torch.optim.Optimizer):
    """'Minimum trust' LAMB (Smerity/pytorch-lamb, spec A8): no bias correction, eps on sqrt(v),
    wd inside the trust ratio, phi = clamp(||w||, 0, 10), r = max(r, min_trust)."""

    def __init__(
        self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=1.2e-6, min_trust=0.25
    ):
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, min_trust=min_trust),
        )

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = st["m"], st["v"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                u = m / (v.sqrt() + g["eps"])
                if g["weight_decay"]:
                    u.add_(p, alpha=g["weight_decay"])
                phi, un = p.norm().clamp(0, 10), u.norm()
                r = torch.where((phi == 0) | (un == 0), torch.ones_like(phi), phi / un).clamp(
                    min=g["min_trust"]
                )
                p.sub_(u * (g["lr"] * r))


def count_params(model, args):
    n = sum(p.numel() for p in model.parameters())
    E, n_attn = args.width, len(model_attn_layers(args))
    # dead reference parameters: lnout per block, lnmid+lnmem per non-attn block,
    # qkvs+r_gate per attn block
    dead = args.layers * 2 * E + (args.layers - n_attn) * 4 * E + n_attn * 4 * E
    return n, n + dead


def model_attn_layers(args):
    return sorted({int(s) for s in str(args.attn_layers).split(",") if s.strip() != ""})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--boom", type=int, default=1024)
    ap.add_argument("--attn_layers", default="2", help="comma list of block indices with attention")
    ap.add_argument("--mem_len", type=int, default=512)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="0 = torch default")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--optimizer", choices=["lamb", "adam"], default="lamb")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        help="if >0, profile this many extra steps (table to stderr)",
    )
    args = ap.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    attn = model_attn_layers(args)
    model = SHARNN(
        args.vocab,
        args.width,
        args.boom,
        args.layers,
        attn,
        args.dropout,
        args.dropout,
        args.dropout,
    )
    model.train()
    params, params_ref = count_params(model, args)
    if args.optimizer == "lamb":
        opt = Lamb(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    rng = np.random.default_rng(args.seed)
    L, B = args.seq_len, args.batch_size
    n_total = args.warmup + args.steps + args.profile
    batches = [
        torch.from_numpy(rng.integers(0, args.vocab, size=(L + 1, B), dtype=np.int64))
        for _ in range(n_total)
    ]

    state = {"hidden": [None] * args.layers, "mems": [None] * args.layers}

    def train_step(tok):
        x, y = tok[:-1], tok[1:]
        opt.zero_grad(set_to_none=True)
        logits, hidden, mems = model(x, state["hidden"], state["mems"], args.mem_len)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        state["hidden"] = [tuple(t.detach() for t in hc) for hc in hidden]
        state["mems"] = [None if m is None else m.detach() for m in mems]
        return loss.item()

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = train_step(batches[i])
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        if not math.isfinite(loss):
            raise SystemExit(f"non-finite loss at step {i}: {loss}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.profile):
                train_step(batches[args.warmup + args.steps + i])
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr
        )

    med = statistics.median(times)
    out = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "params": params,
        "batch_size": B,
        "seq_len": L,
        "threads": torch.get_num_threads(),
        "step_ms_median": round(med * 1e3, 3),
        "tokens_per_sec": round(B * L / med, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "model": "sha_rnn",
        "optimizer": args.optimizer,
        "params_reference": params_ref,
        "layers": args.layers,
        "width": args.width,
        "boom": args.boom,
        "attn_layers": attn,
        "mem_len": args.mem_len,
        "vocab": args.vocab,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_ms_min": round(min(times) * 1e3, 3),
        "step_ms_max": round(max(times) * 1e3, 3),
        "final_loss": round(loss, 4),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
