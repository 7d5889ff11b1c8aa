#!/usr/bin/env bash
# Device run for the quality table (issue 6), second of two calls: the first call carries
# .device/model_a (part one of the reference GGUF); this one carries .device/model_b,
# .device/data, .device/wheels and .device/whl (gguf) and runs benchmarks/quality.py --mode gpu
# under a time budget. Run it again on the warm machine to resume the remaining rows; copy
# $OUT/quality-gpu.json to benchmarks/results/ and run benchmarks/report.py. A fresh machine
# starts from the committed benchmarks/results/quality-gpu.json. ROWS=a,b limits
# an invocation to those rows (quality.py --list-rows names them).
set -u
Q=/tmp/q
mkdir -p "$Q"
[ -f .device/model_a/smol.gguf.part-aa ] && cp .device/model_a/smol.gguf.part-aa "$Q/"
[ -f "$Q/smol.gguf" ] || cat "$Q/smol.gguf.part-aa" .device/model_b/smol.gguf.part-ab > "$Q/smol.gguf"
echo "$(cut -d' ' -f1 .device/model_b/model.sha256)  $Q/smol.gguf" | sha256sum -c || exit 1
# a fresh machine resumes the committed table (only rows not in it run)
[ -f "$Q/quality-gpu.json" ] || cp benchmarks/results/quality-gpu.json "$Q/" 2>/dev/null
python3 -m pip install -q --no-deps --no-index --target /tmp/vptq_site \
  .device/wheels/*.whl .device/whl/gguf-*.whl && cp /tmp/vptq_site/vptq_rs/_core*.so python/vptq_rs/ || exit 1
export PYTHONPATH=$PWD/python:/tmp/vptq_site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 VPTQ_RS_CACHE_DIR=/tmp/vptq_cache
timeout "${QUALITY_T:-555}" python3 benchmarks/quality.py --mode gpu --model "$Q/smol.gguf" \
  --data-dir .device/data --work-dir "$Q/work" --out "$Q/quality-gpu.json" --resume \
  --time-budget "${BUDGET:-420}" ${ROWS:+--rows "$ROWS"} --quiet --no-report > "$OUT/quality-log.txt" 2>&1
tail -c 4000 "$OUT/quality-log.txt"
cp "$Q/quality-gpu.json" "$OUT/"
