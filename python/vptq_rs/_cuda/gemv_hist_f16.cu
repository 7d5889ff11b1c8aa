// Histogram GEMV kernels (gemv_hist.cuh) for fp16 codebooks/activations.
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run_hist<__half>(const Params&, cudaStream_t);
}  // namespace gemv
}  // namespace vptq
