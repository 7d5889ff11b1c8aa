// Weighted k-means on the GPU: fused distance + argmin (the n x k distance matrix is never
// stored; two designs, kmeans_merged.cuh and kmeans_tiled.cuh), a final pass that writes
// labels and exact fp32 squared distances, fp64-accumulated weighted centroid sums, and
// weighted k-means++ seeding.
#include <algorithm>
#include <cfloat>

#include "common.cuh"
#include "kmeans_merged.cuh"
#include "kmeans_tiled.cuh"
#include "vptq_kernels.h"

namespace vptq {
namespace {

using km::grid_for;

// Label = the candidate with the smallest exact fp32 distance among base + 8 s + e
// (s < steps, e < cols), ties to the lowest index, where base is the low 32 bits of
// keys[i] (merged design) or labels[i] (tiled); dist = that distance.
__global__ void finalize_kernel(const float* __restrict__ x, int64_t n, int d,
                                const float* __restrict__ cent, int k,
                                const unsigned long long* __restrict__ keys, int steps,
                                int cols, int32_t* __restrict__ labels,
                                float* __restrict__ dist) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int base = keys ? static_cast<int>(keys[i] & 0xffffffffu) : labels[i];
    float best = INFINITY;
    int bj = base < 0 ? 0 : base;  // an unset key (no finite score at all) reads as -1
    for (int s = 0; s < steps; ++s)
      for (int e = 0; e < cols; ++e) {
        const int j = base + 8 * s + e;
        if (j < 0 || j >= k) continue;
        float sq = 0.f;
        for (int c = 0; c < d; ++c) {
          const float diff = x[i * d + c] - cent[int64_t{j} * d + c];
          sq = fmaf(diff, diff, sq);
        }
        if (sq < best) {
          best = sq;
          bj = j;
        }
      }
    labels[i] = bj;
    dist[i] = best;
  }
}

__global__ void update_kernel(const float* __restrict__ x, const float* __restrict__ w,
                              const int32_t* __restrict__ labels, int64_t n, int d,
                              double* __restrict__ sums, double* __restrict__ wsum) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const double wi = w ? static_cast<double>(w[i]) : 1.0;
    if (wi == 0.0) continue;
    const int j = labels[i];
    atomicAdd(wsum + j, wi);
    for (int c = 0; c < d; ++c) atomicAdd(sums + int64_t{j} * d + c, wi * x[i * d + c]);
  }
}

// ---- weighted k-means++ -------------------------------------------------------------------
constexpr int kKppThreads = 512;
constexpr int kKppItems = 4;  // contiguous points per thread in the selection scan
constexpr int kKppChunk = kKppThreads * kKppItems;

__device__ __forceinline__ double uniform01(uint64_t seed, int round) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (static_cast<uint64_t>(round) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

__device__ __forceinline__ double block_sum(double v, double* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double s = 0.0;
  if (threadIdx.x == 0)
    for (int i = 0; i < (blockDim.x >> 5); ++i) s += red[i];
  return s;  // valid in thread 0
}

// Round r: refresh d2 with centroid r-1 (r > 0), sum the masses w*d2 (w for r = 0) per
// block; the last block to finish draws centroid r with probability proportional to mass.
__global__ void __launch_bounds__(kKppThreads) kpp_kernel(
    const float* __restrict__ x, const float* __restrict__ w, int64_t m, int d, int round,
    uint64_t seed, float* __restrict__ d2, double* __restrict__ partials,
    unsigned int* __restrict__ counter, float* __restrict__ cent) {
  __shared__ double red[kKppThreads / 32];
  __shared__ double scan[kKppThreads];
  __shared__ bool last;
  __shared__ int pick_s;
  const int64_t base = int64_t{blockIdx.x} * kKppChunk;
  const float* c = round > 0 ? cent + int64_t{round - 1} * d : nullptr;
  double acc = 0.0;
  for (int q = threadIdx.x; q < kKppChunk; q += blockDim.x) {
    const int64_t i = base + q;
    if (i >= m) break;
    const double wi = w ? static_cast<double>(w[i]) : 1.0;
    if (round == 0) {
      acc += wi;
    } else {
      float s = 0.f;
      for (int col = 0; col < d; ++col) {
        const float diff = x[i * d + col] - c[col];
        s = fmaf(diff, diff, s);
      }
      const float cur = round == 1 ? s : fminf(d2[i], s);
      d2[i] = cur;
      acc += wi * static_cast<double>(cur);
    }
  }
  const double bs = block_sum(acc, red);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = bs;
    __threadfence();
    last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int b = 0; b < gridDim.x; ++b) total += partials[b];
    int chosen = -1;
    double target = 0.0;
    if (total > 0.0) {
      const double r = uniform01(seed, round) * total;
      double cum = 0.0;
      int lastpos = 0;
      for (int b = 0; b < gridDim.x; ++b) {
        if (partials[b] > 0.0) lastpos = b;
        if (chosen < 0 && partials[b] > 0.0 && cum + partials[b] > r) {
          chosen = b;
          target = r - cum;
        }
        cum += partials[b];
      }
      if (chosen < 0) {
        chosen = lastpos;
        target = partials[lastpos];
      }
    }
    pick_s = chosen;
    red[0] = target;
  }
  __syncthreads();
  const int bb = pick_s;
  if (bb < 0) {  // every weighted point coincides with a centroid: any point will do
    if (threadIdx.x == 0) {
      const int64_t pick = static_cast<int64_t>(uniform01(seed ^ 0x5bd1e995ull, round) * m);
      for (int col = 0; col < d; ++col) cent[int64_t{round} * d + col] = x[pick * d + col];
      *counter = 0;
    }
    return;
  }
  const double target = red[0];
  // inclusive scan of per-thread masses over chunk bb, in point order
  const int64_t cb = int64_t{bb} * kKppChunk;
  double mine[kKppItems];
  double local = 0.0;
