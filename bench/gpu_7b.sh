#!/usr/bin/env bash
# GPU checks of issue 24, as one short script for a lent GPU machine (never a test dependency):
# a CUDA smoke test (quantize -> pack -> load -> generate on a tiny model), then the 7B-shaped
# model quantized on the GPU (time, peak GPU memory) and batch-1 decode of fp16 vs the 4-bit
# checkpoint (ms/token, GB/s), one after the other on the same GPU.
#   bash bench/gpu_7b.sh OUT_DIR [LAYERS]      (LAYERS: blocks of the 7B shape, default 32)
set -euo pipefail
out=${1:?usage: bash bench/gpu_7b.sh OUT_DIR [LAYERS]}
layers=${2:-32}
py=${PY:-.venv/bin/python}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.csv"
$py -m pytest -q tests/test_cuda.py 2>&1 | tail -3 | tee "$out/cuda_smoke.txt"
[ -d "$out/model" ] || $py bench/big_model.py --out "$out/model" --layers "$layers"
$py bench/big_quantize.py --json "$out/quantize.json" -- quantize "$out/model" --out "$out/q4" --bits 4 \
    --group-size 128 --nsamples 128 --seqlen 512 --device cuda --dtype float16
for m in model q4; do
  $py -m llmshrink -q bench "$out/$m" --device cuda --dtype float16 --new-tokens 64 --json > "$out/bench-$m.json"
done
cat "$out/quantize.json" "$out"/bench-*.json
