#!/usr/bin/env bash
# Run 19a on the device machine (issue 5; written in session 18, which got no machine): the
# tiled GEMV whose warps take equal fractions of the block's rows (gemv_tiled.cuh as
# committed) and the sorted GEMV whose new-code flags take one LOP3 a step and whose v9-v12
# run 1024 threads, against the kernels before
# them (.device/X/_cuda: `git archive 66274a3 python/vptq_rs/_cuda`, whose tiled warps took
# whole (row, split) items), built through VPTQ_RS_CUDA_SRC. New, then old, in one call, on
# the two largest shapes. In order (what matters most first, for a call cut short): the
# tiled, sorted and fake-op GPU tests, the new kernels' timings, the suite's copy, gemv and
# lut sections, the old kernels' timings.
# Writes $OUT/{log.txt, results/gpu-gemv-tiled-order-{pieces,items}.json,
# results/gpu-gemv-sorted-grain-{new,old}.json, results/gpu-{copy,gemv,lut}.json}: the eight
# files a device call returns.
#
#   bash benchmarks/gpu_variant_tiled_pieces.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
# the suite's files are named for the card when it is not an H100 (gpu_run.sh's TAG)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=h200
TEST_K="tiled or sorted or fake" TEST_T=150 bash benchmarks/gpu_run.sh tests > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
both() {  # $1: tiled label, $2: sorted label
  timeout 90 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" --label "$1" --quick \
    2>&1 | tee -a "$OUT/log.txt" | tail -3
  timeout 90 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --label "$2" --quick \
    --grains 4 --configs v6_k4096,v12_k4096_r4096 2>&1 | tee -a "$OUT/log.txt" | tail -5
}
both pieces new
SUITE_T=120 bash benchmarks/gpu_run.sh suite copy,gemv,lut > /dev/null
if [ -d .device/X/_cuda ]; then
  export VPTQ_RS_CUDA_SRC=$PWD/.device/X/_cuda
  timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
  both items old
  unset VPTQ_RS_CUDA_SRC
fi
grep -v "^\.\.\." "$OUT/log.txt" | grep "gemv\|tiled\|sorted\|passed\|failed\|===\|rror" \
  | grep -v "environment\|install" | tail -60
