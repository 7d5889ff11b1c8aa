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
if [ "$WHAT" = sorted ] || [ "$WHAT" = all ]; then
  timeout 240 ncu $SECTIONS --section InstructionStats --section SourceCounters \
    -k regex:"sorted_kernel" -c 2 \
    python3 benchmarks/gpu_profile.py sorted > "$OUT/profile/sorted.txt" 2>&1
  echo "sorted ncu exit $?"; grep -E "Duration|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occ" "$OUT/profile/sorted.txt" | head -20
fi
if [ "$WHAT" = tiled ] || [ "$WHAT" = all ]; then
  timeout 240 ncu $SECTIONS --section InstructionStats --section SourceCounters \
    -k regex:"tiled_kernel" -c 2 \
    python3 benchmarks/gpu_profile.py tiled > "$OUT/profile/tiled.txt" 2>&1
  echo "tiled ncu exit $?"; grep -E "Duration|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occ" "$OUT/profile/tiled.txt" | head -20
fi
if [ "$WHAT" = gemv ] || [ "$WHAT" = all ]; then
  timeout 240 ncu $SECTIONS --section InstructionStats --section SourceCounters \
    -k regex:"main_kernel|hist_kernel" -c 4 \
    python3 benchmarks/gpu_profile.py gemv > "$OUT/profile/gemv.txt" 2>&1
  echo "gemv ncu exit $?"; grep -E "Duration|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occ" "$OUT/profile/gemv.txt" | head -40
fi
if [ "$WHAT" = kmeans ] || [ "$WHAT" = all ]; then
  timeout 300 ncu $SECTIONS -k regex:"assign_" -c 12 \
    python3 benchmarks/gpu_profile.py kmeans > "$OUT/profile/kmeans.txt" 2>&1
  echo "kmeans ncu exit $?"; grep -E "assign_|Duration|Achieved Occupancy|Registers Per|Issued Ipc" "$OUT/profile/kmeans.txt" | head -80
fi
