#!/usr/bin/env bash
# One command for each set-up on a fresh machine (Python >= 3.11, package registries reachable):
#   bash scripts/setup.sh demo   install llmshrink into .venv and run `llmshrink demo`
#   bash scripts/setup.sh test   install llmshrink with its test extras and run lint + tests
# Env: PYTHON (interpreter, default python3.11 or python3), VENV (default .venv),
#      TORCH_INDEX_URL (an index for the CPU build of torch, where the default index serves CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in demo|test|install) ;; *) echo "usage: bash scripts/setup.sh demo|test|install" >&2; exit 2;; esac

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "llmshrink needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)

# torch first, pinned: an open torch requirement pulls a multi-GB CUDA build.
"$py" -c 'import torch' 2>/dev/null || "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
if [ "$what" = demo ]; then "${pip[@]}" -e .; else "${pip[@]}" -e ".[test]"; fi

case "$what" in
  demo) exec "$VENV/bin/llmshrink" demo ;;
  test)
    "$py" -m ruff check src tests bench
    # Default run: everything not marked slow (unit, round trips, end-to-end on the default model).
    "$py" -m pytest -m "not slow" "${@:2}"
    ;;
esac
