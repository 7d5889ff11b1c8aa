// GEMV kernels for bf16 codebooks read through L1/L2 (too large for shared memory).
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run<__nv_bfloat16, false>(const Params&, cudaStream_t);
}  // namespace gemv
}  // namespace vptq
