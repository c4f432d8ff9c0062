#!/usr/bin/env python3
"""facebookresearch/adaptive-span (commit 27b815f) itself, as the reference for lmjax's
Adaptive-Span training step (configs/adaptive_span.py:cpu). Runs in .venv-torch.

  adaptive_span_reference.py [--src DIR] [--span_init 0] [--steps 5 --warmup 2 --threads 2]

The reference is not a package: its modules are extracted at run time from a mirror
(`$ADAPTIVE_SPAN_MIRROR`, default /work/.mirror/facebookresearch+adaptive-span/repo, into
.cache/adaptive-span) or read from a checkout (`--src DIR` or `$ADAPTIVE_SPAN_SRC`) and imported
from there; nothing of it is copied into this repository.

What runs: `models.TransformerSeq` with the arguments main.py passes at lmjax's `cpu` shape
(vocabulary 256, 4 layers of 256, inner 1024, 4 heads, attn_span 1024, dropout 0, no adaptive
input/output, no persistent memory; adaptive span on with loss 2e-6, ramp 32, init `--span_init`
(0: the scripts' value, 1: the full span), adapt_span_cache on), wrapped in
`torch.nn.DataParallel` as main.py does without distributed training (on a CPU it calls the
module directly); the h_cache built as main.py builds it (zeros [B, get_cache_size(), H] per
layer); and each step is the reference's own `trainer._train_batch(model, optimizer, scheduler,
X, Y, h_cache, eval_only=False, batch_split=1)`: forward, NLL mean plus the span loss, backward,
the LambdaLR warmup step, the optimizer step, and `clamp_param()` of every span. The optimizer is
`utils._get_optimizer(model, 'adagrad', lr 0.07, momentum 0, grad_clip 0.03)`: the reference's
AdagradWithGradClip (per-tensor clip of the step size), and the scheduler
`utils._get_scheduler(optimizer, lr_warmup 200)`.

How the reference saves work at small spans: before each attention, `AdaptiveSpan.trim_memory`
drops the oldest `trim_len` keys, trim_len = floor((1024 - (ceil(max_head z * 1024) + ramp)) /
64) * 64, so at z = 0 the 256 queries see 1024 - 960 + 256 = 320 keys; with
`adapt_span_cache` the carried cache is that length plus 64. At `--span_init 1` nothing is
trimmed (1,280 keys). lmjax's trainer trims the same way (`trim_lens` from the spans).

No shim: the reference's AdagradWithGradClip.step runs unmodified on torch 2.13 (its pre-2.0
`add(Number, Tensor)` calls still work, with a deprecation warning on stderr; checked equal to a
written-out clipped Adagrad, max difference 0.0), and nothing here needs CUDA (DataParallel with
no GPU calls the module directly). One JSON line on stdout.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys

import bench_util  # reference/bench_util.py, beside this script
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = "27b815f"
MIRROR = os.environ.get("ADAPTIVE_SPAN_MIRROR", "/work/.mirror/facebookresearch+adaptive-span/repo")
MODULES = ("models.py", "adaptive_span.py", "persistent_memory.py", "adaptive_io.py",
           "trainer.py", "utils.py", "adagrad_with_grad_clip.py", "config.py")  # fmt: skip


def reference_src(src):
    if src:
        return src
    out = os.path.join(ROOT, ".cache", "adaptive-span")
    if not os.path.exists(os.path.join(out, "models.py")):
        if not os.path.isdir(MIRROR):
            sys.exit(
                f"no adaptive-span checkout: pass --src or set ADAPTIVE_SPAN_MIRROR ({MIRROR})"
            )
        os.makedirs(out, exist_ok=True)
        archive = subprocess.run(["git", "-C", MIRROR, "archive", COMMIT, *MODULES],
                                 check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out


def bench(args):
    bench_util.set_threads(args.threads)
    sys.path.insert(0, reference_src(args.src))
    import trainer
    import utils
    from models import TransformerSeq

    torch.manual_seed(args.seed)
    span = dict(adapt_span_enabled=True, adapt_span_loss=args.span_loss,
                adapt_span_ramp=args.ramp, adapt_span_init=args.span_init,
                adapt_span_cache=True)  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):
        model = TransformerSeq(
            vocab_size=256, hidden_size=args.hidden, inner_hidden_size=args.inner,
            nb_heads=args.n_head, nb_layers=args.n_layer, attn_span=args.attn_span,
            emb_dropout=0.0, dropout=args.dropout, adapt_io_params={"adapt_io_enabled": False},
            adapt_span_params=span, pers_mem_params={"pers_mem_size": 0},
        )  # fmt: skip
        model = torch.nn.DataParallel(model)
        optimizer = utils._get_optimizer(model, "adagrad", args.lr, 0.0, args.grad_clip)
        scheduler = utils._get_scheduler(optimizer, args.warmup_lr)
    B, M = args.batch_size, args.block
    h_cache = [torch.zeros(B, layer.attn.attn.get_cache_size(), args.hidden)
               for layer in model.module.layers]  # fmt: skip
    batches = [torch.randint(0, 256, (B, M + 1), dtype=torch.int64)
               for _ in range(args.warmup + args.steps + args.profile)]  # fmt: skip
    model.train()

    def step(tokens):
        nonlocal h_cache
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # as train_iteration
        loss, h_cache = trainer._train_batch(model, optimizer, scheduler, x, y, h_cache, False, 1)
        return loss

    times, loss = bench_util.time_steps(step, batches, args.warmup, args.steps, args.profile)
    spans = [layer.attn.attn.adaptive_span for layer in model.module.layers]
    print(json.dumps({
        "impl": f"facebookresearch/adaptive-span {COMMIT} TransformerSeq + trainer._train_batch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": B,
        "seq_len": M,
        "attn_span": args.attn_span,
        "span_init": args.span_init,
        "trim_lens": [s.get_trim_len() for s in spans],
        "max_spans": [s.get_current_max_span() for s in spans],
        "cache_sizes": [h.shape[1] for h in h_cache],
        "steps": args.steps,
        "warmup": args.warmup,
        **bench_util.timing_fields(times, B * M, loss),
    }), flush=True)  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=os.environ.get("ADAPTIVE_SPAN_SRC", ""))
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inner", type=int, default=1024)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--attn_span", type=int, default=1024)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--span_init", type=float, default=0.0)
    ap.add_argument("--span_loss", type=float, default=2e-6)
    ap.add_argument("--ramp", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.07)
    ap.add_argument("--grad_clip", type=float, default=0.03)
    ap.add_argument("--warmup_lr", type=int, default=200, help="the lr warmup steps")
    ap.add_argument("--dropout", type=float, default=0.0)
    bench_util.add_timing_args(ap)
    bench(ap.parse_args())


if __name__ == "__main__":
    main()
