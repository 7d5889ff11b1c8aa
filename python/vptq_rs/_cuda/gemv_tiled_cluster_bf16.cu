// Cluster-tiled GEMV kernels (gemv_tiled_cluster.cuh) for bf16 codebooks/activations.
#include "gemv_launch.cuh"

namespace vptq {
namespace gemv {
template cudaError_t run_tiled_cluster<__nv_bfloat16>(const TiledParams&, cudaStream_t);
}  // namespace gemv
}  // namespace vptq
