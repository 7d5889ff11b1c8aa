#!/usr/bin/env bash
# Run 15a on the device machine (issue 5): the sorted GEMV over column pairs (32-bit entries
# of two columns of one code). The GPU test sweep, the suite's copy, gemv and lut sections
# (results/), memcheck over the sorted kernel's tests, an Nsight Compute profile of it, and
# in the same call the gemv section twice more for comparison: with the pairs' bank
# balancing off (plain/), and with the single-column layout it replaced (single/: the tree at
# that commit, unpacked into .device/old by `git archive <rev> python benchmarks`).
# $OUT returns 8 files at most, so the two comparison runs keep only their gemv JSON and
# their logs are appended to log.txt.
#
#   bash benchmarks/gpu_variant_sorted_pairs.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
# the suite's files are named for the card when it is not an H100 (gpu_run.sh's TAG)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=h200
TEST_T=200 bash benchmarks/gpu_run.sh tests > /dev/null
SUITE_T=150 bash benchmarks/gpu_run.sh suite copy,gemv,lut > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
mkdir -p "$OUT/plain" "$OUT/single"
timeout 120 python3 - --out "$OUT/plain" --sections copy,gemv > "$OUT/plain/log.txt" 2>&1 <<'PY'
import runpy, sys
from vptq_rs import sorted_layout
sorted_layout._balance_banks = lambda cols, gs: cols  # pairs in sorted order
sys.argv[0] = "benchmarks/gpu_suite.py"
runpy.run_path("benchmarks/gpu_suite.py", run_name="__main__")
PY
if [ -d .device/old/python ]; then
  cp python/vptq_rs/_core*.so .device/old/python/vptq_rs/
  export PYTHONPATH=$PWD/.device/old/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_old
  timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
  timeout 120 python3 .device/old/benchmarks/gpu_suite.py --out "$OUT/single" --sections copy,gemv \
    > "$OUT/single/log.txt" 2>&1
  export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache
fi
bash benchmarks/gpu_profile.sh sorted
SAN_K="sorted" SAN_T=150 bash benchmarks/gpu_run.sh sanitizer > /dev/null
for v in plain single; do
  { echo "=== $v"; grep -v "^\.\.\." "$OUT/$v/log.txt" | tail -20; } >> "$OUT/log.txt"
  rm -f "$OUT/$v/log.txt" "$OUT/$v/gpu-copy.json"
done
grep -v "^\.\.\." "$OUT/log.txt" | grep -v "^=== \(environment\|install\)" | tail -60
tail -4 "$OUT/sanitizer-memcheck.txt"
