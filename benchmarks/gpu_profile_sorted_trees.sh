#!/usr/bin/env bash
# Nsight Compute on the sorted GEMV of several source trees in one call (issue 5): where its
# warps stall and how busy its shared-memory pipe is, for the tree on main beside variants.
# Each tree (python/ and benchmarks/, e.g. `git archive REV python benchmarks | tar -x -C
# .device/NAME`) builds its own extension (all at once), then ncu profiles the two sorted
# launches of `benchmarks/gpu_profile.py sorted` (28672x8192 v6/k4096, 8192x28672
# v12/k4096+res4096): speed of light, scheduler and warp-state sections, every stall reason
# per issued instruction, shared-memory wavefronts and bank conflicts.
#
#   TREES="main=.device/old pad=.device/new" bash benchmarks/gpu_profile_sorted_trees.sh
#
# Expects the abi3 wheel in .device/wheels/ (carry .device). Writes $OUT/profile-LABEL.txt
# and $OUT/log.txt.
set -u
OUT=${OUT:-/tmp/vptq_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
step "environment: ${TREES:?name the trees: TREES=\"label=path ...\"}"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"
  ncu --version | tail -1; } 2>&1 | tee -a "$LOG"
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/vptq_site .device/wheels/*.whl
n=$(echo "$TREES" | wc -w)
jobs=$(( $(nproc) / n ))
step "build $n extensions, $jobs jobs each"
for t in $TREES; do
  root=$(realpath "${t#*=}")
  cp /tmp/vptq_site/vptq_rs/_core*.so "$root/python/vptq_rs/"
  PYTHONPATH=$root/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_${t%%=*} MAX_JOBS=$jobs \
    timeout 400 python3 -m vptq_rs.cuda_ext > "/tmp/build_${t%%=*}.log" 2>&1 &
done
wait
for t in $TREES; do tail -1 "/tmp/build_${t%%=*}.log" | tee -a "$LOG"; done
STALLS="regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$"
SHARED="l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,smsp__inst_executed_op_shared_ld.sum,\
l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,\
sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum"
for t in $TREES; do
  label=${t%%=*}
  root=$(realpath "${t#*=}")
  step "profile $label"
  PYTHONPATH=$root/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_$label timeout 240 \
    ncu --section SpeedOfLight --section SchedulerStats --section WarpStateStats \
    --metrics "$STALLS,$SHARED" -k regex:sorted_kernel -c 2 \
    python3 "$root/benchmarks/gpu_profile.py" sorted > "$OUT/profile-$label.txt" 2>&1
  echo "ncu exit $?" | tee -a "$LOG"
  grep -E "Duration|Issued Warp|smsp__inst_executed.sum|wavefronts_mem_shared_op_ld.sum|bank_conflicts" \
    "$OUT/profile-$label.txt" | tee -a "$LOG"
done
step "end"