#pragma unroll
  for (int q = 0; q < kKppItems; ++q) {
    const int64_t i = cb + threadIdx.x * kKppItems + q;
    double mass = 0.0;
    if (i < m) {
      const double wi = w ? static_cast<double>(w[i]) : 1.0;
      mass = round == 0 ? wi : wi * static_cast<double>(d2[i]);
    }
    mine[q] = mass;
    local += mass;
  }
  scan[threadIdx.x] = local;
  __syncthreads();
  for (int o = 1; o < kKppThreads; o <<= 1) {
    const double add = threadIdx.x >= o ? scan[threadIdx.x - o] : 0.0;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  if (threadIdx.x == 0) pick_s = -1;
  __syncthreads();
  const double incl = scan[threadIdx.x];
  const double excl = incl - local;
  if (local > 0.0 && excl <= target && target < incl) {
    double cum = excl;
    int found = -1, lastpos = -1;
#pragma unroll
    for (int q = 0; q < kKppItems; ++q) {
      if (mine[q] > 0.0) {
        lastpos = q;
        if (found < 0 && cum + mine[q] > target) found = q;
      }
      cum += mine[q];
    }
    if (found < 0) found = lastpos;
    atomicMax(&pick_s, static_cast<int>(threadIdx.x * kKppItems + found));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int q = pick_s;
    if (q < 0) {  // rounding put the target past the chunk: take its last weighted point
      for (int p = kKppChunk - 1; p >= 0; --p) {
        const int64_t i = cb + p;
        if (i >= m) continue;
        const double wi = w ? static_cast<double>(w[i]) : 1.0;
        if ((round == 0 ? wi : wi * d2[i]) > 0.0) {
          q = p;
          break;
        }
      }
      if (q < 0) q = 0;
    }
    const int64_t pick = cb + q;
    for (int col = 0; col < d; ++col) cent[int64_t{round} * d + col] = x[pick * d + col];
    *counter = 0;
  }
}

}  // namespace

size_t kmeans_assign_scratch_bytes(int64_t n, int k, int d, int mode, int design) {
  if (design == 0) return static_cast<size_t>(n) * sizeof(unsigned long long);
  return km::tiled::scratch_floats(k, d, mode) * sizeof(float);
}

cudaError_t launch_kmeans_assign(const float* x, int64_t n, int d, const float* centroids,
                                 int k, int mode, int design, void* scratch, int32_t* labels,
                                 float* dist, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  // mode 3 (fp16) exists in the tiled design only
  if (d < 1 || d > 16 || k < 1 || mode < 0 || mode > 3 || design < 0 || design > 1 ||
      (mode == 3 && design == 0))
    return cudaErrorInvalidValue;
  cudaError_t e;
  const unsigned long long* keys = nullptr;
  int steps = 1, cols = 1;
  if (design == 0) {
    keys = static_cast<const unsigned long long*>(scratch);
    e = km::merged::assign(x, n, d, centroids, k, mode, static_cast<unsigned long long*>(scratch),
                           stream);
  } else {
    e = km::tiled::assign(x, n, d, centroids, k, mode, static_cast<float*>(scratch), labels,
                          stream);
    if (mode != 0) {
      steps = km::tiled::kGroup;
      cols = 2;
    }
  }
  if (e != cudaSuccess) return e;
  finalize_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, d, centroids, k, keys, steps, cols,
                                                        labels, dist);
  return cudaGetLastError();
}

cudaError_t launch_kmeans_update(const float* x, const float* weights, const int32_t* labels,
                                 int64_t n, int d, int k, double* sums, double* wsum,
                                 cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  update_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, weights, labels, n, d, sums, wsum);
  return cudaGetLastError();
}

int kmeanspp_blocks(int64_t m) { return static_cast<int>((m + kKppChunk - 1) / kKppChunk); }

cudaError_t launch_kmeanspp(const float* x, const float* weights, int64_t m, int d, int k,
                            uint64_t seed, float* d2, double* partials, unsigned int* counter,
                            float* centroids, cudaStream_t stream) {
  const int blocks = kmeanspp_blocks(m);
  for (int r = 0; r < k; ++r) {
    kpp_kernel<<<blocks, kKppThreads, 0, stream>>>(x, weights, m, d, r, seed, d2, partials,
                                                   counter, centroids);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace vptq
