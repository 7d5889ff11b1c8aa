// GEMV kernels for fp16 codebooks/activations staged in shared memory, and the dtype
// dispatch.
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run<__half, true>(const Params&, cudaStream_t);
}  // namespace gemv

cudaError_t launch_gemv_bf16(const LayerArgs& a, const void* x, int tokens, const void* perm,
                             int perm_bytes, const void* bias, void* y, float* workspace,
                             int mode, cudaStream_t stream);

int64_t gemv_workspace_floats(int cols, int tokens) {
  return int64_t{tokens} * cols + 2 * int64_t{tokens} * ((cols + gemv::kTile - 1) / gemv::kTile);
}

bool gemv_one_token_prologue_fused(const LayerArgs& a) {
  return gemv::one_token_prologue_fused(a);
}

bool gemv_hist_applies(const LayerArgs& a, int tokens) {
  return a.cb_dtype != kF32 && gemv::hist_applies(a, tokens);
}

int64_t gemv_codebook_smem_bytes(const LayerArgs& a, int tokens) {
  return a.cb_dtype == kF32 ? 0 : gemv::codebook_bytes<__half>(a);
}

cudaError_t launch_gemv(const LayerArgs& a, const void* x, int tokens, const void* perm,
                        int perm_bytes, const void* bias, void* y, float* workspace, int mode,
                        cudaStream_t stream) {
  switch (a.cb_dtype) {
    case kF16:
      return gemv::launch_typed<__half>(a, x, tokens, perm, perm_bytes, bias, y, workspace, mode,
                                        stream);
    case kBF16:
      return launch_gemv_bf16(a, x, tokens, perm, perm_bytes, bias, y, workspace, mode, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace vptq
