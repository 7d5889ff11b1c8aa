#!/usr/bin/env bash
# Run 17e on the device machine (issue 5): the sorted GEMV's chunk split with 32-bit split
# arithmetic, in one build. Expects .device/E/_cuda = python/vptq_rs/_cuda of 1768ae9 with
# results/variant-run17d-sorted-chunk-split.patch applied (or `git archive 32034bb
# python/vptq_rs/_cuda`) and .device/E/test_split_cuda_kernels.py = that commit's
# tests/test_cuda_kernels.py. Builds it through VPTQ_RS_CUDA_SRC, runs its sorted tests
# (both splits), then benchmarks/gpu_sorted_grain.py on the two largest shapes at chunks of
# 4 groups with VPTQ_RS_SORTED_SPLIT=chunks, =rows (whole rows per block, the kept
# kernel's split) and chunks again (order effects). Writes $OUT/{log.txt,
# results/gpu-gemv-sorted-grain-split_{chunks,rows,chunks_again}.json}.
#
#   bash benchmarks/gpu_variant_sorted_chunk_split.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
export VPTQ_RS_CUDA_SRC=$PWD/.device/E/_cuda
cp .device/E/test_split_cuda_kernels.py tests/test_split_cuda_kernels.py
# this copy of the tree only: gpu_run.sh runs the variant's tests
sed -i 's#tests/test_cuda_kernels.py tests/test_cuda_ext.py#tests/test_split_cuda_kernels.py#' benchmarks/gpu_run.sh
TEST_K="sorted" TEST_T=150 bash benchmarks/gpu_run.sh tests > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
for run in chunks rows chunks_again; do
  VPTQ_RS_SORTED_SPLIT=${run%_again} timeout 60 python3 benchmarks/gpu_sorted_grain.py --quick \
    --grains 4 --out "$OUT/results" --label "split_$run" 2>&1 | tee -a "$OUT/log.txt" | tail -5
done
grep -v "^\.\.\." "$OUT/log.txt" | grep "sorted\|passed\|failed\|===\|rror" \
  | grep -v "environment\|install" | tail -30
