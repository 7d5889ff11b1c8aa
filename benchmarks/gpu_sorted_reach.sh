#!/usr/bin/env bash
# Run 22c on the device machine (issue 5): the sorted GEMV's two reaches in one build.
# The fixed reach (2^15 floats past xs, 128 KB of shared memory at least) runs wherever it
# fits; the group reach masks the columns to the group's own power of two instead, for GPUs
# that give a block less (99 KB on the RTX 30 and 40 series). VPTQ_RS_SORTED_REACH=group
# forces it, so an H100 can test and time both:
# 1. build, then the sorted and fake-op GPU tests (benchmarks/gpu_run.sh tests; TEST_K= for
#    all of them: run 22a ran all on this kernel with the bf16 change, the masks and padding);
# 2. memcheck over the sorted tests (the group reach's garbage layout among them);
# 3. the two largest shapes timed with each reach against cuBLAS fp16, in the order fixed,
#    group, fixed (benchmarks/gpu_sorted_grain.py);
# 4. ncu on the fixed reach: stall reasons and shared-memory wavefronts
#    (benchmarks/gpu_profile_sorted_trees.sh, reusing the build).
#
#   bash benchmarks/gpu_sorted_reach.sh   (carry .device: the abi3 wheel in .device/wheels)
# Writes $OUT/{log.txt, sanitizer-memcheck.txt, profile-fixed.txt,
# results/gpu-gemv-sorted-grain-{fixed,group,fixed_again}.json}.
set -u
OUT=${OUT:-/tmp/vptq_out}
export OUT
TEST_K=${TEST_K-sorted or fake} bash benchmarks/gpu_run.sh tests
SAN_K=sorted SAN_T=150 bash benchmarks/gpu_run.sh sanitizer
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0
for label in fixed group fixed_again; do
  echo "=== reach: $label ($(date +%T))" | tee -a "$OUT/log.txt"
  VPTQ_RS_SORTED_REACH=${label%_again} timeout 120 python3 benchmarks/gpu_sorted_grain.py \
    --out "$OUT/results" --label "$label" --grains 4 --quick 2>&1 | tee -a "$OUT/log.txt" | tail -5
done
ln -sfn /tmp/vptq_cache /tmp/vptq_cache_fixed  # the same tree and path: no second build
TREES="fixed=." bash benchmarks/gpu_profile_sorted_trees.sh
