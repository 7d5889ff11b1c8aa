#!/usr/bin/env bash
# Runs 23a and 23b on the device machine (issue 5): the one-token kernels (sorted, tiled)
# computing the permuted, scaled activations themselves (stage_xs in gemv_sorted.cuh) against
# the prologue kernel they ran before, in one build: VPTQ_RS_GEMV_PROLOGUE=fused or =kernel
# forces either path at launch, and by default a layer takes the fused path up to 8192
# columns (kFusedMaxCols in gemv_launch.cuh, from runs 23a and 23b; run 23b's tree fused any
# layer without a perm, the same choice as the committed rule for its layers with one).
#
#   bash benchmarks/gpu_fused_prologue.sh ab     (run 23a; carry .device: the abi3 wheel)
#   bash benchmarks/gpu_fused_prologue.sh rule   (run 23b)
#
# ab:
# 1. build, then the sorted, tiled, fake-op and prologue GPU tests (benchmarks/gpu_run.sh
#    tests; TEST_K= for all of them);
# 2. memcheck over the sorted, tiled and prologue tests;
# 3. the sorted GEMV (v6/k4096, v12/k4096+res4096; benchmarks/gpu_sorted_grain.py, chunks of
#    4 groups) and the tiled GEMV (v8/k65536; benchmarks/gpu_tiled_order.py) on all five
#    GEMV shapes, layers with a perm, against cuBLAS fp16 in the same process, in the order
#    fused, kernel, fused (labels fused, kernel, fused_again).
# rule:
# 1. as ab's first step;
# 2. the same timings with the default choice (label auto), then on layers without a perm
#    (--no-perm) fused and kernel (labels noperm_fused, noperm_kernel);
# 3. the suite's copy, GEMV, LUT and end-to-end sections on this tree (gpu_run.sh suite).
# $OUT may hold 8 files: the results come back as one archive, results.tgz.
set -u
MODE=${1:-ab}
OUT=${OUT:-/tmp/vptq_out}
export OUT
mkdir -p "$OUT/results"
TEST_K=${TEST_K-sorted or tiled or fake or prologue} bash benchmarks/gpu_run.sh tests
[ "$MODE" = ab ] &&
  SAN_K="sorted or tiled or prologue" SAN_T=${SAN_T:-200} bash benchmarks/gpu_run.sh sanitizer
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0
timed() {  # $1: label, $2: VPTQ_RS_GEMV_PROLOGUE (empty: the default), $3: extra options
  if [ -n "$2" ]; then export VPTQ_RS_GEMV_PROLOGUE=$2; else unset VPTQ_RS_GEMV_PROLOGUE; fi
  echo "=== prologue: $1 ($(date +%T))" | tee -a "$OUT/log.txt"
  timeout 150 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --label "$1" \
    --grains 4 $3 2>&1 | tee -a "$OUT/log.txt" | tail -12
  timeout 150 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" --label "$1" $3 \
    2>&1 | tee -a "$OUT/log.txt" | tail -6
  unset VPTQ_RS_GEMV_PROLOGUE
}
if [ "$MODE" = ab ]; then
  timed fused fused ""
  timed kernel kernel ""
  timed fused_again fused ""
else
  timed auto "" ""
  timed noperm_fused fused --no-perm
  timed noperm_kernel kernel --no-perm
  # an H200's suite files are gpu-<section>-h200.json, beside the H100's
  nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=${TAG:-h200}
  SUITE_T=${SUITE_T:-300} bash benchmarks/gpu_run.sh suite copy,gemv,lut,e2e
fi
tar -czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
