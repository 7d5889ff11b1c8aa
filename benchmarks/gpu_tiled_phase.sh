#!/usr/bin/env bash
# Runs 25a, 25e and 26a on the device machine (issue 5): a tiled GEMV change (the tree's
# kernels) against the kernels before it (OLD_SRC), in one call.
# - Run 25a (LABEL=run25a): one barrier a phase (and, in the scalar kernel, 32-bit tile
#   sizes and full batches without a check per load) against 60ee4d0. Run 25a's tree gave
#   the mma kernel the one barrier too; it was slower on 8192x28672 there, so the committed
#   mma kernel keeps two and its "new" columns in run 25a's files are not the committed
#   kernel's.
# - Run 25e (LABEL=run25e): the scalar kernel prefetching each next phase's second and
#   third batches into L2 against d5b5902.
# - Run 26a (LABEL=run26a): benchmarks/variants/tiled-stage-second-batch.patch applied
#   against cca0272 (not kept: the patch's header has the numbers).
#
#   git archive <old commit> python/vptq_rs/_cuda | tar -x -C /tmp && mv /tmp/python/vptq_rs/_cuda .device/old_cuda
#   LABEL=run25e bash benchmarks/gpu_tiled_phase.sh      (carry .device/wheels and .device/old_cuda)
#
# 1. install the wheel; build the tree's kernels and, at the same time, the kernels before
#    (through VPTQ_RS_CUDA_SRC); then the tree's tiled GPU tests (TEST_K; run 25a also ran
#    the fake-op and prologue tests, through benchmarks/gpu_run.sh tests);
# 2. v8/k65536 on the two largest shapes (benchmarks/gpu_tiled_order.py --quick: the scalar
#    kernel over dealt and column-ordered entries, and the mma form), each against cuBLAS
#    fp16 in the same process, in the order new, old, new (labels <LABEL>_new, <LABEL>_old,
#    <LABEL>_new_again), so drift shows.
# $OUT may hold 8 files: the results come back as one archive, results.tgz.
set -u
OUT=${OUT:-/tmp/vptq_out}
export OUT
OLD_SRC=${OLD_SRC:-$PWD/.device/old_cuda}
LABEL=${LABEL:-run25a}
source benchmarks/device_setup.sh
echo "=== build both ($(date +%T))" | tee -a "$LOG"
VPTQ_RS_CUDA_SRC=$OLD_SRC timeout 300 python3 -m vptq_rs.cuda_ext > "$OUT/old_build.txt" 2>&1 &
timeout 300 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$LOG"
wait
tail -1 "$OUT/old_build.txt" | tee -a "$LOG"; rm -f "$OUT/old_build.txt"
echo "=== tiled tests ($(date +%T))" | tee -a "$LOG"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_ext.py \
  -k "${TEST_K:-tiled}" 2>&1 | tail -3 | tee -a "$LOG"
timed() {  # $1: label suffix, $2: kernel sources
  echo "=== tiled forms: ${LABEL}_$1 ($(date +%T))" | tee -a "$OUT/log.txt"
  VPTQ_RS_CUDA_SRC=$2 timeout 120 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" \
    --label "${LABEL}_$1" --quick 2>&1 | tee -a "$OUT/log.txt" | tail -3
}
timed new "$PWD/python/vptq_rs/_cuda"
timed old "$OLD_SRC"
timed new_again "$PWD/python/vptq_rs/_cuda"
tar -czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
