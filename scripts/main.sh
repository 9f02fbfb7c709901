#!/usr/bin/env bash
# The README's main job: creates or reuses .venv, installs medmamba, then runs scripts/main_job.py.
# Extra arguments are passed to scripts/main_job.py (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# what the main job runs: export (ONNX check), dicom, data (the template), train (metrics, TensorBoard)
MEDMAMBA_EXTRAS="${MEDMAMBA_EXTRAS:-export,dicom,data,train}" source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$PYTHON_BIN" scripts/main_job.py "$@"
