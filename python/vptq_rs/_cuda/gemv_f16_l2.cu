// GEMV kernels for f16 codebooks read through L1/L2 (too large for shared memory).
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run<__half, false>(const Params&, cudaStream_t);
}  // namespace gemv
}  // namespace vptq
