#!/usr/bin/env bash
# Run 25f on the device machine (issue 5; written in session 25, not run yet: no device
# time was left): the sorted and tiled GEMVs with bf16 activations, codebooks and norms,
# against cuBLAS bf16 in the same process (the other timings are fp16):
# benchmarks/gpu_sorted_grain.py (v6/k4096 and v12/k4096+res4096, chunks of 4 groups) and
# benchmarks/gpu_tiled_order.py (v8/k65536) on the two largest shapes, --dtype bf16.
#
#   bash benchmarks/gpu_bf16.sh      (carry .device/wheels)
# Writes $OUT/log.txt and $OUT/results/gpu-gemv-{sorted-grain,tiled-order}-run25f_bf16.json.
set -u
OUT=${OUT:-/tmp/vptq_out}
source benchmarks/device_setup.sh
timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$LOG"
timeout 90 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --label run25f_bf16 \
  --grains 4 --quick --dtype bf16 2>&1 | tee -a "$LOG" | tail -5
timeout 90 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" --label run25f_bf16 \
  --quick --dtype bf16 2>&1 | tee -a "$LOG" | tail -3
