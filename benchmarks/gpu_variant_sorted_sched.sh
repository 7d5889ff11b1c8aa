#!/usr/bin/env bash
# Run 15b on the device machine (issue 5): the pair-sorted GEMV with chunk-major items (a
# warp's items spread over the chunks) and a ring of three entry loads unrolled by its length
# (no register copies). The sorted kernel's GPU tests, the suite's copy, gemv and lut sections
# (results/), then in the same call the gemv section with the layout's chunks at 4 and 16
# groups instead of 8 (Python only), and with the kernel of run 15a (.device/A/_cuda: the
# sources with gemv_sorted.cuh at that commit, built through VPTQ_RS_CUDA_SRC); an Nsight
# Compute profile of the sorted kernel; memcheck over its tests. The three comparison runs
# are gathered into one file, variants/gpu-gemv-sorted-variants.json ($OUT returns 8 files).
#
#   bash benchmarks/gpu_variant_sorted_sched.sh
set -u
OUT=${OUT:-/tmp/vptq_out}
# the suite's files are named for the card when it is not an H100 (gpu_run.sh's TAG)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && export TAG=h200
TEST_K="sorted or fake" TEST_T=120 bash benchmarks/gpu_run.sh tests > /dev/null
SUITE_T=150 bash benchmarks/gpu_run.sh suite copy,gemv,lut > /dev/null
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
V=/tmp/variants && rm -rf $V && mkdir -p $V/c4 $V/c16 $V/run15a "$OUT/variants"
for cg in 4 16; do
  CG=$cg timeout 120 python3 - --out "$V/c$cg" --sections copy,gemv > "$V/c$cg/log.txt" 2>&1 <<'PY'
import os, runpy, sys
from vptq_rs import sorted_layout
build, cg = sorted_layout.build, int(os.environ["CG"])
sorted_layout.build = lambda cfg, indices, chunk_groups_target=cg: build(cfg, indices, chunk_groups_target)
sys.argv[0] = "benchmarks/gpu_suite.py"
runpy.run_path("benchmarks/gpu_suite.py", run_name="__main__")
PY
done
if [ -d .device/A/_cuda ]; then
  VPTQ_RS_CUDA_SRC=$PWD/.device/A/_cuda timeout 200 python3 -m vptq_rs.cuda_ext 2>&1 | tail -1
  VPTQ_RS_CUDA_SRC=$PWD/.device/A/_cuda timeout 120 python3 benchmarks/gpu_suite.py \
    --out "$V/run15a" --sections copy,gemv > "$V/run15a/log.txt" 2>&1
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
for v in c4 c16 run15a; do
  { echo "=== $v"; grep -v "^\.\.\." "$V/$v/log.txt" | grep "gemv\|Error\|error" | tail -20; } >> "$OUT/log.txt"
done
grep -v "^\.\.\." "$OUT/log.txt" | grep -v "^=== \(environment\|install\)" | grep "gemv\|passed\|failed\|===\|rror" | tail -80
tail -3 "$OUT/sanitizer-memcheck.txt"
