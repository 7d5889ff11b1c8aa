#!/usr/bin/env bash
# Run 25a on the device machine (issue 5): the tiled GEMV kernels with one barrier a phase
# (and, in the scalar kernel, 32-bit tile sizes and full batches without a check per load)
# against the kernels before, in one call. Run 25a's tree gave the mma kernel the one
# barrier too; it was slower on 8192x28672 there, so the committed mma kernel keeps two and
# its "new" columns in run 25a's files are not the committed kernel's.
#
#   git archive 60ee4d0 python/vptq_rs/_cuda | tar -x -C /tmp && mv /tmp/python/vptq_rs/_cuda .device/old_cuda
#   bash benchmarks/gpu_tiled_phase.sh      (carry .device/wheels and .device/old_cuda)
#
# 1. build the tree's kernels, then the tiled, fake-op and prologue GPU tests;
# 2. build the kernels before (OLD_SRC, through VPTQ_RS_CUDA_SRC);
# 3. v8/k65536 on the two largest shapes (benchmarks/gpu_tiled_order.py --quick: the scalar
#    kernel over dealt and column-ordered entries, and the mma form), each against cuBLAS
#    fp16 in the same process, in the order new, old, new (labels run25a_new, run25a_old,
#    run25a_new_again), so drift shows.
# $OUT may hold 8 files: the results come back as one archive, results.tgz.
set -u
OUT=${OUT:-/tmp/vptq_out}
export OUT
OLD_SRC=${OLD_SRC:-$PWD/.device/old_cuda}
LABEL=${LABEL:-run25a}
mkdir -p "$OUT/results"
TEST_K=${TEST_K-tiled or fake or prologue} bash benchmarks/gpu_run.sh tests
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
echo "=== build the kernels before ($(date +%T))" | tee -a "$OUT/log.txt"
VPTQ_RS_CUDA_SRC=$OLD_SRC timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$OUT/log.txt"
timed() {  # $1: label suffix, $2: kernel sources
  echo "=== tiled forms: ${LABEL}_$1 ($(date +%T))" | tee -a "$OUT/log.txt"
  VPTQ_RS_CUDA_SRC=$2 timeout 120 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" \
    --label "${LABEL}_$1" --quick 2>&1 | tee -a "$OUT/log.txt" | tail -3
}
timed new "$PWD/python/vptq_rs/_cuda"
timed old "$OLD_SRC"
timed new_again "$PWD/python/vptq_rs/_cuda"
tar -czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
