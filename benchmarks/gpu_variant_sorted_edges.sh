#!/usr/bin/env bash
# Run 17d on the device machine (issue 5): the sorted GEMV with the layer's chunks cut evenly
# over the blocks (rows two blocks share are finished by the second) against the kernel of
# run 17b (.device/P/_cuda: `git archive 1768ae9 python/vptq_rs/_cuda`, whole rows per
# block), built through VPTQ_RS_CUDA_SRC. The chunk split was slower and was not kept: its
# sources are results/variant-run17d-sorted-chunk-split.patch against 1768ae9 (as run, but
# for the split arithmetic, since made 32-bit and timed in run 17e), which this script
# expects applied to the tree. In order: the whole GPU test sweep,
# benchmarks/gpu_sorted_grain.py for both kernels, memcheck over the sorted tests, the
# suite's copy, gemv and lut sections, an Nsight Compute profile of the sorted kernel.
# Writes $OUT/{log.txt, sanitizer-memcheck.txt, profile/sorted.txt,
# results/gpu-{copy,gemv,lut}.json, results/gpu-gemv-sorted-grain{,-rows}.json}.
#
#   bash benchmarks/gpu_variant_sorted_edges.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
# the suite's files are named for the card when it is not an H100 (gpu_run.sh's TAG)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=h200
TEST_T=200 bash benchmarks/gpu_run.sh tests > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
timeout 100 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --grains 2,4,8 \
  2>&1 | tee -a "$OUT/log.txt" | tail -12
if [ -d .device/P/_cuda ]; then
  export VPTQ_RS_CUDA_SRC=$PWD/.device/P/_cuda
  timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
  timeout 100 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --label rows \
    --grains 2,4,8 2>&1 | tee -a "$OUT/log.txt" | tail -12
  unset VPTQ_RS_CUDA_SRC
fi
SAN_K="sorted" SAN_T=100 bash benchmarks/gpu_run.sh sanitizer > /dev/null
SUITE_T=100 bash benchmarks/gpu_run.sh suite copy,gemv,lut > /dev/null
bash benchmarks/gpu_profile.sh sorted
grep -v "^\.\.\." "$OUT/log.txt" | grep "sorted\|passed\|failed\|===\|rror" \
  | grep -v "environment\|install" | tail -60
tail -3 "$OUT/sanitizer-memcheck.txt"
