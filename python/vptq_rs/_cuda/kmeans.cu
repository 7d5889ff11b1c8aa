// Weighted k-means on the GPU: fused distance + argmin (the n x k distance matrix is never
// stored), fp64-accumulated weighted centroid sums, and weighted k-means++ seeding.
//
// Assignment: a block stages one chunk of centroids in shared memory and streams a range of
// points against it; each point's best (score, index) over the chunk is merged across
// chunks with a 64-bit atomicMin on (order-preserving score bits << 32 | index), so the
// result does not depend on block scheduling and ties go to the lowest index. The score is
// |c|^2 - 2 x.c; mode 1 computes x.c on TF32 tensor cores (mma.sync m16n8k8, split into
// hi + lo parts, 3 products: about fp32 accuracy) with |c|^2 as the accumulator's initial
// value; mode 2 uses one TF32 product (x and c rounded to 10-bit mantissas: near-ties may
// pick a neighbour whose distance is larger by ~1e-3 relative, for a third of the tensor
// work and twice the points per warp). A final pass decodes labels and recomputes each
// point's exact fp32 squared distance.
#include <algorithm>
#include <cfloat>

#include "common.cuh"
#include "vptq_kernels.h"

namespace vptq {
namespace {

constexpr int kSmemBudget = 96 * 1024;

__device__ __forceinline__ uint32_t ordered(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long pack_key(float score, int idx) {
  return (static_cast<unsigned long long>(ordered(score)) << 32) | static_cast<uint32_t>(idx);
}

// Stage centroids [c0, c0 + kc) as fp32 rows of `stride` floats (zero padded) plus norms;
// slots past k get norm +inf so they never win.
__device__ void stage_chunk(const float* __restrict__ cent, int k, int d, int c0, int kc,
                            int stride, bool tf32, float* s_c, float* s_n,
                            float* s_lo = nullptr) {
  for (int i = threadIdx.x; i < kc * stride; i += blockDim.x) {
    const int r = i / stride;
    const int col = i - r * stride;
    float v = 0.f;
    if (c0 + r < k && col < d) v = cent[int64_t{c0 + r} * d + col];
    if (tf32) {  // split v = hi + lo, both TF32 (3xTF32 keeps ~fp32 accuracy)
      uint32_t hi, lo;
      asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(hi) : "f"(v));
      const float rest = v - __uint_as_float(hi);
      asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(lo) : "f"(rest));
      s_lo[i] = __uint_as_float(lo);
      v = __uint_as_float(hi);
    }
    s_c[i] = v;
  }
  for (int r = threadIdx.x; r < kc; r += blockDim.x) {
    float nrm = INFINITY;
    if (c0 + r < k) {
      nrm = 0.f;
      for (int col = 0; col < d; ++col) {
        const float v = cent[int64_t{c0 + r} * d + col];
        nrm = fmaf(v, v, nrm);
      }
    }
    s_n[r] = nrm;
  }
}

// ---- mode 0: exact fp32 on CUDA cores -------------------------------------------------
constexpr int kPts = 4;  // points per thread: each centroid load from shared serves 4 points

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
#pragma unroll
    for (int q = 0; q < kPts; ++q) {
      const int64_t i = tb * tile + q * blockDim.x + threadIdx.x;
#pragma unroll
      for (int c = 0; c < D; ++c) m2x[q][c] = i < n ? -2.f * x[i * D + c] : 0.f;
      best[q] = INFINITY;
      bi[q] = 0;
    }
    for (int j = 0; j < kc; ++j) {
      float cv[D];
#pragma unroll
      for (int c = 0; c < D; ++c) cv[c] = s_c[j * D + c];
      const float nrm = s_n[j];
#pragma unroll
      for (int q = 0; q < kPts; ++q) {
        float s = nrm;
#pragma unroll
        for (int c = 0; c < D; ++c) s = fmaf(m2x[q][c], cv[c], s);
        if (s < best[q]) {
          best[q] = s;
          bi[q] = j;
        }
      }
    }
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

__device__ __forceinline__ uint32_t to_tf32(float v) {
  uint32_t t;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(t) : "f"(v));
  return t;
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

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
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      const int64_t r0 = m0 + mt * 16 + g;
      const int64_t r1 = r0 + 8;
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        const int ca = t + 8 * s;
        const int cb = ca + 4;
        const float v0 = r0 < n && ca < d ? -2.f * x[r0 * d + ca] : 0.f;
        const float v1 = r1 < n && ca < d ? -2.f * x[r1 * d + ca] : 0.f;
        const float v2 = r0 < n && cb < d ? -2.f * x[r0 * d + cb] : 0.f;
        const float v3 = r1 < n && cb < d ? -2.f * x[r1 * d + cb] : 0.f;
        a[mt][s][0] = to_tf32(v0);
        a[mt][s][1] = to_tf32(v1);
        a[mt][s][2] = to_tf32(v2);
        a[mt][s][3] = to_tf32(v3);
        if (NP == 3) {
          al[NP == 3 ? mt : 0][s][0] = to_tf32(v0 - __uint_as_float(a[mt][s][0]));
          al[NP == 3 ? mt : 0][s][1] = to_tf32(v1 - __uint_as_float(a[mt][s][1]));
          al[NP == 3 ? mt : 0][s][2] = to_tf32(v2 - __uint_as_float(a[mt][s][2]));
          al[NP == 3 ? mt : 0][s][3] = to_tf32(v3 - __uint_as_float(a[mt][s][3]));
        }
      }
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

