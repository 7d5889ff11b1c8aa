// Sorted GEMV kernels (gemv_sorted.cuh) for fp16 codebooks/activations, and the dtype
// dispatch of the sorted GEMV.
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run_sorted<__half>(const SortedParams&, cudaStream_t);
}  // namespace gemv

bool gemv_sorted_applies(const LayerArgs& a, const SortedLayout& s) {
  return a.cb_dtype != kF32 && gemv::sorted_applies(a, s);
}

cudaError_t launch_gemv_sorted(const LayerArgs& a, const SortedLayout& s, const void* x,
                               const void* perm, int perm_bytes, const void* bias, void* y,
                               float* workspace, cudaStream_t stream) {
  switch (a.cb_dtype) {
    case kF16:
      return gemv::launch_sorted_typed<__half>(a, s, x, perm, perm_bytes, bias, y, workspace,
                                               stream);
    case kBF16:
      return gemv::launch_sorted_typed<__nv_bfloat16>(a, s, x, perm, perm_bytes, bias, y,
                                                      workspace, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace vptq
