#!/usr/bin/env bash
# SHA-RNN training-step throughput, lmjax vs PyTorch, at the `cpu` benchmark shape, on this
# machine in one run. Alternates the two ROUNDS times so that background load hits both alike,
# then prints each run's JSON line and the median ratio.
# Usage: bash reference/bench_sha_rnn_vs_torch.sh [ROUNDS]    (needs .venv and .venv-torch)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}"  # the README's .venv if there
TORCH_PY="${TORCH_PY:-.venv-torch/bin/python}"
out=$(mktemp)
for _ in $(seq "$ROUNDS"); do
  "$PY" -m lmjax.bench --config=configs/sha_rnn.py:cpu --steps=20 2>/dev/null | tail -n 1 >>"$out"
  "$TORCH_PY" reference/torch_sha_rnn.py --layers 4 --width 256 --boom 1024 --attn_layers 2 \
    --mem_len 512 --batch_size 8 --seq_len 256 --vocab 256 --steps 20 --warmup 3 2>/dev/null \
    | tail -n 1 >>"$out"
done
cat "$out"
"$PY" - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
jax_tps = [r["tokens_per_sec"] for r in runs if "impl" not in r]
torch_tps = [r["tokens_per_sec"] for r in runs if r.get("impl") == "pytorch"]
j, t = statistics.median(jax_tps), statistics.median(torch_tps)
print(f"median tokens/s: lmjax {j:.0f}, pytorch {t:.0f}, ratio lmjax/pytorch {j / t:.2f}")
PY
