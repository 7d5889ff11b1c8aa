#!/usr/bin/env bash
# Bf16 timings on the device machine (issue 5; first run in run 27a, through
# benchmarks/gpu_tiled_cluster.sh BF16=1: results/gpu-gemv-*-run27a_bf16.json): the sorted
# and tiled GEMVs with bf16 activations, codebooks and norms, against cuBLAS bf16 in the same
# process (the other timings are fp16): benchmarks/gpu_sorted_grain.py (v6/k4096 and
# v12/k4096+res4096, chunks of 4 groups) and benchmarks/gpu_tiled_order.py (v8/k65536) on
# the two largest shapes, --dtype bf16.
#
#   LABEL=run27a_bf16 bash benchmarks/gpu_bf16.sh      (carry .device/wheels)
# (VPTQ_RS_CUDA_SRC=<a copy of HEAD's _cuda> times HEAD's kernels beside a patched tree.)
# Writes $OUT/log.txt and $OUT/results/gpu-gemv-{sorted-grain,tiled-order}-<LABEL>.json.
set -u
OUT=${OUT:-/tmp/vptq_out}
LABEL=${LABEL:-bf16}
source benchmarks/device_setup.sh
timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$LOG"
timeout 90 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --label "$LABEL" \
  --grains 4 --quick --dtype bf16 2>&1 | tee -a "$LOG" | tail -5
timeout 90 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" --label "$LABEL" \
  --quick --dtype bf16 2>&1 | tee -a "$LOG" | tail -3
