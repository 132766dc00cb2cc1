#!/usr/bin/env bash
# Set up the course (a virtual environment in .venv) and run its main job: generate a picture
# with the shipped tiny model, offline, then open the notebooks in JupyterLab.
# Usage: bash scripts/course.sh            (set NO_JUPYTER=1 to stop after the picture)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[course]"
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/sdlearn generate "a red circle in the top left on a white background" --seed 0 \
    -o out.png
if [ -z "${NO_JUPYTER:-}" ]; then
    exec .venv/bin/jupyter lab notebooks/
fi
