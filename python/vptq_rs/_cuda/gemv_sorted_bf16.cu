// Sorted GEMV kernels (gemv_sorted.cuh) for bf16 codebooks/activations.
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run_sorted<__nv_bfloat16>(const SortedParams&, cudaStream_t);
}  // namespace gemv
}  // namespace vptq
