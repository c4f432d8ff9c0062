#!/usr/bin/env python3
"""Every family's training step against its reference code, on this machine, in one run.

  bash reference/compare.sh [--rounds 3] [--rows sha_rnn,sru_pp] [--readme README.md]

For each row of ROWS it runs `python -m lmjax.bench` at the family's `cpu` shape and the
reference's own PyTorch code at the same shape (reference/*.py bench, in .venv-torch, 2 threads),
one process each, alternated: within a round the rows run in turn and, for each row, which side
goes first swaps every round, so that drift in this shared CPU's speed hits both sides alike.
Each process reports the median of its timed steps; the table gives the median over rounds of
each side's tokens/s, their ratio (lmjax / reference), the issue's target ratio, each side's
peak RSS, and lmjax's `peak_fraction` (achieved matmul FLOP/s over `lmjax.bench --peak`).

The delta-rule rows have no reference on a CPU (lmtool-fwms runs them as CUDA kernels only):
their target is lmjax's own sum-rule linear model, timed in the same rounds.

Every run's JSON line goes to --jsonl (one object per line with `row`, `side`, `round`, and the
bench's fields); with --readme the table replaces the lines between `<!-- compare:begin -->` and
`<!-- compare:end -->` in that file. Only the standard library is imported: run it with any
Python 3.10+ (compare.sh uses .venv's).
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from lmjax.machine import cpu_name  # noqa: E402  (standard library only)

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # --rows key
    label: str  # the table's model column
    lmjax: tuple  # lmjax.bench arguments
    reference: tuple  # reference script and its arguments (None: compared with `against`)
    reference_label: str
    target: float  # ratio lmjax / reference the issue asks for
    against: str = ""  # another row whose lmjax side is this row's reference


def fw(feature_map, rule="sum", impl=None):
    args = ["--config=configs/fast_weights.py:cpu", f"--config.model.feature_map={feature_map}",
            f"--config.model.update_rule={rule}"]  # fmt: skip
    return tuple(args + ([f"--config.model.fast_weight_impl={impl}"] if impl else []))


FWMS = ("reference/fwms_reference.py", "bench", "--src", ".cache/lmtool-fwms/src", "--types")
ROWS = (
    Row("sha_rnn", "SHA-RNN `sha_rnn.py:cpu`", ("--config=configs/sha_rnn.py:cpu",),
        ("reference/sha_rnn_smerity.py", "bench"), "Smerity/sha-rnn `SHARNN` + min-trust LAMB",
        1.2),
    Row("sru_pp", "SRU++ `sru_pp.py:cpu`", ("--config=configs/sru_pp.py:cpu",),
        ("reference/sru_reference.py", "bench", "--model", "srupp"), "sru 3.0.0.dev6 `SRUpp`",
        1.5),
    Row("sru", "SRU `sru.py:cpu`", ("--config=configs/sru.py:cpu",),
        ("reference/sru_reference.py", "bench", "--model", "sru"), "sru 2.6.0 `SRU`", 1.5),
    Row("transformer_xl", "Transformer-XL `transformer_xl.py:cpu`",
        ("--config=configs/transformer_xl.py:cpu",),
        FWMS + ("0", "--mem_len", "256", "--n_head", "4", "--d_head", "64"),
        "lmtool-fwms Transformer-XL (type 0, memory 256)", 1.5),
    Row("adaptive_span", "Adaptive-Span `adaptive_span.py:cpu`, initial spans",
        ("--config=configs/adaptive_span.py:cpu",),
        ("reference/adaptive_span_reference.py",),
        "facebookresearch/adaptive-span, initial spans", 1.5),
    Row("adaptive_span_full", "Adaptive-Span, full span 1,024 (`span_init` 1)",
        ("--config=configs/adaptive_span.py:cpu", "--config.model.span_init=1.0"),
        ("reference/adaptive_span_reference.py", "--span_init", "1"),
        "facebookresearch/adaptive-span, full span", 1.5),
    Row("fw_softmax", "softmax `fast_weights.py:cpu`", fw("softmax"), FWMS + ("2",),
        "lmtool-fwms type 2", 1.5),
    Row("fw_linear", "linear, sum rule", fw("linear"), FWMS + ("4",), "lmtool-fwms type 4", 1.5),
    Row("fw_performer", "Performer, sum rule", fw("performer"), FWMS + ("5",),
        "lmtool-fwms type 5", 1.5),
    Row("fw_dpfp", "DPFP, sum rule", fw("dpfp"), FWMS + ("6",), "lmtool-fwms type 6", 1.5),
    Row("fw_delta_linear", "linear, delta rule", fw("linear", "delta"), None,
        "lmjax linear, sum rule (type 24 is CUDA-only)", 1.0, against="fw_linear"),
)  # fmt: skip


def command(row, side, args):
    if side == "lmjax":
        return [args.python, "-m", "lmjax.bench", *row.lmjax, f"--steps={args.steps}",
                f"--warmup={args.warmup}"]  # fmt: skip
    script, *rest = row.reference
    return [args.torch_python, script, *rest, "--steps", str(args.ref_steps), "--warmup",
            str(args.ref_warmup), "--threads", str(args.threads)]  # fmt: skip


def last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line on stdout")


def run(row, side, args, log):
    cmd = command(row, side, args)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{proc.stderr}\n")
    log.flush()
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        sys.exit(f"compare: {row.name} ({side}) failed with rc {proc.returncode}:\n{tail}")
    rec = last_json(proc.stdout)
    rec["wall_s"] = round(time.time() - t0, 1)
    return rec


def medians(records):
    """{(row, side): {"tokens_per_sec", "peak_rss_mb", "peak_fraction", "n"}} over rounds."""
    out = {}
    for key in {(r["row"], r["side"]) for r in records}:
        rs = [r for r in records if (r["row"], r["side"]) == key]
        m = {"n": len(rs)}
        for field in ("tokens_per_sec", "peak_rss_mb", "peak_fraction"):
            vals = [r[field] for r in rs if r.get(field) is not None]
            m[field] = statistics.median(vals) if vals else None
        out[key] = m
    return out


def table(rows, records):
    """The markdown table: one line per row with both sides' medians and the ratio."""
    med = medians(records)
    lines = ["| model | lmjax tok/s | reference | reference tok/s | ratio | target | "
             "peak RSS MB lmjax / ref | lmjax peak fraction |",
             "|---|---:|---|---:|---:|---:|---|---:|"]  # fmt: skip
    for row in rows:
        j = med.get((row.name, "lmjax"))
        ref_key = (row.against, "lmjax") if row.against else (row.name, "reference")
        r = med.get(ref_key)
        if j is None or r is None:
            continue
        ratio = j["tokens_per_sec"] / r["tokens_per_sec"]
        met = "met" if ratio >= row.target else "**missed**"
        frac = f"{j['peak_fraction']:.3f}" if j["peak_fraction"] is not None else ""
        lines.append(
            f"| {row.label} | {j['tokens_per_sec']:,.0f} | {row.reference_label} | "
            f"{r['tokens_per_sec']:,.0f} | **{ratio:.2f}** | {row.target:g}x {met} | "
            f"{j['peak_rss_mb']:,.0f} / {r['peak_rss_mb']:,.0f} | {frac} |"
        )
    return "\n".join(lines)


