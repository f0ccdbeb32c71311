#!/usr/bin/env bash
# The GPU figures of docs/performance.md, in one run of under 8 minutes on a machine with CUDA:
#
#   OUT=gpu-results bash benchmarks/gpu.sh
#
# 1. the CUDA tests (tests/test_cuda.py: every model on the GPU against the CPU, and a run with
#    every edit method on the GPU);
# 2. benchmarks/pipeline.py on the GPU, every scorer on, for the DCGAN demo profile and for
#    random StyleGAN2 generators (config-f channels, written by save_generator) at 256 and
#    1024 px; a random network costs what a trained one does, though its faces are not faces;
#    and the 1024 px one again with the classifiers in float16 (scoring.precision; bfloat16 with
#    DEVICE=cpu);
# 3. benchmarks/stylegan.py on the GPU: render rates of StyleGAN2 and StyleGAN3 by resolution
#    and batch size.
#
# Installs nothing beyond the project (`make install` unless PYTHON names an interpreter that
# already has it). Writes into $OUT: device.txt, cuda-tests.log, dcgan.json, stylegan2-256.json,
# stylegan2-1024.json, stylegan2-1024-reduced.json (one benchmarks/pipeline.py --json object each)
# and stylegan.jsonl.
# DEVICE=cpu and SCALE=N (N times fewer faces) check the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-1}
if [ -z "${PYTHON:-}" ]; then
    make install >/dev/null
    PYTHON=.venv/bin/python
fi
mkdir -p "$OUT"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export EXPRLOCK_HOME=${EXPRLOCK_HOME:-$PWD/.exprlock} PREFECT_HOME=$scratch/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED=false PYTHONUNBUFFERED=1

if [ "$DEVICE" = cuda ]; then
    "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "benchmarks/gpu.sh: torch sees no CUDA device; run it where it does, or set DEVICE=cpu to check the script")'
    "$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")' | tee "$OUT/device.txt"
    timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.log"
else
    echo "device $DEVICE: CUDA tests not run" | tee "$OUT/device.txt"
fi

# The pipeline benchmark: a config per generator, and faces enough for a few seconds of GPU work.
cat >"$scratch/dcgan.yaml" <<EOF
profile: demo
sources: {count: $((2048 / SCALE)), shard_size: $((512 / SCALE))}
batch_size: 128
EOF
for resolution in 256 1024; do
    "$PYTHON" - "$resolution" "$scratch/stylegan2-$resolution.safetensors" <<'EOF'
import sys

import torch

from pipeline.generators.checkpoints import save_generator
from pipeline.generators.stylegan2 import StyleGAN2Config, StyleGAN2Generator, channels_nvidia

resolution, path = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
save_generator(StyleGAN2Generator(StyleGAN2Config(resolution=resolution, channels=channels_nvidia(resolution))), path)
EOF
    faces=$((resolution == 256 ? 512 / SCALE : 256 / SCALE))
    cat >"$scratch/stylegan2-$resolution.yaml" <<EOF
profile: demo
generator: {kind: stylegan2, checkpoint: $scratch/stylegan2-$resolution.safetensors}
sources: {count: $faces, shard_size: $faces}
batch_size: $((resolution == 256 ? 64 : 16))
EOF
done
for name in dcgan stylegan2-256 stylegan2-1024; do
    timeout 150 "$PYTHON" benchmarks/pipeline.py --config "$scratch/$name.yaml" --device "$DEVICE" --json | tail -n 1 >"$OUT/$name.json"
    cat "$OUT/$name.json"
done
reduced=$([ "$DEVICE" = cuda ] && echo float16 || echo bfloat16)  # float16 runs only on CUDA
timeout 150 "$PYTHON" benchmarks/pipeline.py --config "$scratch/stylegan2-1024.yaml" --device "$DEVICE" --precision "$reduced" \
    --json | tail -n 1 >"$OUT/stylegan2-1024-reduced.json"
cat "$OUT/stylegan2-1024-reduced.json"

# StyleGAN render rates; the rows this run appends to benchmarks/results.jsonl.
before=$( (cat benchmarks/results.jsonl 2>/dev/null || true) | wc -l)
timeout 120 "$PYTHON" benchmarks/stylegan.py --device "$DEVICE" --batch-sizes 1 8 32 \
    $([ "$DEVICE" = cpu ] && echo "--resolutions 256 --batch-sizes 1 --repeats 1")
tail -n +"$((before + 1))" benchmarks/results.jsonl >"$OUT/stylegan.jsonl"
