#!/usr/bin/env bash
# Device run for the quantizer's GPU numbers (issue 3) and the fine-tuning numbers (issue 8).
#
# Expects, under .device/ (git-ignored, carried by the device tool): model_a/ and model_b/
# (the reference GGUF split in two, joined here and checked against model_b/model.sha256),
# wheels/ (our abi3 wheel), whl/ (gguf, missing on the device), data/ (the corpora).
# Each step runs under its own time limit; results land in $OUT/results as they finish.
#
#   [QUANT_T=270] [GPU_WORKERS=1] [QUANT=0] [FINETUNE=0] [R256=1] [GGUF_WARM=1] [FT_MODES=codebooks,lora FT_STEPS=100
#    FT_LIMIT=16 FT_NAME=finetune_smollm2 FTQ_T=90 FT_T=150] bash benchmarks/gpu_quantize.sh
# GGUF_WARM=1 converts the GGUF once before the timed runs (they then load the cached copy);
# QUANT=0 skips quantize_real.py's two runs; R256=1 runs only its v8/k65536 + 256 residual
# configuration last and keeps that child's JSON output (summary + BENCH line) as a log.
set -uo pipefail
OUT=${OUT:-/tmp/vptq_out}
mkdir -p "$OUT/results"
LOG="$OUT/log.txt"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export VPTQ_RS_CACHE_DIR=/tmp/vptq_cache VPTQ_RS_DATA_DIR="$PWD/.device/data"
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
save() { cp "$@" "$OUT/results/" 2>/dev/null; }

step "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } 2>&1 | tee -a "$LOG"

step "join and check the model"
MODEL=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p /tmp/smol
cat .device/model_a/smol.gguf.part-* .device/model_b/smol.gguf.part-* > "$MODEL"
want=$(cut -d' ' -f1 .device/model_b/model.sha256)
got=$(sha256sum "$MODEL" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "model checksum mismatch: $got" | tee -a "$LOG"; exit 3; }

step "install the compiled core and gguf; run the tree's Python"
python3 -m pip install -q --no-deps --no-index --target /tmp/vptq_site \
  .device/wheels/*.whl .device/whl/*.whl 2>&1 | tee -a "$LOG"
cp /tmp/vptq_site/vptq_rs/_core*.so python/vptq_rs/
export PYTHONPATH="$PWD/python:/tmp/vptq_site"
python3 -c "import vptq_rs, gguf; print('vptq_rs', vptq_rs.__version__)" 2>&1 | tee -a "$LOG"

step "build the CUDA extension"
timeout 240 python3 -m vptq_rs.cuda_ext 2>&1 | tail -3 | tee -a "$LOG"

if [ "${GGUF_WARM:-0}" = 1 ]; then
  # the GGUF -> float32 conversion is cached after a model's first load (vptq_rs.gguf_cache);
  # with GGUF_WARM=1 the timed runs below start from that cache, as every command but the
  # first does on a user's machine
  step "convert the GGUF once (cached)"
  timeout 90 python3 -c "import sys; from vptq_rs.models import load_model; load_model(sys.argv[1])" \
    "$MODEL" 2>&1 | grep -v "it/s" | tail -3 | tee -a "$LOG"
fi

if [ "${QUANT:-1}" = 1 ]; then
step "quantize on the GPU: v8/k65536 with and without 256 residual centroids"
timeout "${QUANT_T:-270}" python3 benchmarks/quantize_real.py --gpu --gpu-workers "${GPU_WORKERS:-1}" \
  --model "$MODEL" --output-dir /tmp/runs --eval-limit "${EVAL_LIMIT:-8}" 2>&1 | tail -40 | tee -a "$LOG"
save benchmarks/results/quantize-gpu-smollm2.json
fi

[ "${FINETUNE:-1}" = 1 ] || { step "done (fine-tuning skipped)"; exit 0; }
step "fine-tuning: quantize v6/k4096, then distill"
timeout "${FTQ_T:-90}" python3 -m vptq_rs quantize --model "$MODEL" --num_gpus 1 \
  --vector_lens -1 6 --num_centroids -1 4096 --enable_perm --enable_norm --calib c4 \
  --nsamples 64 --seq_len 2048 --kiter 50 --output_dir /tmp/ftruns --quiet 2>&1 | tail -5 | tee -a "$LOG"
PACKED=$(ls -d /tmp/ftruns/*/v6_c4096/*/packed_model 2>/dev/null | grep -v partial | tail -1)
if [ -n "$PACKED" ]; then
  timeout "${FT_T:-150}" python3 benchmarks/finetune_smollm2.py --packed "$PACKED" \
    --teacher "$MODEL" --modes "${FT_MODES:-codebooks,lora}" --steps "${FT_STEPS:-100}" --batch-size 4 \
    --seq-len 2048 --limit "${FT_LIMIT:-16}" --work-dir /tmp/ftwork --name "${FT_NAME:-finetune_smollm2}" \
    2>&1 | tail -30 | tee -a "$LOG"
  save "benchmarks/results/${FT_NAME:-finetune_smollm2}.json"
fi
if [ "${R256:-0}" = 1 ]; then
  step "quantize on the GPU: v8/k65536 + 256 residual centroids (one run)"
  timeout "${R256_T:-240}" python3 benchmarks/quantize_real.py --gpu --one v8_k65536_r256 \
    --model "$MODEL" --output-dir /tmp/runs --eval-limit "${EVAL_LIMIT:-8}" --eval-base \
    > "$OUT/results/quantize-gpu-smollm2-r256.log" 2>&1
  echo "exit $?" | tee -a "$LOG"; tail -c 600 "$OUT/results/quantize-gpu-smollm2-r256.log" | tee -a "$LOG"
fi
step "done"
