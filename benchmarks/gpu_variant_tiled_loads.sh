#!/usr/bin/env bash
# Run 20a on the device machine (issue 5): the whole GPU test sweep on the tree's kernels,
# then the tiled GEMV with 4 entry loads a lane per batch against 2 (kUnroll in
# gemv_tiled.cuh). Each is a copy of the tree's sources with that one constant set (sed),
# built through VPTQ_RS_CUDA_SRC (about 100 s each on a fresh machine); the 4-load kernel's
# tiled tests run before its timings. Timed on the two largest shapes in the order 4, 2, 4
# (the machine's drift between the first and last timing), each against cuBLAS fp16 in the
# same process. Run 20a ran it on 22974d7, whose tree still held 2 (so the sweep tested the
# 2-load kernel, and its 2-load timing used the tree's own sources); 4 is committed since.
# Writes $OUT/{log.txt, results/gpu-gemv-tiled-order-unroll{4,2,4again}.json}.
#
#   bash benchmarks/gpu_variant_tiled_loads.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
TEST_T=200 bash benchmarks/gpu_run.sh tests > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
for u in 4 2; do
  rm -rf "/tmp/vptq_unroll$u" && cp -r python/vptq_rs/_cuda "/tmp/vptq_unroll$u"
  sed -i "s/constexpr int kUnroll = [0-9]*;/constexpr int kUnroll = $u;/" "/tmp/vptq_unroll$u/gemv_tiled.cuh"
  grep -n "kUnroll = " "/tmp/vptq_unroll$u/gemv_tiled.cuh" | tee -a "$OUT/log.txt"
done
timed() {  # $1: loads a lane, $2: label
  VPTQ_RS_CUDA_SRC=/tmp/vptq_unroll$1 timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 \
    | tee -a "$OUT/log.txt"
  VPTQ_RS_CUDA_SRC=/tmp/vptq_unroll$1 timeout 90 python3 benchmarks/gpu_tiled_order.py \
    --out "$OUT/results" --label "$2" --quick 2>&1 | tee -a "$OUT/log.txt" | tail -3
}
VPTQ_RS_CUDA_SRC=/tmp/vptq_unroll4 timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
VPTQ_RS_CUDA_SRC=/tmp/vptq_unroll4 timeout 120 python3 -m pytest -q -p no:cacheprovider \
  tests/test_cuda_kernels.py tests/test_cuda_ext.py -k tiled 2>&1 | tail -3 | tee -a "$OUT/log.txt"
timed 4 unroll4
timed 2 unroll2
timed 4 unroll4again
grep -v "^\.\.\." "$OUT/log.txt" | grep "gemv\|tiled\|kUnroll\|passed\|failed\|===\|rror" \
  | grep -v "environment\|install" | tail -40
