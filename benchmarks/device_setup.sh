# Sourced by the device-machine scripts (benchmarks/gpu_tiled_phase.sh, gpu_bf16.sh,
# gpu_profile_tiled_source.sh): the build environment, the GPU's name and driver into
# $OUT/log.txt, and our abi3 wheel's compiled core (from .device/wheels, carried) beside the
# tree's Python. Sets LOG; expects OUT.
export PYTHONPATH=$PWD/python VPTQ_RS_CACHE_DIR=/tmp/vptq_cache TORCH_CUDA_ARCH_LIST=9.0 \
  MAX_JOBS=16 PYTHONUNBUFFERED=1
mkdir -p "$OUT/results"
LOG="$OUT/log.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$LOG"
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/vptq_site .device/wheels/*.whl
cp /tmp/vptq_site/vptq_rs/_core*.so python/vptq_rs/
