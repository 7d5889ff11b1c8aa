#!/usr/bin/env bash
# Run 25c on the device machine (issue 5): the sorted GEMV staging its codebook with whole
# 16-byte copies (stage_copy16) against stage_copy's per-item branches (the kernel before),
# in one call. The change was not kept: apply benchmarks/variants/sorted-stage-copy16.patch
# to the tree first (git apply), as run 25c ran it.
#
#   git archive d5b5902 python/vptq_rs/_cuda | tar -x -C /tmp && mv /tmp/python/vptq_rs/_cuda .device/old_cuda
#   bash benchmarks/gpu_sorted_stage.sh      (carry .device/wheels and .device/old_cuda)
#
# 1. build the tree's kernels, then the sorted, fake-op and prologue GPU tests;
# 2. build the kernels before (OLD_SRC, through VPTQ_RS_CUDA_SRC);
# 3. v6/k4096 and v12/k4096+res4096 on the two largest shapes at chunks of 4 groups
#    (benchmarks/gpu_sorted_grain.py --quick), each against cuBLAS fp16 in the same process,
#    in the order new, old, new (labels run25c_new, run25c_old, run25c_new_again).
# $OUT may hold 8 files: the results come back as one archive, results.tgz.
set -u
OUT=${OUT:-/tmp/vptq_out}
export OUT
OLD_SRC=${OLD_SRC:-$PWD/.device/old_cuda}
LABEL=${LABEL:-run25c}
mkdir -p "$OUT/results"
TEST_K=${TEST_K-sorted or fake or prologue} bash benchmarks/gpu_run.sh tests
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
echo "=== build the kernels before ($(date +%T))" | tee -a "$OUT/log.txt"
VPTQ_RS_CUDA_SRC=$OLD_SRC timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$OUT/log.txt"
timed() {  # $1: label suffix, $2: kernel sources
  echo "=== sorted: ${LABEL}_$1 ($(date +%T))" | tee -a "$OUT/log.txt"
  VPTQ_RS_CUDA_SRC=$2 timeout 120 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" \
    --label "${LABEL}_$1" --grains 4 --quick 2>&1 | tee -a "$OUT/log.txt" | tail -5
}
timed new "$PWD/python/vptq_rs/_cuda"
timed old "$OLD_SRC"
timed new_again "$PWD/python/vptq_rs/_cuda"
tar -czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
