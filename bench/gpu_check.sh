#!/usr/bin/env bash
# issue 8 on one GPU, in one short run: CUDA tests, the side-by-side benchmark (bf16 autocast + SDPA,
# B=32, 10/100/1000 classes, ImageNet-size peak memory, × floor) and a scaled Table 1 sweep through the
# real CLI. Each part has its own time limit (seconds, overridable). Results land in $OUT (./gpu_out).
#   bash bench/gpu_check.sh            # PY=/path/to/python to use another interpreter
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu_out}
T_TEST=${T_TEST:-90} T_BENCH=${T_BENCH:-210} T_SWEEP=${T_SWEEP:-150}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1
"$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" >> "$OUT/device.txt" 2>&1
timeout "$T_TEST" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/test_gpu.txt" 2>&1
echo "test_gpu exit $?" >> "$OUT/test_gpu.txt"
timeout "$T_BENCH" "$PY" bench/run_all.py --device cuda --out "$OUT/bench_gpu.md" > "$OUT/bench_gpu.log" 2>&1
echo "run_all exit $?" >> "$OUT/bench_gpu.log"
timeout "$T_SWEEP" "$PY" bench/sweep.py --device cuda --scale 0.05 --seeds 1 --jobs 4 --out "$OUT/sweep_gpu.md" \
  > "$OUT/sweep_gpu.log" 2>&1
echo "sweep exit $?" >> "$OUT/sweep_gpu.log"
tail -n 25 "$OUT/test_gpu.txt" "$OUT/bench_gpu.md" "$OUT/sweep_gpu.md" 2>/dev/null
