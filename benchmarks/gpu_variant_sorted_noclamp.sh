#!/usr/bin/env bash
# Run 21a on the device machine (issue 5): the sorted GEMV without column clamps against the
# kernel it replaced. Its entries put the first column where its byte offset is one AND away
# (b << 17 | a << 2 | flag) and its shared memory reaches 2^15 floats past xs, so no column
# needs a clamp (3 instructions fewer a warp step: 386 against 423 for 12 steps of the v6
# loop in the SASS), and its first entry loads are in flight while the codebook is staged.
#
# NEW and OLD name two trees (python/, tests/, benchmarks/): with the change (this one, the
# default) and without it, the tree at 184ed2e unpacked beside it:
#   mkdir -p .device/old && git archive 184ed2e python benchmarks/gpu_sorted_grain.py \
#     benchmarks/gpu_suite.py | tar -x -C .device/old
#   bash benchmarks/gpu_variant_sorted_noclamp.sh   (carry .device/wheels and .device/old)
# Each tree builds its own extension (about 100 s on a fresh machine; the two at once), then
# NEW's sorted and fake-op tests run, then each tree times itself on the two largest shapes
# (v6/k4096 and v12/k4096+res4096, chunks of 4 groups) against cuBLAS fp16 in the same
# process, in the order new, old, new (the drift between the first and last), then memcheck
# runs over NEW's sorted tests (a random garbage layout among them).
# Writes $OUT/{log.txt, sanitizer-memcheck.txt,
# results/gpu-gemv-sorted-grain-{noclamp,clamp,noclamp_again}.json}.
#
# FULL=1 adds every GPU test of the new tree (it needs scripts/ for two SASS tests), RACE=1
# racecheck over its sorted tests. Runs 22a and 22b timed two more trees against main this
# way (NEW_LABEL/OLD_LABEL name the files): main plus benchmarks/variants/
# sorted-runtime-mask.patch (the columns masked to the group's reach on every GPU; run 22b),
# and that plus v6 codebook rows padded to 16-byte loads and bf16 rows widened by shift/AND
# (benchmarks/variants/sorted-mask-pad16.patch, against main instead; run 22a):
#   mkdir -p .device/new && git archive HEAD python tests benchmarks/gpu_sorted_grain.py \
#     benchmarks/gpu_suite.py | tar -x -C .device/new
#   patch -s -p1 -d .device/new < benchmarks/variants/sorted-runtime-mask.patch
#   NEW=.device/new OLD=. NEW_LABEL=mask OLD_LABEL=main2 bash benchmarks/gpu_variant_sorted_noclamp.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
NEW=$(realpath "${NEW:-.}")
OLD=$(realpath "${OLD:-.device/old}")
mkdir -p "$OUT/results"
LOG="$OUT/log.txt"
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
step "environment: new $NEW, old $OLD"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } 2>&1 | tee -a "$LOG"
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/vptq_site .device/wheels/*.whl
for t in "$NEW" "$OLD"; do cp /tmp/vptq_site/vptq_rs/_core*.so "$t/python/vptq_rs/"; done
step "build both extensions"
PYTHONPATH=$OLD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_old MAX_JOBS=8 timeout 300 \
  python3 -m vptq_rs.cuda_ext > /tmp/old_build.log 2>&1 &
old_build=$!
PYTHONPATH=$NEW/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_new MAX_JOBS=8 timeout 300 \
  python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$LOG"
wait $old_build
tail -1 /tmp/old_build.log | tee -a "$LOG"
step "new tree: sorted and fake-op tests"
(cd "$NEW" && PYTHONPATH=$NEW/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_new timeout 150 \
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_ext.py \
  -k "sorted or fake" 2>&1 | tail -15 | tee -a "$LOG")
timed() {  # $1: tree root, $2: label, $3: its extension cache
  step "$2"
  PYTHONPATH=$1/python VPTQ_RS_CACHE_DIR=$3 timeout 120 python3 "$1/benchmarks/gpu_sorted_grain.py" \
    --out "$OUT/results" --label "$2" --grains 4 --quick 2>&1 | tee -a "$LOG" | tail -5
}
NEW_LABEL=${NEW_LABEL:-noclamp}
timed "$NEW" "$NEW_LABEL" /tmp/vptq_cache_new
timed "$OLD" "${OLD_LABEL:-clamp}" /tmp/vptq_cache_old
timed "$NEW" "${NEW_LABEL}_again" /tmp/vptq_cache_new
sanitize() {  # $1: compute-sanitizer tool, $2: time limit; over the new tree's sorted tests
  step "$1 over the new tree's sorted tests"
  (cd "$NEW" && PYTHONPATH=$NEW/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_new \
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 VPTQ_RS_KERNEL_SWEEP=small timeout "$2" \
    compute-sanitizer --tool "$1" --error-exitcode 9 --print-limit 20 \
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py -k sorted \
    > "$OUT/sanitizer-$1.txt" 2>&1)
  echo "$1 exit: $?" | tee -a "$LOG"
  tail -5 "$OUT/sanitizer-$1.txt" | tee -a "$LOG"
}
sanitize memcheck "${SAN_T:-120}"
if [ "${FULL:-0}" = 1 ]; then  # the whole GPU test sweep on the new tree
  step "new tree: all GPU tests"
  (cd "$NEW" && PYTHONPATH=$NEW/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_new timeout 240 \
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py \
    tests/test_cuda_ext.py 2>&1 | tail -15 | tee -a "$LOG")
fi
[ "${RACE:-0}" = 1 ] && sanitize racecheck "${RACE_T:-150}"
step "end"
