#!/usr/bin/env bash
# Set up a virtual environment (default .venv; VENV=path to choose) with vaelab and every test
# dependency, install headless Chromium for the browser tests if missing, and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k eval`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# torch first, pinned to the CPU build this kind of machine has on disk (a bare `torch` pulls CUDA).
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[dev,explorer,export,tensorboard,mlflow,browser,classical,docs,medical]"

# Debian's Chromium for the browser tests (Playwright drives it through executable_path).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "note: could not install chromium; browser tests will be skipped"
fi

exec "$VENV/bin/python" -m pytest "$@"
