#!/usr/bin/env bash
# Run 17a on the device machine (issue 5): the sorted GEMV with one even range of chunks per
# warp (gemv_sorted.cuh as committed) against the kernel before it (.device/S/_cuda: `git
# archive 56f7829 python/vptq_rs/_cuda`, whose warps took (row, chunk) items round-robin),
# built through VPTQ_RS_CUDA_SRC and handed the layout in its [R, lists, L] order.
#
#   bash benchmarks/gpu_variant_sorted_split.sh 1   # tests, chunk grains, the old kernel, memcheck
#   bash benchmarks/gpu_variant_sorted_split.sh 2   # the suite's copy, gemv and lut sections, ncu
#
# Part 1 writes $OUT/{log.txt, sanitizer-memcheck.txt,
# results/gpu-gemv-sorted-grain{,-items}.json}; part 2 writes $OUT/{log.txt, profile/sorted.txt,
# results/gpu-{copy,gemv,lut}.json}. A device call is limited to 10 minutes, hence two parts.
set -u
OUT=${OUT:-/tmp/vptq_out}
# the suite's files are named for the card when it is not an H100 (gpu_run.sh's TAG)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=h200
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
case "${1:-}" in
1)
  TEST_K="sorted or fake" TEST_T=150 bash benchmarks/gpu_run.sh tests > /dev/null
  timeout 150 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --grains 2,4,8,16 \
    2>&1 | tee -a "$OUT/log.txt" | tail -12
  if [ -d .device/S/_cuda ]; then
    export VPTQ_RS_CUDA_SRC=$PWD/.device/S/_cuda
    timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
    timeout 120 python3 benchmarks/gpu_sorted_grain.py --out "$OUT/results" --label items \
      --storage rows --grains 8,16 2>&1 | tee -a "$OUT/log.txt" | tail -12
    unset VPTQ_RS_CUDA_SRC
  fi
  SAN_K="sorted" SAN_T=150 bash benchmarks/gpu_run.sh sanitizer > /dev/null
  grep -v "^\.\.\." "$OUT/log.txt" | grep "sorted\|passed\|failed\|===\|rror" \
    | grep -v "environment\|install" | tail -40
  tail -3 "$OUT/sanitizer-memcheck.txt"
  ;;
2)
  SUITE_T=240 bash benchmarks/gpu_run.sh suite copy,gemv,lut > /dev/null
  bash benchmarks/gpu_profile.sh sorted
  grep -v "^\.\.\." "$OUT/log.txt" | grep "gemv\|lut\|===\|rror" | grep -v "environment\|install" | tail -40
  ;;
*)
  echo "usage: $0 1|2" >&2
  exit 2
  ;;
esac
