// Helpers shared by the two k-means assignment designs (kmeans_merged.cuh, kmeans_tiled.cuh).
#pragma once

#include <algorithm>
#include <cstdint>

namespace vptq {
namespace km {

constexpr int kSmemBudget = 96 * 1024;  // shared memory per block: two blocks fit on an SM
constexpr int kPts = 4;  // fp32 kernels: points per thread, each centroid load serves 4

inline int sm_count() {
  static int sms[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (sms[dev & 63] == 0) cudaDeviceGetAttribute(&sms[dev & 63], cudaDevAttrMultiProcessorCount, dev);
  return sms[dev & 63];
}

inline int grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t{sm_count()} * 32)));
}

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

// d = a * b + (c0, c1, c0, c1): the accumulator's initial value comes from registers that
// stay untouched, so many products can start from the same two values without copies
__device__ __forceinline__ void mma_tf32_from(float (&d)[4], const uint32_t (&a)[4],
                                              const uint32_t (&b)[2], float c0, float c1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%10,%11};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c0), "f"(c1));
}

// Stage centroids [c0, c0 + kc) as fp32 rows of `stride` floats (zero padded) plus norms;
// slots past k get norm +inf so they never win.
__device__ inline void stage_chunk(const float* __restrict__ cent, int k, int d, int c0, int kc,
                            int stride, bool tf32, float* s_c, float* s_n,
                            float* s_lo = nullptr) {
  for (int i = threadIdx.x; i < kc * stride; i += blockDim.x) {
    const int r = i / stride;
    const int col = i - r * stride;
    float v = 0.f;
    if (c0 + r < k && col < d) v = cent[int64_t{c0 + r} * d + col];
    if (tf32) {  // split v = hi + lo, both TF32 (3xTF32 keeps ~fp32 accuracy)
      const uint32_t hi = to_tf32(v);
      s_lo[i] = __uint_as_float(to_tf32(v - __uint_as_float(hi)));
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

}  // namespace km
}  // namespace vptq
