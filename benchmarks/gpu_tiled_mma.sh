#!/usr/bin/env bash
# Run 24a on the device machine (issue 5): the tensor-core tiled GEMV (gemv_tiled_mma.cuh,
# v = 8) against the scalar tiled kernel (gemv_tiled.cuh) in one build.
#
#   bash benchmarks/gpu_tiled_mma.sh ab      (run 24a; carry .device: the abi3 wheel)
#   bash benchmarks/gpu_tiled_mma.sh l2      (run 24b; needs variants/gemv-l2-prefetch.patch)
#   bash benchmarks/gpu_tiled_mma.sh threads (run 24c; needs variants/tiled-mma-512-threads.patch)
#   bash benchmarks/gpu_tiled_mma.sh suite   (the suite's copy, GEMV and LUT sections)
# The l2 and threads modes time variants that were not kept: apply their patch to the tree
# first (git apply), as runs 24b and 24c ran them.
#
# ab:
# 1. build, then the tiled, fake-op and prologue GPU tests (benchmarks/gpu_run.sh tests);
# 2. v8/k65536 on all five GEMV shapes (benchmarks/gpu_tiled_order.py): the scalar kernel
#    over dealt and column-ordered entries, then the mma form, against cuBLAS fp16 in the
#    same process (label run24a);
# 3. memcheck over the tiled tests.
# l2: the sorted and tiled kernels prefetching their entries into L2 ahead of their loads
# (VPTQ_RS_GEMV_L2_AHEAD; gemv_launch.cuh) against no prefetch, in one build:
# 1. build, then the sorted, tiled, fake-op and prologue GPU tests;
# 2. the tiled forms on all five shapes (gpu_tiled_order.py), L2_AHEAD=0 (label run24b_off)
#    then the default (run24b);
# 3. the sorted kernel (gpu_sorted_grain.py, chunks of 4 groups) on the two largest shapes,
#    v6/k4096 and v12/k4096+res4096, at L2_AHEAD 0, the default (8 groups), 4, 16 and 0
#    again (labels run24b_{off,on,a4,a16,off_again}).
# threads: the mma kernel on 1024 threads (the default) and on 512
# (VPTQ_RS_TILED_MMA_THREADS=512: twice the work a warp and phase, two accumulators, tile
# starts two phases ahead), in one build:
# 1. build, the tiled, fake-op and prologue GPU tests, then the tiled tests on 512 threads;
# 2. the tiled forms on all five shapes (gpu_tiled_order.py), labels run24c and run24c_t512.
# $OUT may hold 8 files: the results come back as one archive, results.tgz.
set -u
MODE=${1:-ab}
OUT=${OUT:-/tmp/vptq_out}
export OUT
mkdir -p "$OUT/results"
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0
if [ "$MODE" = ab ]; then
  TEST_K=${TEST_K-tiled or fake or prologue} bash benchmarks/gpu_run.sh tests
  echo "=== tiled forms ($(date +%T))" | tee -a "$OUT/log.txt"
  timeout 200 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" \
    --label "${LABEL:-run24a}" 2>&1 | tee -a "$OUT/log.txt" | tail -8
  SAN_K="tiled" SAN_T=${SAN_T:-180} bash benchmarks/gpu_run.sh sanitizer
elif [ "$MODE" = l2 ]; then
  TEST_K=${TEST_K-sorted or tiled or fake or prologue} bash benchmarks/gpu_run.sh tests
  forms() {  # $1: label, $2: VPTQ_RS_GEMV_L2_AHEAD (empty: the default)
    echo "=== tiled forms: $1 ($(date +%T))" | tee -a "$OUT/log.txt"
    VPTQ_RS_GEMV_L2_AHEAD=$2 timeout 150 python3 benchmarks/gpu_tiled_order.py \
      --out "$OUT/results" --label "$1" 2>&1 | tee -a "$OUT/log.txt" | tail -6
  }
  sorted() {
    echo "=== sorted: $1 ($(date +%T))" | tee -a "$OUT/log.txt"
    VPTQ_RS_GEMV_L2_AHEAD=$2 timeout 100 python3 benchmarks/gpu_sorted_grain.py \
      --out "$OUT/results" --label "$1" --grains 4 --quick 2>&1 | tee -a "$OUT/log.txt" | tail -5
  }
  forms run24b_off 0
  forms run24b ""
  sorted run24b_off 0
  sorted run24b_on ""
  sorted run24b_a4 4
  sorted run24b_a16 16
  sorted run24b_off_again 0
elif [ "$MODE" = threads ]; then
  TEST_K=${TEST_K-tiled or fake or prologue} bash benchmarks/gpu_run.sh tests
  echo "=== tiled tests on 512 threads ($(date +%T))" | tee -a "$OUT/log.txt"
  VPTQ_RS_TILED_MMA_THREADS=512 timeout 100 python3 -m pytest -q -p no:cacheprovider \
    tests/test_cuda_kernels.py -k tiled 2>&1 | tail -5 | tee -a "$OUT/log.txt"
  for t in 1024 512; do
    label=run24c$([ $t = 512 ] && echo _t512)
    echo "=== tiled forms: $label ($(date +%T))" | tee -a "$OUT/log.txt"
    VPTQ_RS_TILED_MMA_THREADS=$t timeout 150 python3 benchmarks/gpu_tiled_order.py \
      --out "$OUT/results" --label "$label" 2>&1 | tee -a "$OUT/log.txt" | tail -6
  done
else
  nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=${TAG:-h200}
  SUITE_T=${SUITE_T:-300} bash benchmarks/gpu_run.sh suite "${SECTIONS:-copy,gemv,lut}"
fi
tar -czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
