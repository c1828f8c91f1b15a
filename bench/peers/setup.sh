#!/usr/bin/env bash
# Build the peers' virtual environment, separate from llmshrink's own:
#   bash bench/peers/setup.sh            -> bench/peers/.venv with GPTQModel (CPU), AutoRound, optimum and llmshrink
# GPTQModel 7.6.0 is the newest release that accepts torch 2.13.0; torch is pinned with a
# constraints file so pip never swaps in a CUDA build. AutoGPTQ 0.7.1 refuses to quantize
# without CUDA, so it is not installed on CPU-only machines.
# Env: PYTHON (default python3.11), PEER_VENV (default bench/peers/.venv), TORCH_INDEX_URL.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${PEER_VENV:-bench/peers/.venv}
. bench/peers/venv.sh
# No CUDA toolkit here: GPTQModel's setup builds no extension when BUILD_CUDA_EXT=0.
BUILD_CUDA_EXT=0 "${pip[@]}" --no-build-isolation gptqmodel==7.6.0 || BUILD_CUDA_EXT=0 "${pip[@]}" gptqmodel==7.6.0
# transformers loads GPTQ checkpoints through optimum's GPTQ quantizer and gptqmodel's kernels.
"${pip[@]}" optimum
# Intel AutoRound (bench/peers/autoround_gptq.py, autoround_gguf.py)
"${pip[@]}" auto-round==0.16.1
"${pip[@]}" -e .
"$py" -c 'import gptqmodel, torch; import auto_round; print("gptqmodel", gptqmodel.__version__, "auto-round", auto_round.__version__, "torch", torch.__version__)'
