#!/usr/bin/env bash
# Create the PyTorch (CPU) venv used by the torch-side benchmarks and parity tests.
# Usage: bash launch/setup_torch_env.sh        (venv path overridable with $TORCH_VENV)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TORCH_VENV:-$ROOT/.venv-torch}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
mkdir -p "$TORCH_EXTENSIONS_DIR"

[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
PY="$VENV/bin/python"
# Pinned: with this machine's pip config torch==2.13.0 resolves to the local CPU wheel.
# Never install an unpinned torch (it would fetch the CUDA build).
if ! "$PY" -c 'import torch, numpy, sru' >/dev/null 2>&1 || \
   [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0], m.version("numpy"), m.version("sru"))' 2>/dev/null)" != "2.13.0 2.4.6 2.6.0" ]; then
  "$PY" -m pip install -q torch==2.13.0 numpy==2.4.6 sru==2.6.0
fi
"$PY" -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'
echo "venv: $VENV  (export TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR before importing sru)"
