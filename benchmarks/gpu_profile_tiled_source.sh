#!/usr/bin/env bash
# Run 25d on the device machine (issue 5): where the scalar tiled GEMV's instructions and
# stalls go, after run 25a's one barrier a phase. Nsight Compute on its first launch in
# benchmarks/gpu_profile.py tiled (28672x8192, v8/k65536): the SASS source page as CSV
# (summarised by scripts/ncu_source_summary.py --step-ops LDS.128) and the speed-of-light,
# warp-state and scheduler sections (benchmarks/gpu_profile.sh tiled's, on this kernel only).
#
#   bash benchmarks/gpu_profile_tiled_source.sh      (carry .device/wheels)
#
# Writes $OUT/profile-gemv-tiled-source-run25d-h100.csv.gz, its summary and
# $OUT/profile-gemv-tiled-run25d-h100.txt.
set -u
OUT=${OUT:-/tmp/vptq_out}
TAG=${TAG:-run25d-h100}
source benchmarks/device_setup.sh
/usr/bin/time -f "build %es" python3 -m vptq_rs.cuda_ext 2>&1 | tail -2
CSV="$OUT/profile-gemv-tiled-source-$TAG.csv"
timeout 200 ncu --section SourceCounters --section InstructionStats -k regex:tiled_kernel -c 1 \
  --page source --csv --print-source sass python3 benchmarks/gpu_profile.py tiled > "$CSV" 2>&1
echo "source page: ncu exit $?"
python3 scripts/ncu_source_summary.py "$CSV" --step-ops LDS.128 \
  | tee "$OUT/profile-gemv-tiled-source-summary-$TAG.txt"
gzip -9 "$CSV"
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
  --section LaunchStats --section WarpStateStats --section SchedulerStats --section InstructionStats"
timeout 200 ncu $SECTIONS -k regex:tiled_kernel -c 1 python3 benchmarks/gpu_profile.py tiled \
  > "$OUT/profile-gemv-tiled-$TAG.txt" 2>&1
echo "sections: ncu exit $?"
grep -E "Duration|Issue Slots Busy|Issued Warp|Executed Ipc A|Memory Throughput|DRAM Throughput|L1/TEX Hit|Achieved Occupancy|Registers Per|Warp Cycles Per Issued" \
  "$OUT/profile-gemv-tiled-$TAG.txt" | head -20
