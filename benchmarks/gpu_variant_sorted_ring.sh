#!/usr/bin/env bash
# Run 15c on the device machine (issue 5): the pair-sorted GEMV as committed (chunk-major
# items, a ring of three entry loads, chunks of 16 groups). The sorted kernel's GPU tests, the
# suite's copy, gemv and lut sections (results/), then in the same call the gemv section
# three more times from one build of a copy of the sources (.device/X/_cuda) whose launcher
# picks a kernel variant from $VPTQ_RS_SORTED_VARIANT: 1 = row-major items (each warp takes
# a row's chunks in turn), 2 = a ring of four loads (three groups ahead), 3 = both; then an
# Nsight Compute profile and memcheck of the committed kernel. The comparison runs are
# gathered into variants/gpu-gemv-sorted-variants.json ($OUT returns 8 files).
#
#   bash benchmarks/gpu_variant_sorted_ring.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
# the suite's files are named for the card when it is not an H100 (gpu_run.sh's TAG)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=h200
TEST_K="sorted or fake" TEST_T=120 bash benchmarks/gpu_run.sh tests > /dev/null
SUITE_T=150 bash benchmarks/gpu_run.sh suite copy,gemv,lut > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
V=/tmp/variants && rm -rf $V && mkdir -p "$OUT/variants"
if [ -d .device/X/_cuda ]; then
  export VPTQ_RS_CUDA_SRC=$PWD/.device/X/_cuda
  timeout 240 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
  for var in 1 2 3; do
    mkdir -p $V/var$var
    VPTQ_RS_SORTED_VARIANT=$var timeout 100 python3 benchmarks/gpu_suite.py --out $V/var$var \
      --sections copy,gemv > $V/var$var/log.txt 2>&1
    { echo "=== variant $var"; grep "gemv\|rror" $V/var$var/log.txt | tail -16; } >> "$OUT/log.txt"
  done
  unset VPTQ_RS_CUDA_SRC
fi
python3 - "$V" "$OUT/variants/gpu-gemv-sorted-variants.json" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
out = {d.name: json.loads((d / "gpu-gemv.json").read_text())
       for d in sorted(root.iterdir()) if (d / "gpu-gemv.json").exists()}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
PY
bash benchmarks/gpu_profile.sh sorted
SAN_K="sorted" SAN_T=120 bash benchmarks/gpu_run.sh sanitizer > /dev/null
grep -v "^\.\.\." "$OUT/log.txt" | grep "gemv\|passed\|failed\|===\|rror" | grep -v "environment\|install" | tail -80
tail -3 "$OUT/sanitizer-memcheck.txt"