def replace_between_markers(text, block):
    if BEGIN not in text or END not in text:
        raise ValueError(f"no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--steps", type=int, default=10, help="lmjax timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="lmjax untimed steps")
    ap.add_argument("--ref_steps", type=int, default=10)
    ap.add_argument("--ref_warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the reference side")
    ap.add_argument("--python", default=sys.executable, help="the JAX environment's python")
    ap.add_argument("--torch_python", default=os.path.join(ROOT, ".venv-torch", "bin", "python"))
    ap.add_argument("--jsonl", default="", help="append every run's JSON line here")
    ap.add_argument("--log", default="/tmp/lmjax_compare.log", help="the runs' stderr")
    ap.add_argument("--readme", default="", help="write the table between the markers here")
    args = ap.parse_args(argv)
    known = {r.name: r for r in ROWS}
    names = [n for n in args.rows.split(",") if n] or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown --rows {','.join(unknown)}; known: {', '.join(known)}")  # exit 2
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    rows = [known[n] for n in names]
    for row in rows:  # a delta row needs its sum-rule row in the same rounds
        if row.against and row.against not in names:
            rows.append(known[row.against])
            names.append(row.against)
    records = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(args.log, "w") as log:
        for rnd in range(args.rounds):
            for row in rows:
                sides = ["lmjax"] + ([] if row.reference is None else ["reference"])
                if rnd % 2:
                    sides.reverse()
                for side in sides:
                    rec = run(row, side, args, log)
                    rec.update(row=row.name, side=side, round=rnd)
                    records.append(rec)
                    print(f"round {rnd + 1}/{args.rounds} {row.name:<20} {side:<9} "
                          f"{rec['tokens_per_sec']:>9,.0f} tok/s  {rec['wall_s']:>6.1f} s",
                          file=sys.stderr, flush=True)  # fmt: skip
                    if args.jsonl:
                        with open(args.jsonl, "a") as f:
                            f.write(json.dumps(rec) + "\n")
    block = table(rows, records)
    measured = ("rounds", "rows", "steps", "warmup", "ref_steps", "ref_warmup", "threads")
    cmd = "bash reference/compare.sh" + "".join(
        f" --{k} {getattr(args, k)}" for k in measured if getattr(args, k) != ap.get_default(k)
    )
    note = (f"`{cmd}`: {args.rounds} rounds alternated, medians; started {started} on "
            f"{cpu_name()} with {os.cpu_count()} CPUs; lmjax {args.steps} timed steps "
            f"a run, the reference {args.ref_steps}, torch threads {args.threads}.")  # fmt: skip
    print(f"{block}\n\n{note}")
    if args.readme:
        path = os.path.join(ROOT, args.readme)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(replace_between_markers(text, f"{block}\n\n{note}"))


if __name__ == "__main__":
    main()
