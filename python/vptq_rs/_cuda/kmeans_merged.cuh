// k-means assignment, "merged" design: a block stages one chunk of centroids in shared
// memory and streams a range of points against it; each point's best (score, index) over
// the chunk is merged across chunks with a 64-bit atomicMin on (order-preserving score bits
// << 32 | index), so the result does not depend on block scheduling and ties go to the
// lowest index. The score is |c|^2 - 2 x.c; mode 1 computes x.c on TF32 tensor cores
// (mma.sync m16n8k8, split into hi + lo parts, 3 products: about fp32 accuracy) with |c|^2
// as the accumulator's initial value; mode 2 uses one TF32 product (x and c rounded to
// 10-bit mantissas: near-ties may pick a neighbour whose distance is larger by ~1e-3
// relative, for a third of the tensor work and twice the points per warp).
#pragma once

#include "kmeans_common.cuh"

namespace vptq {
namespace km {
namespace merged {

__device__ __forceinline__ uint32_t ordered(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long pack_key(float score, int idx) {
  return (static_cast<unsigned long long>(ordered(score)) << 32) | static_cast<uint32_t>(idx);
}

// ---- mode 0: exact fp32 on CUDA cores -------------------------------------------------
template <int D>
__global__ void __launch_bounds__(256) assign_simt(const float* __restrict__ x, int64_t n,
                                                   const float* __restrict__ cent, int k, int kc,
                                                   unsigned long long* __restrict__ keys) {
  extern __shared__ __align__(16) float sm[];
  float* s_c = sm;
  float* s_n = sm + kc * D;
  const int c0 = blockIdx.x * kc;
  stage_chunk(cent, k, D, c0, kc, D, false, s_c, s_n);
  __syncthreads();
  const int64_t tile = int64_t{blockDim.x} * kPts;
  const int64_t ntiles = (n + tile - 1) / tile;
  for (int64_t tb = blockIdx.y; tb < ntiles; tb += gridDim.y) {
    float m2x[kPts][D];
    float best[kPts];
    int bi[kPts];
    load_points<D>(x, n, tb * tile + threadIdx.x, blockDim.x, m2x, best, bi);
    score_chunk<D>(s_c, s_n, kc, 0, m2x, best, bi);
#pragma unroll
    for (int q = 0; q < kPts; ++q) {
      const int64_t i = tb * tile + q * blockDim.x + threadIdx.x;
      if (i < n && best[q] < INFINITY) atomicMin(keys + i, pack_key(best[q], c0 + bi[q]));
    }
  }
}

// ---- modes 1 and 2: TF32 tensor cores -----------------------------------------------------
// 16-point m-tiles per warp: independent accumulators hide the mma latency
template <int NP>
__host__ __device__ constexpr int m_tiles() { return NP == 1 ? 8 : 4; }

// KS: k-steps of 8 dimensions (d <= 8 * KS); NP: products per step (3 = split hi/lo, 1 = hi)
template <int KS, int NP>
__global__ void __launch_bounds__(256) assign_mma(const float* __restrict__ x, int64_t n, int d,
                                                  const float* __restrict__ cent, int k, int kc,
                                                  unsigned long long* __restrict__ keys) {
  constexpr int kStride = 8 * KS + 4;  // +4 floats: conflict-free fragment loads
  extern __shared__ __align__(16) float sm[];
  float* s_c = sm;
  float* s_lo = sm + kc * kStride;
  float* s_n = s_lo + kc * kStride;
  const int c0 = blockIdx.x * kc;
  constexpr int kMt = m_tiles<NP>();
  stage_chunk(cent, k, d, c0, kc, kStride, true, s_c, s_n, s_lo);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int nwarps = blockDim.x >> 5;
  const int64_t warp_pts = 16 * kMt;
  const int64_t tile = warp_pts * nwarps;
  const int64_t ntiles = (n + tile - 1) / tile;
  for (int64_t tb = blockIdx.y; tb < ntiles; tb += gridDim.y) {
    const int64_t m0 = tb * tile + warp * warp_pts;
    uint32_t a[kMt][KS][4];
    uint32_t al[NP == 3 ? kMt : 1][KS][4];
    float best[kMt][2];
    int bi[kMt][2];
    load_a_frags<KS, NP, kMt>(x, n, d, m0, g, t, a, al);
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      best[mt][0] = best[mt][1] = INFINITY;
      bi[mt][0] = bi[mt][1] = 0;
    }
    for (int n0 = 0; n0 < kc; n0 += 8) {
      uint32_t b[KS][2], bl[KS][2];
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        b[s][0] = __float_as_uint(s_c[(n0 + g) * kStride + t + 8 * s]);
        b[s][1] = __float_as_uint(s_c[(n0 + g) * kStride + t + 4 + 8 * s]);
        if (NP == 3) {
          bl[s][0] = __float_as_uint(s_lo[(n0 + g) * kStride + t + 8 * s]);
          bl[s][1] = __float_as_uint(s_lo[(n0 + g) * kStride + t + 4 + 8 * s]);
        }
      }
      const float2 nn = *reinterpret_cast<const float2*>(s_n + n0 + 2 * t);
      const int j0 = n0 + 2 * t;
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
        float c[4] = {nn.x, nn.y, nn.x, nn.y};
#pragma unroll
        for (int s = 0; s < KS; ++s) {  // small terms first: lo*hi, hi*lo, then hi*hi
          if (NP == 3) {
            mma_tf32(c, al[NP == 3 ? mt : 0][s], b[s]);
            mma_tf32(c, a[mt][s], bl[s]);
          }
          mma_tf32(c, a[mt][s], b[s]);
        }
        if (c[0] < best[mt][0]) { best[mt][0] = c[0]; bi[mt][0] = j0; }
        if (c[1] < best[mt][0]) { best[mt][0] = c[1]; bi[mt][0] = j0 + 1; }
        if (c[2] < best[mt][1]) { best[mt][1] = c[2]; bi[mt][1] = j0; }
        if (c[3] < best[mt][1]) { best[mt][1] = c[3]; bi[mt][1] = j0 + 1; }
      }
    }
    // the four lanes of a quad hold different columns of the same rows
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          const float ob = __shfl_xor_sync(0xffffffffu, best[mt][h], o);
          const int oi = __shfl_xor_sync(0xffffffffu, bi[mt][h], o);
          if (ob < best[mt][h] || (ob == best[mt][h] && oi < bi[mt][h])) {
            best[mt][h] = ob;
            bi[mt][h] = oi;
          }
        }
        const int64_t r = m0 + mt * 16 + g + 8 * h;
        if (t == 0 && r < n && best[mt][h] < INFINITY)
          atomicMin(keys + r, pack_key(best[mt][h], c0 + bi[mt][h]));
      }
  }
}

