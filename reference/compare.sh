#!/usr/bin/env bash
# Every family's training step against its reference code, alternated in one run on this machine:
# the README's speed table (reference/compare.py says what is run and how).
# Usage: bash reference/compare.sh [--rounds 3] [--rows a,b] [--readme README.md] [--jsonl F]
# Needs .venv (README setup) and .venv-torch (bash reference/setup_torch_env.sh, run here if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}"
[[ -x .venv-torch/bin/python ]] || bash reference/setup_torch_env.sh >&2
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
FWMS_MIRROR="${FWMS_MIRROR:-/work/.mirror/IDSIA+lmtool-fwms/repo}"
COMMIT=52ada3d1333ea346cbb142b30151f373b05e14d3 # as tests/models/fast_weights_parity_test.py
if [[ ! -f .cache/lmtool-fwms/src/model_main.py ]]; then
  echo "extracting lmtool-fwms $COMMIT src/ from $FWMS_MIRROR into .cache/lmtool-fwms" >&2
  mkdir -p .cache/lmtool-fwms
  git -C "$FWMS_MIRROR" archive "$COMMIT" src | tar -x -C .cache/lmtool-fwms
fi
exec "$PY" reference/compare.py --python "$PY" "$@"
