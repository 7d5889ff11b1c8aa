// GEMV kernels for bf16 codebooks/activations staged in shared memory.
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run<__nv_bfloat16, true>(const Params&, cudaStream_t);
}  // namespace gemv

cudaError_t launch_gemv_bf16(const LayerArgs& a, const void* x, int tokens, const void* perm,
                             int perm_bytes, const void* bias, void* y, float* workspace,
                             int mode, cudaStream_t stream) {
  return gemv::launch_typed<__nv_bfloat16>(a, x, tokens, perm, perm_bytes, bias, y, workspace,
                                           mode, stream);
}

}  // namespace vptq
