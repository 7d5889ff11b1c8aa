#!/usr/bin/env bash
# Runs 27a to 29a on the device machine (issue 5): the cluster-tiled GEMV
# (gemv_tiled_cluster.cuh) beside the tiled kernels, in one call.
#
#   LABEL=run30a bash benchmarks/gpu_tiled_cluster.sh      (carry .device/wheels, and PROBES' dirs)
#
# 1. install the wheel, build the kernels (and, at the same time, each of PROBES: a list of
#    name:dir, dir a copy of python/vptq_rs/_cuda with a benchmarks/variants probe applied,
#    built through VPTQ_RS_CUDA_SRC), run the tiled GPU tests (every form; TEST_K);
# 2. memcheck over the cluster kernel's tests (SAN=0 skips it);
# 3. v8/k65536 on the two largest shapes (benchmarks/gpu_tiled_order.py --quick: the scalar
#    kernel over dealt and column-ordered entries, the mma form and the cluster form), each
#    against cuBLAS fp16 in the same process, at the default cluster size, at each of SIZES
#    (VPTQ_RS_TILED_CLUSTER_SIZE; labels <LABEL> and <LABEL>_c<size>) and with each probe's
#    kernels (<LABEL>_<name>), then the default again (<LABEL>_again), so drift shows;
#    PROLOGUE=1 adds the default with the activations computed in the kernel at every width
#    (VPTQ_RS_GEMV_PROLOGUE=fused, <LABEL>_fused);
# 4. SHAPES=all: the default over all five shapes (<LABEL>_all);
# 5. SUITE=1: benchmarks/gpu_suite.py's copy, gemv and lut sections (README's GPU tables);
# 6. BF16=1: benchmarks/gpu_bf16.sh (<LABEL>_bf16; its cluster column is the cluster kernel
#    in bf16);
# 7. PROFILE=1: Nsight Compute on the cluster kernel's first launch in
#    benchmarks/gpu_profile.py cluster (28672x8192): the speed-of-light, memory (with the
#    shared-memory table: wavefronts and bank conflicts), warp-state and scheduler sections,
#    and (SOURCE=1, the default) the SASS source page (scripts/ncu_source_summary.py).
# Run 27a: LABEL=run27a SHAPES=all SIZES="16 8" BF16=1 PROLOGUE=0 (its memcheck did not run:
# a wrong filter). Run 27b: LABEL=run27b SHAPES=all SOURCE=0. Run 28a (an H200):
# LABEL=run28a_h200 SHAPES=all SIZES= PROLOGUE=0 PROBES="xs_lane:.device/probe_xs_lane
# noclamp:.device/probe_noclamp" (benchmarks/variants/tiled-cluster-*-probe.patch applied to
# copies of python/vptq_rs/_cuda). Run 28b (an H100, though labelled _h200): LABEL=run28b_h200
# SHAPES= SIZES= PROLOGUE=0 PROFILE=0 SAN=0 TEST_K="tiled and cluster"
# PROBES="u8:.device/var_u8 l2:.device/var_l2" (tiled-cluster-{unroll8,l2-prefetch}.patch).
# Run 29a (an H100): tiled-cluster-split-rows.patch applied to the tree, the tree before it as
# the probe: LABEL=run29a SHAPES=all SIZES= PROLOGUE=0 SOURCE=0 SUITE=1
# PROBES="old:.device/old_cuda".
# $OUT may hold 8 files: the results come back as one archive, results.tgz.
set -u
OUT=${OUT:-/tmp/vptq_out}
export OUT
LABEL=${LABEL:-run30a}
source benchmarks/device_setup.sh
echo "=== build ($(date +%T))" | tee -a "$LOG"
for probe in ${PROBES:-}; do
  VPTQ_RS_CUDA_SRC=$PWD/${probe#*:} timeout 480 python3 -m vptq_rs.cuda_ext \
    > "$OUT/build-${probe%%:*}.txt" 2>&1 &
done
timeout 420 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$LOG"
echo "=== tiled tests ($(date +%T))" | tee -a "$LOG"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_ext.py \
  -k "${TEST_K:-tiled}" 2>&1 | tail -15 | tee -a "$LOG"
if [ "${SAN:-1}" = 1 ]; then
  echo "=== memcheck, cluster tests ($(date +%T))" | tee -a "$LOG"
  VPTQ_RS_KERNEL_SWEEP=small timeout 200 compute-sanitizer --tool memcheck \
    --kernel-name kns=tiled_cluster python3 -m pytest -q -p no:cacheprovider \
    tests/test_cuda_kernels.py -k "cluster" > "$OUT/results/sanitizer-${LABEL}-cluster.txt" 2>&1
  tail -3 "$OUT/results/sanitizer-${LABEL}-cluster.txt" | tee -a "$LOG"
fi
timed() {  # $1: label, then env assignments
  local label=$1
  shift
  echo "=== tiled forms: $label $* ($(date +%T))" | tee -a "$LOG"
  env "$@" timeout 150 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" \
    --label "$label" ${QUICK---quick} 2>&1 | tee -a "$LOG" | tail -6
}
timed "$LABEL" VPTQ_RS_TILED_CLUSTER_SIZE=0
for size in ${SIZES-4 16}; do
  timed "${LABEL}_c$size" VPTQ_RS_TILED_CLUSTER_SIZE="$size"
done
wait  # the probes' builds
for probe in ${PROBES:-}; do
  tail -1 "$OUT/build-${probe%%:*}.txt" | tee -a "$LOG"
  rm -f "$OUT/build-${probe%%:*}.txt"
  timed "${LABEL}_${probe%%:*}" VPTQ_RS_TILED_CLUSTER_SIZE=0 VPTQ_RS_CUDA_SRC="$PWD/${probe#*:}"
done
if [ "${PROLOGUE:-1}" = 1 ]; then
  timed "${LABEL}_fused" VPTQ_RS_TILED_CLUSTER_SIZE=0 VPTQ_RS_GEMV_PROLOGUE=fused
fi
timed "${LABEL}_again" VPTQ_RS_TILED_CLUSTER_SIZE=0
if [ "${SHAPES:-}" = all ]; then
  QUICK= timed "${LABEL}_all" VPTQ_RS_TILED_CLUSTER_SIZE=0
fi
if [ "${SUITE:-0}" = 1 ]; then
  echo "=== suite: copy, gemv, lut ($(date +%T))" | tee -a "$LOG"
  timeout 300 python3 benchmarks/gpu_suite.py --out "$OUT/results" --sections copy,gemv,lut 2>&1 \
    | tee -a "$LOG" | tail -25
fi
if [ "${BF16:-0}" = 1 ]; then
  LABEL="${LABEL}_bf16" bash benchmarks/gpu_bf16.sh
fi
if [ "${PROFILE:-1}" = 1 ]; then
  echo "=== ncu, cluster kernel ($(date +%T))" | tee -a "$LOG"
  P="$OUT/results/profile-gemv-tiled-cluster-$LABEL"
  SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section LaunchStats --section WarpStateStats --section SchedulerStats --section InstructionStats \
    --section MemoryWorkloadAnalysis_Tables"
  timeout 150 ncu $SECTIONS -k regex:tiled_cluster_kernel -c 1 python3 benchmarks/gpu_profile.py \
    cluster > "$P.txt" 2>&1
  grep -E "Duration|Issue Slots Busy|Executed Ipc A|Memory Throughput|DRAM Throughput|Warp Cycles Per Issued|Eligible Warps|Cluster|Waves|Grid Size|Shared|[Bb]ank|Wavefront" \
    "$P.txt" | head -40 | tee -a "$LOG"
  if [ "${SOURCE:-1}" = 1 ]; then
    timeout 150 ncu --section SourceCounters --section InstructionStats -k regex:tiled_cluster_kernel \
      -c 1 --page source --csv --print-source sass python3 benchmarks/gpu_profile.py cluster > "$P-source.csv" 2>&1
    python3 scripts/ncu_source_summary.py "$P-source.csv" --step-ops LDS.128 --top-stalls 12 \
      > "$P-source-summary.txt" 2>&1
    head -40 "$P-source-summary.txt" | tee -a "$LOG"
    gzip -9 "$P-source.csv"
  fi
fi
echo "=== done ($(date +%T))" | tee -a "$LOG"
cp "$LOG" "$OUT/results/gpu-${LABEL}-log.txt"
tar -czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
