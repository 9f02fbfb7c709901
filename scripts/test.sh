#!/usr/bin/env bash
# Run the test suite (the fast default selection; pass -m slow or other pytest arguments to change it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$PYTHON_BIN" -m pytest -q "$@"
