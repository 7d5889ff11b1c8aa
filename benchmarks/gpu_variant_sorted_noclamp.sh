#!/usr/bin/env bash
# Run 21a on the device machine (issue 5): the sorted GEMV whose entries put the first
# column where its byte offset is one AND away (b << 17 | a << 2 | flag) and whose shared
# memory reaches 2^15 floats past xs, so no column needs a clamp (3 instructions fewer a warp
# step; 386 against 423 for 12 steps of the v6 loop in the SASS), and whose first entry loads
# are in flight while the codebook is staged. Against the kernel it replaced: the tree at
# 184ed2e, unpacked beside it with
#   git archive 184ed2e python benchmarks/gpu_sorted_grain.py benchmarks/gpu_suite.py \
#     | tar -x -C .device/old
# Each tree builds its own extension (about 100 s on a fresh machine; the two at once) and
# times itself on the two largest shapes (v6/k4096 and v12/k4096+res4096, chunks of 4
# groups) against cuBLAS fp16 in the same process, in the order new, old, new (the drift
# between the first and last). Before that the tree's sorted and fake-op tests run; after
# it, memcheck over the sorted tests (a random garbage layout among them).
# Writes $OUT/{log.txt, sanitizer-memcheck.txt,
# results/gpu-gemv-sorted-grain-{noclamp,clamp,noclamp_again}.json}.
#
#   bash benchmarks/gpu_variant_sorted_noclamp.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=9.0
# the old tree builds on half the cores while gpu_run.sh builds and tests the new one
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/vptq_site .device/wheels/*.whl
cp /tmp/vptq_site/vptq_rs/_core*.so .device/old/python/vptq_rs/
PYTHONPATH=$PWD/.device/old/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache_old MAX_JOBS=8 timeout 300 \
  python3 -m vptq_rs.cuda_ext > /tmp/old_build.log 2>&1 &
old_build=$!
TEST_T=150 TEST_K="sorted or fake" bash benchmarks/gpu_run.sh tests > /dev/null
wait $old_build
{ echo "=== the old tree's build ($(date +%T))"; tail -1 /tmp/old_build.log; } | tee -a "$OUT/log.txt"
timed() {  # $1: tree root, $2: label, $3: its extension cache
  echo "=== $2 ($(date +%T))" | tee -a "$OUT/log.txt"
  PYTHONPATH=$1/python VPTQ_RS_CACHE_DIR=$3 timeout 120 python3 "$1/benchmarks/gpu_sorted_grain.py" \
    --out "$OUT/results" --label "$2" --grains 4 --quick 2>&1 | tee -a "$OUT/log.txt" | tail -5
}
timed "$PWD" noclamp /tmp/vptq_cache
timed "$PWD/.device/old" clamp /tmp/vptq_cache_old
timed "$PWD" noclamp_again /tmp/vptq_cache
SAN_K=sorted SAN_T=${SAN_T:-120} bash benchmarks/gpu_run.sh sanitizer > /dev/null
grep -v "^\.\.\." "$OUT/log.txt" | grep "sorted\|passed\|failed\|===\|rror\|build\|exit" \
  | grep -v "environment\|install" | tail -40
