#!/usr/bin/env bash
# Fast-weight-programmer LM training-step throughput, lmjax vs the IDSIA/lmtool-fwms reference
# (PyTorch `MemTransformerLM`, reference/fwms_reference.py bench), at configs/fast_weights.py:cpu's
# shape (4 layers, d_model 256, 8 heads of 32, d_inner 1024, batch 8 x 256 bytes), on this
# machine in one run. For each sum-rule type (softmax 2, linear 4, performer 5, dpfp 6) it runs
# lmjax's bench and the reference's, alternated (which goes first swaps every round), ROUNDS
# times, so that background load hits both alike; lmjax's delta-rule rows (linear recurrent and
# chunkwise, performer and dpfp at `auto`) run in the same rounds, with no reference: types
# 24-26 are CUDA kernels there (the CPU loops of fwms_reference.py are stand-ins, not timed).
# Prints each run's JSON line, then a markdown table of medians over the rounds.
# Usage: bash reference/bench_fwms_vs_torch.sh [ROUNDS]    (needs .venv and .venv-torch)
#   env: STEPS (lmjax timed steps, 20; 3 warm-up), REF_STEPS / REF_WARMUP (reference, 20 / 3),
#        THREADS (torch.set_num_threads, 2), PYTHON, TORCH_PY, FWMS_SRC, FWMS_MIRROR
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
STEPS="${STEPS:-20}"
REF_STEPS="${REF_STEPS:-20}"
REF_WARMUP="${REF_WARMUP:-3}"
THREADS="${THREADS:-2}"
PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}"  # the README's .venv if there
TORCH_PY="${TORCH_PY:-.venv-torch/bin/python}"
FWMS_SRC="${FWMS_SRC:-.cache/lmtool-fwms/src}"
FWMS_MIRROR="${FWMS_MIRROR:-/work/.mirror/IDSIA+lmtool-fwms/repo}"
COMMIT=52ada3d1333ea346cbb142b30151f373b05e14d3 # as tests/models/fast_weights_parity_test.py

if [[ ! -f "$FWMS_SRC/model_main.py" ]]; then
  if [[ "$FWMS_SRC" != .cache/lmtool-fwms/src ]]; then
    echo "no model_main.py in FWMS_SRC=$FWMS_SRC" >&2
    exit 1
  fi
  echo "extracting lmtool-fwms $COMMIT src/ from $FWMS_MIRROR into .cache/lmtool-fwms" >&2
  mkdir -p .cache/lmtool-fwms
  git -C "$FWMS_MIRROR" archive "$COMMIT" src | tar -x -C .cache/lmtool-fwms
  echo "$COMMIT" >.cache/lmtool-fwms/COMMIT
fi

out=$(mktemp)
log=$(mktemp)
echo "JSON lines in $out, stderr of the runs in $log" >&2

run() { # LABEL COMMAND...: appends "LABEL<tab>last stdout line" to $out and echoes it
  local label=$1 line
  shift
  if ! line=$("$@" 2>>"$log" | tail -n 1); then
    echo "failed: $label: $* (stderr in $log)" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  printf '%s\t%s\n' "$label" "$line" | tee -a "$out"
}

lmjax() { # FEATURE_MAP UPDATE_RULE IMPL
  "$PY" -m lmjax.bench --config=configs/fast_weights.py:cpu --steps="$STEPS" \
    --config.model.feature_map="$1" --config.model.update_rule="$2" \
    --config.model.fast_weight_impl="$3"
}

reference() { # ATTN_TYPE
  "$TORCH_PY" reference/fwms_reference.py bench --src "$FWMS_SRC" --types "$1" \
    --steps "$REF_STEPS" --warmup "$REF_WARMUP" --threads "$THREADS"
}

SUM_TYPES=("softmax 2" "linear 4" "performer 5" "dpfp 6")
DELTA_ROWS=("linear recurrent" "linear chunkwise" "performer auto" "dpfp auto")
for round in $(seq "$ROUNDS"); do
  for entry in "${SUM_TYPES[@]}"; do
    read -r fmap attn_type <<<"$entry"
    if ((round % 2)); then
      run "lmjax $fmap sum" lmjax "$fmap" sum auto
      run "reference $fmap sum" reference "$attn_type"
    else
      run "reference $fmap sum" reference "$attn_type"
      run "lmjax $fmap sum" lmjax "$fmap" sum auto
    fi
  done
  for entry in "${DELTA_ROWS[@]}"; do
    read -r fmap impl <<<"$entry"
    label="lmjax $fmap delta"
    if [[ "$impl" != auto ]]; then label+=" $impl"; fi
    run "$label" lmjax "$fmap" delta "$impl"
  done
done

"$PY" - "$out" "$ROUNDS" "$STEPS" "$REF_STEPS" "$REF_WARMUP" "$THREADS" <<'PY'
import collections, json, statistics, sys

path, rounds, steps, ref_steps, ref_warmup, threads = sys.argv[1:]
runs = collections.defaultdict(list)
for line in open(path):
    label, blob = line.rstrip("\n").split("\t", 1)
    runs[label].append(json.loads(blob))


def med(label, key):
    return statistics.median(r[key] for r in runs[label])


torch_version = next(r["torch"] for k, rs in runs.items() if k.startswith("reference") for r in rs)
print()
print(f"{rounds} rounds; lmjax {steps} timed steps after 3 warm-up, reference (torch "
      f"{torch_version}, {threads} threads) {ref_steps} after {ref_warmup}; tokens/s = "
      "8 x 256 / median step time, medians over the rounds; peak RSS the largest of the rounds")
print()
print("| type | lmjax impl | lmjax tokens/s | reference tokens/s | lmjax / reference "
      "| lmjax peak RSS MB | reference peak RSS MB |")
print("|---|---|---:|---:|---:|---:|---:|")
for label in runs:
    if not label.startswith("lmjax"):
        continue
    name = label.removeprefix("lmjax ")
    impl = runs[label][0].get("fast_weight_impl", "-")
    j, j_rss = med(label, "tokens_per_sec"), max(r["peak_rss_mb"] for r in runs[label])
    ref = "reference " + name
    if ref in runs:
        t, t_rss = med(ref, "tokens_per_sec"), max(r["peak_rss_mb"] for r in runs[ref])
        cols = f"{t:.0f} | {j / t:.2f} | {j_rss:.0f} | {t_rss:.0f}"
    else:
        cols = f"reference: CUDA only | - | {j_rss:.0f} | -"
    print(f"| {name} | {impl} | {j:.0f} | {cols} |")
PY
echo
echo "wall time ${SECONDS}s"
