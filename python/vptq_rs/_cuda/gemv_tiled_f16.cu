// Tiled GEMV kernels (gemv_tiled.cuh) for fp16 codebooks/activations, and the dtype dispatch
// of the tiled GEMV.
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run_tiled<__half>(const TiledParams&, cudaStream_t);
}  // namespace gemv

bool gemv_tiled_applies(const LayerArgs& a, const TiledLayout& t) {
  return a.cb_dtype != kF32 && gemv::tiled_applies(a, t);
}

cudaError_t launch_gemv_tiled(const LayerArgs& a, const TiledLayout& t, const void* x,
                              const void* perm, int perm_bytes, const void* bias, void* y,
                              float* workspace, cudaStream_t stream) {
  switch (a.cb_dtype) {
    case kF16:
      return gemv::launch_tiled_typed<__half>(a, t, x, perm, perm_bytes, bias, y, workspace,
                                              stream);
    case kBF16:
      return gemv::launch_tiled_typed<__nv_bfloat16>(a, t, x, perm, perm_bytes, bias, y,
                                                     workspace, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace vptq
