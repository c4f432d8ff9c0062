#!/usr/bin/env bash
# Create the PyTorch (CPU) venv used by the torch-side benchmarks and parity tests
# (torch 2.13.0 CPU, sru 2.6.0, and sru 3.0.0.dev6 in $VENV/sru3 for SRU++).
# Usage: bash reference/setup_torch_env.sh        (venv path overridable with $TORCH_VENV)
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
# SRU++ exists only in sru 3.0.0.dev6 (pure Python + a JIT-compiled C++ op). It is unpacked
# beside 2.6.0, in $VENV/sru3, which reference/sru_reference.py puts first on sys.path for SRU++.
if [ ! -f "$VENV/sru3/sru/version.py" ] || ! grep -q '3.0.0.dev6' "$VENV/sru3/sru/version.py"; then
  "$PY" -m pip install -q --no-deps --target "$VENV/sru3" sru==3.0.0.dev6
fi
"$PY" -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'
echo "venv: $VENV  (export TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR before importing sru)"
