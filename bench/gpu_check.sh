#!/usr/bin/env bash
# The GPU checks of issue 12 §4 as one short script for a lent GPU machine (the `device` tool):
#   CPU vs GPU equality (tests/gpu), `mine` on the GPU in bf16, and the per-stage cost ratios of
#   randomly initialised models of real shapes (bench/bench_scale.py). Writes into ${OUT:-gpu-out}.
# The machine has python3 and a CUDA torch but no network: carry headmine's missing wheels (.whl,
# see the device README) and run from the repo root:  bash bench/gpu_check.sh
set -uo pipefail
OUT="${OUT:-gpu-out}"; mkdir -p "$OUT"
export PYTHONPATH="src:.:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/gpu -q -ra -p no:cacheprovider 2>&1 | tee "$OUT/tests_gpu.log"
for shape in smollm2-135m llama3-8b qwen2.5-7b; do
  layers=0; [ "$shape" = smollm2-135m ] || layers=4
  python3 bench/bench_scale.py --shape "$shape" --device cuda --dtype bfloat16 --batch 8 --tokens 512 \
    --sweep-layers "$layers" --out "$OUT/scale.jsonl" 2>&1 | tail -3
done
python3 bench/bench_scale.py --shape smollm2-135m --device cuda --dtype float32 --batch 8 --tokens 64 --out "$OUT/scale.jsonl"
python3 bench/bench_scale.py --shape smollm2-135m --device cpu --dtype float32 --batch 8 --tokens 64 --sweep-layers 3 --out "$OUT/scale.jsonl"
( time python3 -m headmine mine toy-induction --device cuda --dtype bfloat16 --atlas "$OUT/toy.db" --no-report ) 2>&1 | tail -12 | tee "$OUT/mine_toy.log"