__global__ void finalize_kernel(const float* __restrict__ x, int64_t n, int d,
                                const float* __restrict__ cent,
                                const unsigned long long* __restrict__ keys,
                                int32_t* __restrict__ labels, float* __restrict__ dist) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int j = static_cast<int>(keys[i] & 0xffffffffu);
    float s = 0.f;
    for (int c = 0; c < d; ++c) {
      const float diff = x[i * d + c] - cent[int64_t{j} * d + c];
      s = fmaf(diff, diff, s);
    }
    labels[i] = j;
    dist[i] = s;
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

int sm_count() {
  static int sms[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (sms[dev & 63] == 0) cudaDeviceGetAttribute(&sms[dev & 63], cudaDevAttrMultiProcessorCount, dev);
  return sms[dev & 63];
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

int grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t{sm_count()} * 32)));
}

}  // namespace

cudaError_t launch_kmeans_assign(const float* x, int64_t n, int d, const float* centroids,
                                 int k, int mode, unsigned long long* keys, int32_t* labels,
                                 float* dist, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (d < 1 || d > 16 || k < 1) return cudaErrorInvalidValue;
  cudaError_t e = cudaMemsetAsync(keys, 0xff, sizeof(unsigned long long) * n, stream);
  if (e != cudaSuccess) return e;
  if (mode == 1) {
    e = d <= 8 ? run_mma<1, 3>(x, n, d, centroids, k, keys, stream)
               : run_mma<2, 3>(x, n, d, centroids, k, keys, stream);
  } else if (mode == 2) {
    e = d <= 8 ? run_mma<1, 1>(x, n, d, centroids, k, keys, stream)
               : run_mma<2, 1>(x, n, d, centroids, k, keys, stream);
  } else {
    switch (d) {
#define VPTQ_D(N) \
  case N: e = run_simt<N>(x, n, centroids, k, keys, stream); break;
      VPTQ_D(1) VPTQ_D(2) VPTQ_D(3) VPTQ_D(4) VPTQ_D(5) VPTQ_D(6) VPTQ_D(7) VPTQ_D(8)
      VPTQ_D(9) VPTQ_D(10) VPTQ_D(11) VPTQ_D(12) VPTQ_D(13) VPTQ_D(14) VPTQ_D(15) VPTQ_D(16)
#undef VPTQ_D
      default: return cudaErrorInvalidValue;
    }
  }
  if (e != cudaSuccess) return e;
  finalize_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, d, centroids, keys, labels, dist);
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
