#!/usr/bin/env bash
# Device run for issue 9 on a kind with at least 2 GPUs (nvidia-h200-x2): layer-parallel
# quantization with --num_gpus 1 and 2 on SmolLM2 (v8/k65536 + 256 residual) and on a
# 4-layer Llama-3-8B-shaped random model. Same .device/ layout as gpu_quantize.sh (model
# split in model_a/ + model_b/, wheels/, whl/, data/); results land in $OUT/results.
#
#   [WORKLOADS="smollm2 llama3-8b-shape"] [KITER=100] [RUN_T=540] bash benchmarks/gpu_multi.sh
# A device call is limited to 10 minutes: pass one workload per call (Hessians and the
# joined model stay on the machine while it is warm).
set -uo pipefail
OUT=${OUT:-/tmp/vptq_out}
mkdir -p "$OUT/results"
LOG="$OUT/log.txt"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export VPTQ_RS_CACHE_DIR=/tmp/vptq_cache VPTQ_RS_DATA_DIR="$PWD/.device/data"
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off (device notes)
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"

MODEL=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$MODEL" ]; then
  step "join and check the model"
  mkdir -p /tmp/smol
  cat .device/model_a/smol.gguf.part-* .device/model_b/smol.gguf.part-* > "$MODEL"
  [ "$(cut -d' ' -f1 .device/model_b/model.sha256)" = "$(sha256sum "$MODEL" | cut -d' ' -f1)" ] \
    || { echo "model checksum mismatch" | tee -a "$LOG"; rm -f "$MODEL"; exit 3; }
fi

step "install the compiled core and gguf; build the CUDA extension"
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/vptq_site \
  .device/wheels/*.whl .device/whl/*.whl 2>&1 | tail -2 | tee -a "$LOG"
cp /tmp/vptq_site/vptq_rs/_core*.so python/vptq_rs/
export PYTHONPATH="$PWD/python:/tmp/vptq_site"
timeout 240 python3 -m vptq_rs.cuda_ext 2>&1 | tail -2 | tee -a "$LOG"

for w in ${WORKLOADS:-smollm2 llama3-8b-shape}; do
  step "multigpu $w"
  timeout "${RUN_T:-540}" python3 benchmarks/multigpu.py --workload "$w" --gpus 2 \
    --model "$MODEL" --work /tmp/multigpu --kiter "${KITER:-100}" 2>&1 | tail -30 | tee -a "$LOG"
  cp benchmarks/results/multigpu-"$w".json "$OUT/results/" 2>/dev/null
done
step "done"
