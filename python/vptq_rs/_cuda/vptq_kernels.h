// Host-side launch interface of the vptq-rs CUDA kernels. Plain C++ (no torch headers) so
// the .cu files compile quickly; ops.cpp does the tensor checks and calls these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vptq {

// dtype codes shared by host and device code
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// One packed layer (FORMAT.md), device pointers; rows/cols are the quantized matrix's
// (O/I for vector_quant_dim "out").
struct LayerArgs {
  const int32_t* indices = nullptr;            // [G, R, W] words
  const void* centroids = nullptr;             // [G, K*v]
  const void* res_centroids = nullptr;         // [G, Kres*v] or null
  const int16_t* outlier_indices = nullptr;    // [1, R0, osz] bits of uint16, or null
  const void* outlier_centroids = nullptr;     // [1, K0*v0] or null
  const void* weight_scale = nullptr;          // [cols] (dtype scale_dtype) or null
  const void* weight_bias = nullptr;           // [cols] or null
  int cb_dtype = kF16;                         // dtype of every codebook
  int norm_dtype = kF32;                       // dtype of weight_scale / weight_bias
  int rows = 0, cols = 0, v = 0, index_bits = 0, res_bits = 0;
  int groups = 1, group_size = 0, words = 0, num_vectors = 0;
  int outlier_size = 0, outlier_v = 1;
};

// W[r, j] in out_dtype, [rows, cols]; invperm[j] = permuted position of column j (or null).
cudaError_t launch_dequant(const LayerArgs& a, const int32_t* invperm, void* out, int out_dtype,
                           cudaStream_t stream);

// Shared-memory bytes the GEMV kernel needs to stage the codebooks (0 when it cannot).
int64_t gemv_codebook_smem_bytes(const LayerArgs& a, int tokens);

// y[t, r] = sum_j W[r, j] x[t, j] + bias[r] for t < tokens <= 8; x/y/bias in x_dtype which
// must equal the codebook dtype (fp16/bf16). perm[p] = original column at position p or null,
// perm_bytes wide: 2 (uint16, the checkpoint's int16 bits, read as is) or 4 (int32).
// workspace: float [tokens * cols + 2 * tokens * ceil(cols / 1024)].
// mode: 0 auto, 1 codebooks in shared memory, 2 codebooks read through L1/L2, 3 the histogram
// kernel (only where gemv_hist_applies).
cudaError_t launch_gemv(const LayerArgs& a, const void* x, int tokens, const void* perm,
                        int perm_bytes, const void* bias, void* y, float* workspace, int mode,
                        cudaStream_t stream);
int64_t gemv_workspace_floats(int cols, int tokens);
// Whether the one-token sorted and tiled GEMVs compute the activations themselves and take
// no workspace: up to 8192 columns (VPTQ_RS_GEMV_PROLOGUE=fused or =kernel forces either).
bool gemv_one_token_prologue_fused(const LayerArgs& a);
// Whether gemv mode 3 (histogram kernel) takes this layer: 1 token, group_num 1, fp16/bf16,
// index and residual bits <= 13.
bool gemv_hist_applies(const LayerArgs& a, int tokens);

// The code-sorted layout of one layer (python/vptq_rs/sorted_layout.py), device pointers.
struct SortedLayout {
  const int32_t* entries = nullptr;     // [lists, R, groups * 128] column pairs, 16B aligned
  const int32_t* chunk_base = nullptr;  // [lists, R, chunks]
  int lists = 1, groups = 0, chunks = 0, chunk_groups = 0;
};

// Code-tiled layout of python/vptq_rs/tiled_layout.py (codebooks larger than shared memory).
// mma 0: entries [R, lists, group_size], code << 16 | column (gemv_tiled.cuh); mma 1, v = 8
// only: [R, lists, list_len], runs padded to 32 entries, each 32-bit word the code of one
// entry and the column of another (gemv_tiled_mma.cuh).
struct TiledLayout {
  const int32_t* entries = nullptr;     // [R, lists, list_len]
  const int32_t* tile_start = nullptr;  // [R, lists, tiles + 1] first entry of each tile
  int lists = 1, tiles = 0, tile_codes = 0;
  int list_len = 0;  // group_size where mma is 0
  int mma = 0;
  int cluster = 0;  // the cluster form (gemv_tiled_cluster.cuh; sm_90+)
};

// Whether the tiled GEMV takes this layer: group_num 1, fp16/bf16, group_size <= 65534, at
// most 2 * warps vector rows a block, and xs, two codebook tiles and the partial sums fit in
// shared memory.
bool gemv_tiled_applies(const LayerArgs& a, const TiledLayout& t);
// y[0, r] for one token from the tiled layout (everything else as launch_gemv).
cudaError_t launch_gemv_tiled(const LayerArgs& a, const TiledLayout& t, const void* x,
                              const void* perm, int perm_bytes, const void* bias, void* y,
                              float* workspace, cudaStream_t stream);

// Whether the sorted GEMV takes this layer: group_num 1, fp16/bf16, group_size <= 32767, and
// xs plus one codebook plus the partial sums fit in shared memory.
bool gemv_sorted_applies(const LayerArgs& a, const SortedLayout& s);
// y[0, r] for one token from the sorted layout (everything else as launch_gemv).
cudaError_t launch_gemv_sorted(const LayerArgs& a, const SortedLayout& s, const void* x,
                               const void* perm, int perm_bytes, const void* bias, void* y,
                               float* workspace, cudaStream_t stream);

// k-means assignment of fp32 points x [n, d] (d <= 16) to centroids [k, d].
// labels int32 [n]; dist float [n] squared distance; scratch: kmeans_assign_scratch_bytes.
// mode 0: exact fp32 CUDA cores; 1: TF32 tensor cores, 3 split products (~fp32);
// 2: one TF32 product (faster, near-ties may resolve differently); 3: one fp16 product on
// power-of-two scaled operands (TF32's significand at twice its rate; tiled design only).
// design 0: "merged" (centroid chunks per block, atomicMin merge); 1: "tiled" (point tiles
// per block, every centroid streamed past them; see kmeans_tiled.cuh).
size_t kmeans_assign_scratch_bytes(int64_t n, int k, int d, int mode, int design);
cudaError_t launch_kmeans_assign(const float* x, int64_t n, int d, const float* centroids,
                                 int k, int mode, int design, void* scratch, int32_t* labels,
                                 float* dist, cudaStream_t stream);
// sums double [k, d] and wsum double [k], zeroed by the caller; weights may be null (all 1).
cudaError_t launch_kmeans_update(const float* x, const float* weights, const int32_t* labels,
                                 int64_t n, int d, int k, double* sums, double* wsum,
                                 cudaStream_t stream);
// Weighted k-means++ over x [m, d]: writes k centroids. scratch: float [m] + double
// [kpp_partials(m)] + uint32 counter (zeroed by the caller).
int kmeanspp_blocks(int64_t m);
cudaError_t launch_kmeanspp(const float* x, const float* weights, int64_t m, int d, int k,
                            uint64_t seed, float* d2, double* partials, unsigned int* counter,
                            float* centroids, cudaStream_t stream);

}  // namespace vptq
