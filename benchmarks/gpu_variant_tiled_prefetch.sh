#!/usr/bin/env bash
# Run 16a on the device machine (issue 5): the tiled GEMV as committed (each warp loads its
# items' runs and first batches a phase ahead, counts phases without divisions, and sums
# two batches a turn) against two copies of the sources built through VPTQ_RS_CUDA_SRC:
# .device/Y/_cuda (the same without the two-batch turn) and .device/X/_cuda (the kernel
# before these changes: `git archive fe24eee python/vptq_rs/_cuda`), each over both entry
# orders of tiled_layout.build (dealt by bank key, column order). In order: the tiled GPU
# tests, benchmarks/gpu_tiled_order.py for each kernel (a missing copy is skipped), memcheck
# over the tiled tests, the suite's copy and gemv sections, an Nsight Compute profile of the
# committed kernel. Writes $OUT/{log.txt, sanitizer-memcheck.txt, profile/tiled.txt,
# results/gpu-{copy,gemv}.json, results/gpu-gemv-tiled-order-{turn,prefetch,phase}.json}.
# Run 16a carried no Y copy (the session's device time was short), so it timed turn and
# phase only.
#
#   bash benchmarks/gpu_variant_tiled_prefetch.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
# the suite's files are named for the card when it is not an H100 (gpu_run.sh's TAG)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=h200
TEST_K="tiled or fake" TEST_T=150 bash benchmarks/gpu_run.sh tests > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
timeout 120 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" --label turn \
  2>&1 | tee -a "$OUT/log.txt" | tail -6
for v in Y:prefetch X:phase; do
  [ -d ".device/${v%%:*}/_cuda" ] || continue
  export VPTQ_RS_CUDA_SRC=$PWD/.device/${v%%:*}/_cuda
  timeout 240 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
  timeout 120 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" --label "${v#*:}" \
    2>&1 | tee -a "$OUT/log.txt" | tail -6
  unset VPTQ_RS_CUDA_SRC
done
SAN_K="tiled" SAN_T=120 bash benchmarks/gpu_run.sh sanitizer > /dev/null
SUITE_T=120 bash benchmarks/gpu_run.sh suite copy,gemv > /dev/null
bash benchmarks/gpu_profile.sh tiled
grep -v "^\.\.\." "$OUT/log.txt" | grep "gemv\|tiled\|passed\|failed\|===\|rror" | grep -v "environment\|install" | tail -50
tail -3 "$OUT/sanitizer-memcheck.txt"
