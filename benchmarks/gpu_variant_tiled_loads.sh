#!/usr/bin/env bash
# Run 20a on the device machine (issue 5): the whole GPU test sweep on the tree's kernels,
# then the tiled GEMV with 4 entry loads a lane per batch against the tree's 2 (kUnroll in
# gemv_tiled.cuh). The 4-load kernel is a copy of the tree's sources with that one constant
# changed (sed), built through VPTQ_RS_CUDA_SRC (about 100 s); its tiled tests run before
# its timings. Timed on the two largest shapes in the order 4, 2, 4 (the machine's drift
# between the first and last timing), each against cuBLAS fp16 in the same process. Session
# 19 compiled the 4-load kernel with no spill for any V (62 registers at v8, 56 with 2).
# Writes $OUT/{log.txt, results/gpu-gemv-tiled-order-unroll{4,2,4again}.json}.
#
#   bash benchmarks/gpu_variant_tiled_loads.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
TEST_T=200 bash benchmarks/gpu_run.sh tests > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
U4=/tmp/vptq_unroll4
rm -rf "$U4" && cp -r python/vptq_rs/_cuda "$U4"
sed -i 's/kUnroll = 2;/kUnroll = 4;/' "$U4/gemv_tiled.cuh"
grep -n "kUnroll = " python/vptq_rs/_cuda/gemv_tiled.cuh "$U4/gemv_tiled.cuh" | tee -a "$OUT/log.txt"
timed() {  # $1: label; the sources are VPTQ_RS_CUDA_SRC's (the tree's when unset)
  timeout 90 python3 benchmarks/gpu_tiled_order.py --out "$OUT/results" --label "$1" --quick \
    2>&1 | tee -a "$OUT/log.txt" | tail -3
}
export VPTQ_RS_CUDA_SRC=$U4
timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1 | tee -a "$OUT/log.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_ext.py \
  -k tiled 2>&1 | tail -3 | tee -a "$OUT/log.txt"
timed unroll4
unset VPTQ_RS_CUDA_SRC
timed unroll2
VPTQ_RS_CUDA_SRC=$U4 timed unroll4again
grep -v "^\.\.\." "$OUT/log.txt" | grep "gemv\|tiled\|kUnroll\|passed\|failed\|===\|rror" \
  | grep -v "environment\|install" | tail -40
