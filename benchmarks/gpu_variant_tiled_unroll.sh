#!/usr/bin/env bash
# Run 14e on the device machine (issue 5): the whole GPU test sweep, memcheck over the tiled
# GEMV's tests, then the gemv section of the suite twice in one call, with the tiled kernel
# as committed (2 entry loads a lane at once) and with 4 (a copy of the sources, built
# through VPTQ_RS_CUDA_SRC). Writes $OUT/{log.txt,sanitizer-memcheck.txt,u2/,u4/}; the gemv
# JSON of each is committed as results/gpu-gemv-tiled-unroll{2,4}-run14e.json.
#
#   bash benchmarks/gpu_variant_tiled_unroll.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
TEST_T=240 bash benchmarks/gpu_run.sh tests > /dev/null
SAN_K="tiled" SAN_T=150 bash benchmarks/gpu_run.sh sanitizer > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
mkdir -p "$OUT/u2" "$OUT/u4"
timeout 100 python3 benchmarks/gpu_suite.py --out "$OUT/u2" --sections copy,gemv > "$OUT/u2/log.txt" 2>&1
rm -rf /tmp/u4 && cp -r python/vptq_rs/_cuda /tmp/u4
sed -i 's/kUnroll = 2;/kUnroll = 4;/' /tmp/u4/gemv_tiled.cuh
grep -n "kUnroll = " /tmp/u4/gemv_tiled.cuh
VPTQ_RS_CUDA_SRC=/tmp/u4 timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
VPTQ_RS_CUDA_SRC=/tmp/u4 timeout 100 python3 benchmarks/gpu_suite.py --out "$OUT/u4" --sections copy,gemv \
  > "$OUT/u4/log.txt" 2>&1
grep -v "^\.\.\." "$OUT/log.txt" | tail -25
tail -4 "$OUT/sanitizer-memcheck.txt"
echo "--- u2"; grep "v8_k65536\|v6_k4096" "$OUT/u2/log.txt"
echo "--- u4"; grep "v8_k65536\|v6_k4096" "$OUT/u4/log.txt"