template <int D>
cudaError_t run_simt(const float* x, int64_t n, const float* cent, int k,
                     unsigned long long* keys, cudaStream_t s) {
  int kc = kSmemBudget / ((D + 1) * 4) / 64 * 64;
  kc = std::min(kc, (k + 7) / 8 * 8);
  const size_t smem = size_t{static_cast<size_t>(kc)} * (D + 1) * 4;
  const int nchunks = (k + kc - 1) / kc;
  const int64_t tile = 256 * kPts;
  const int64_t ntiles = (n + tile - 1) / tile;
  const int64_t want = (int64_t{sm_count()} * 4 + nchunks - 1) / nchunks;
  const int ys = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(std::min<int64_t>(ntiles, want), 65535)));
  auto kern = assign_simt<D>;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  kern<<<dim3(nchunks, ys), 256, smem, s>>>(x, n, cent, k, kc, keys);
  return cudaGetLastError();
}

template <int KS, int NP>
cudaError_t run_mma(const float* x, int64_t n, int d, const float* cent, int k,
                    unsigned long long* keys, cudaStream_t s) {
  constexpr int kStride = 8 * KS + 4;
  int kc = kSmemBudget / ((2 * kStride + 1) * 4) / 64 * 64;
  kc = std::min(kc, (k + 7) / 8 * 8);
  const size_t smem = size_t{static_cast<size_t>(kc)} * (2 * kStride + 1) * 4;
  const int nchunks = (k + kc - 1) / kc;
  const int64_t tile = 16 * m_tiles<NP>() * 8;
  const int64_t ntiles = (n + tile - 1) / tile;
  const int64_t want = (int64_t{sm_count()} * 4 + nchunks - 1) / nchunks;
  const int ys = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(std::min<int64_t>(ntiles, want), 65535)));
  auto kern = assign_mma<KS, NP>;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  kern<<<dim3(nchunks, ys), 256, smem, s>>>(x, n, d, cent, k, kc, keys);
  return cudaGetLastError();
}

// keys: uint64 [n]; on return keys[i] = (ordered score bits << 32) | label.
inline cudaError_t assign(const float* x, int64_t n, int d, const float* centroids, int k,
                          int mode, unsigned long long* keys, cudaStream_t stream) {
  cudaError_t e = cudaMemsetAsync(keys, 0xff, sizeof(unsigned long long) * n, stream);
  if (e != cudaSuccess) return e;
  return with_config(
      mode, d,
      [&](auto ks, auto np) {
        return run_mma<decltype(ks)::value, decltype(np)::value>(x, n, d, centroids, k, keys,
                                                                 stream);
      },
      [&](auto dim) { return run_simt<decltype(dim)::value>(x, n, centroids, k, keys, stream); });
}

}  // namespace merged
}  // namespace km
}  // namespace vptq
