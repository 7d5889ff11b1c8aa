#!/usr/bin/env bash
# Nsight Compute profile of the GEMV and k-means kernels on the device machine (issue 5):
# one report per kernel family under $OUT/profile/ (text: speed of light, memory, occupancy,
# warp stalls). Expects the abi3 wheel in .device/wheels/ like gpu_run.sh.
#
#   bash benchmarks/gpu_profile.sh [gemv|sorted|tiled|kmeans|all]
set -uo pipefail
WHAT=${1:-all}
OUT=${OUT:-/tmp/vptq_out}
mkdir -p "$OUT/profile"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 VPTQ_RS_CACHE_DIR=/tmp/vptq_cache
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/vptq_site .device/wheels/*.whl
cp /tmp/vptq_site/vptq_rs/_core*.so python/vptq_rs/
export PYTHONPATH="$PWD/python"
/usr/bin/time -f "build %es" python3 -m vptq_rs.cuda_ext 2>&1 | tail -2
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
  --section LaunchStats --section WarpStateStats --section SchedulerStats"
# one GEMV family: name, kernel regex, launches to profile, summary lines to print
gemv_profile() {
  [ "$WHAT" = "$1" ] || [ "$WHAT" = all ] || return 0
  timeout 240 ncu $SECTIONS --section InstructionStats --section SourceCounters \
    -k regex:"$2" -c "$3" \
    python3 benchmarks/gpu_profile.py "$1" > "$OUT/profile/$1.txt" 2>&1
  echo "$1 ncu exit $?"
  grep -E "Duration|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occ" \
    "$OUT/profile/$1.txt" | head -"$4"
}
gemv_profile sorted "sorted_kernel" 2 20
gemv_profile tiled "tiled_kernel|tiled_mma_kernel" 2 20
gemv_profile gemv "main_kernel|hist_kernel" 4 40
if [ "$WHAT" = kmeans ] || [ "$WHAT" = all ]; then
  timeout 300 ncu $SECTIONS -k regex:"assign_" -c 12 \
    python3 benchmarks/gpu_profile.py kmeans > "$OUT/profile/kmeans.txt" 2>&1
  echo "kmeans ncu exit $?"; grep -E "assign_|Duration|Achieved Occupancy|Registers Per|Issued Ipc" "$OUT/profile/kmeans.txt" | head -80
fi
