#!/usr/bin/env bash
# Set up everything (a virtual environment in .venv with the pinned stack) and run every test:
# unit tests, full-size parity tests against KerasCV, strict nbval on the notebooks, the book.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[course,book,test]"
# tests/test_book.py opens the built book in headless Chromium: install it where apt-get can.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export TF_CPP_MIN_LOG_LEVEL=2 TQDM_MININTERVAL=1e9
.venv/bin/python -m pytest "$@"
