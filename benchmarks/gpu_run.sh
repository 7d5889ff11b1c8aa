#!/usr/bin/env bash
# What runs on the device machine (issue 5): install our wheel, build the CUDA extension for
# sm_90, run the GPU tests, compute-sanitizer memcheck over the kernel test sweep, then the
# benchmark suite. Everything it writes lands in $OUT (log.txt + results/gpu-*.json).
#
#   bash benchmarks/gpu_run.sh quick|full|suite|tests|sanitizer|tune [suite sections]
# (suite: build + benchmarks only; tests: build + GPU tests only; sanitizer: build +
# memcheck only; tune: build + benchmarks/gpu_tune.py [its sections] -- a device call is
# limited to 10 minutes, so a full run takes two calls)
#
# TAG=h200 names the suite's files gpu-<section>-h200.json (a run on another card); TEST_K and
# SAN_K narrow the tests and the sanitizer sweep (pytest -k expressions); SAN_TOOL picks the
# compute-sanitizer tool (memcheck, racecheck, ...) and SAN_KERNEL limits it to kernels whose
# name holds that substring (racecheck flags cuBLAS's own kernels, which tests call too).
# Expects the abi3 wheel in .device/wheels/ (maturin build --release -o .device/wheels).
set -uo pipefail
MODE=${1:-full}
SECTIONS=${2:-copy,gemv,lut,gemm,kmeans,e2e,msvptq}
OUT=${OUT:-/tmp/vptq_out}
mkdir -p "$OUT/results"
LOG="$OUT/log.txt"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1
export VPTQ_RS_CACHE_DIR=/tmp/vptq_cache
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }

step "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; uname -m
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; nvcc --version | tail -1; } 2>&1 | tee -a "$LOG"

step "install the wheel (compiled core), run the tree's Python"
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/vptq_site .device/wheels/*.whl 2>&1 | tee -a "$LOG"
cp /tmp/vptq_site/vptq_rs/_core*.so python/vptq_rs/ 2>&1 | tee -a "$LOG"
export PYTHONPATH="$PWD/python"
python3 -c "import vptq_rs; print('vptq_rs', vptq_rs.__version__)" 2>&1 | tee -a "$LOG"

if ls .device/ms/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/ms_site .device/ms/*.whl 2>&1 | tail -3 | tee -a "$LOG"
  export MS_VPTQ_SITE=/tmp/ms_site
fi

step "build the CUDA extension"
/usr/bin/time -f "build %es" python3 -m vptq_rs.cuda_ext 2>&1 | tail -5 | tee -a "$LOG"

if [ "$MODE" = tune ]; then
  step "tuning measurements"
  timeout "${TUNE_T:-420}" python3 benchmarks/gpu_tune.py --out "$OUT/results" \
    --sections "${2:-quantize,gemv}" 2>&1 | tee -a "$LOG" | tail -120
  step "end"; exit 0
fi

if [ "$MODE" != suite ] && [ "$MODE" != sanitizer ]; then
step "gpu tests"
timeout "${TEST_T:-200}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_ext.py \
  -k "${TEST_K:-}" 2>&1 \
  | tail -40 | tee -a "$LOG"
fi

if [ "$MODE" != suite ] && [ "$MODE" != tests ]; then
SAN_TOOL=${SAN_TOOL:-memcheck}
step "compute-sanitizer $SAN_TOOL over the kernel sweep"
# the whole sweep under memcheck took over 240 s on an H100 (session 10); in run 30a (253
# tests) 440 s after a 100 s build reached 251 of them, so split it over two calls now, e.g.
# SAN_K="not graph and not kmeans", then SAN_K=kmeans
SAN_T=${SAN_T:-$([ "$MODE" = quick ] && echo 150 || echo 420)}
PYTORCH_NO_CUDA_MEMORY_CACHING=1 VPTQ_RS_KERNEL_SWEEP=small timeout "$SAN_T" \
  compute-sanitizer --tool "$SAN_TOOL" ${SAN_KERNEL:+--kernel-name kns=$SAN_KERNEL} \
  --error-exitcode 9 --print-limit 20 \
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py -k "${SAN_K:-not graph}" 2>&1 \
  > "$OUT/sanitizer-$SAN_TOOL.txt"
echo "sanitizer exit: $?" | tee -a "$LOG"
head -c 6000 "$OUT/sanitizer-$SAN_TOOL.txt" | tee -a "$LOG"; echo
tail -15 "$OUT/sanitizer-$SAN_TOOL.txt" | tee -a "$LOG"
fi

[ "$MODE" = tests ] || [ "$MODE" = sanitizer ] && { step "end"; exit 0; }
step "benchmark suite ($MODE)"
QUICK=$([ "$MODE" = quick ] && echo --quick || echo)
SUITE_T=${SUITE_T:-$([ "$MODE" = quick ] && echo 200 || echo 400)}
timeout "$SUITE_T" python3 benchmarks/gpu_suite.py --out "$OUT/results" $QUICK --sections "$SECTIONS" \
  --kmeans-variants "${KMEANS_VARIANTS:-}" --tag "${TAG:-}" 2>&1 \
  | tee -a "$LOG" | tail -60
step "end"
