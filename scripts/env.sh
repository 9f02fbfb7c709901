#!/usr/bin/env bash
# Create or reuse the project's virtual environment in .venv and install medmamba into it.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (a stamp skips reinstalling).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDMAMBA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$VENV/.medmamba-installed"
HASH="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  # the CPU wheel of torch first, pinned, so that no CUDA build is pulled in by a range
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[all,test]"
  echo "$HASH" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYTHON_BIN="$VENV/bin/python"
