# Sourced by the peers' setup scripts (cwd: the repository root; VENV set): make the virtual
# environment VENV with torch 2.13.0 (the CPU build llmshrink uses), and define
#   py   the environment's python
#   pip  an install command whose constraints file pins torch, so pip never swaps in a CUDA build
# Env: PYTHON (default python3.11), TORCH_INDEX_URL.
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
pip=("$py" -m pip install --quiet --disable-pip-version-check -c "$constraints")
"$py" -c 'import torch' 2>/dev/null || "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
