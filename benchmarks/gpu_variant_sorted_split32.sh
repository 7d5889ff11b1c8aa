#!/usr/bin/env bash
# Run 17e on the device machine (issue 5): the sorted GEMV's two block splits in one build,
# after run 17d found the layer-wide chunk split slower than whole rows per block and its
# warps' setup 64-bit divisions the likely cause (now 32-bit). The sorted GPU tests, then
# benchmarks/gpu_sorted_grain.py on the two largest shapes at chunks of 4 groups:
# VPTQ_RS_SORTED_SPLIT=chunks, =rows (the default), and chunks again (order effects);
# memcheck over the sorted tests. Writes $OUT/{log.txt, sanitizer-memcheck.txt,
# results/gpu-gemv-sorted-grain-{chunks,rows,chunks_again}.json}.
#
#   bash benchmarks/gpu_variant_sorted_split32.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
TEST_K="sorted" TEST_T=100 bash benchmarks/gpu_run.sh tests > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
for run in chunks rows chunks_again; do
  split=${run%_again}
  VPTQ_RS_SORTED_SPLIT=$split timeout 60 python3 benchmarks/gpu_sorted_grain.py --quick \
    --grains 4 --out "$OUT/results" --label "$run" 2>&1 | tee -a "$OUT/log.txt" | tail -5
done
SAN_K="sorted" SAN_T=60 bash benchmarks/gpu_run.sh sanitizer > /dev/null
grep -v "^\.\.\." "$OUT/log.txt" | grep "sorted\|passed\|failed\|===\|rror" \
  | grep -v "environment\|install" | tail -30
tail -2 "$OUT/sanitizer-memcheck.txt"
